"""Which pool this worker process serves (set by `python -m workers run`)."""
from config import settings


def current_pool() -> str | None:
    return settings.WORKER_POOL or None
