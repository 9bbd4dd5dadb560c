"""Request protection: rate limits, security headers, CORS (issue 3 fills this in)."""


def init_app(app) -> None:
    """Install request protections on ``app``."""
