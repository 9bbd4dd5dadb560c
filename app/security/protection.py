"""Request protection: the client's address behind trusted proxies, rate limits, security headers
and CORS. ``init_app`` installs all of it; docs/security.md describes the layers.

Rate limits are fixed windows counted in Redis (the ``REDIS_URL`` instance), so every api process
shares them. One Lua script checks and counts all the buckets of a request atomically:

* public and auth endpoints (``@public`` routes and ``/api/auth/*``), and authenticated routes
  called without valid credentials: per client IP (``RATE_LIMIT_PUBLIC``);
* the authenticated API: per organisation (``RATE_LIMIT_API``) and per API key or user
  (``RATE_LIMIT_PRINCIPAL``, default ``RATE_LIMIT_API``), keyed on ``current_principal()``;
* never limited: ``/health``, ``/metrics``, provider webhooks (``/webhooks/...``), the static
  dashboard (``/dashboard``), the OpenAPI document and Swagger UI, CORS preflights.

A window opens at its first request and lasts the limit's period; a refused request is not
counted. Redis being unreachable lets requests through (logged): the limiter protects the
service, it must not be the reason it is down.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import re
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from app.errors import RateLimited, Unauthorized
from config import RateLimits, settings

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- client address


def _ip(value: str):
    try:
        ip = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def _is_trusted(ip, networks) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in networks)


class TrustedProxyMiddleware:
    """Sets ``REMOTE_ADDR`` and the URL scheme from ``X-Forwarded-For`` / ``X-Forwarded-Proto``,
    but only when the connecting peer is in ``TRUSTED_PROXIES``.

    ``X-Forwarded-For`` is read right to left (each proxy appends the address it saw) skipping
    trusted proxies: the first address that is not one is the client. A client cannot pose as
    another address by sending the header itself, since its proxy appends the real one after it.
    The peer's own address stays in ``environ["app.peer_addr"]``.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        peer = environ.get("REMOTE_ADDR") or ""
        environ["app.peer_addr"] = peer
        networks = settings.TRUSTED_PROXIES
        if networks and _is_trusted(_ip(peer), networks):
            client = peer
            for hop in reversed(environ.get("HTTP_X_FORWARDED_FOR", "").split(",")):
                ip = _ip(hop)
                if ip is None:
                    break
                client = str(ip)
                if not _is_trusted(ip, networks):
                    break
            environ["REMOTE_ADDR"] = client
            proto = environ.get("HTTP_X_FORWARDED_PROTO", "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.wsgi_app(environ, start_response)


def client_ip_bucket(addr: str | None) -> str:
    """What the per-IP limit counts: the IPv4 address, or the /64 of an IPv6 one (one host
    usually holds a whole /64)."""
    ip = _ip(addr or "")
    if ip is None:
        return addr or "unknown"
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


# ----------------------------------------------------------------------------- rate limits

KEY_PREFIX = "wa:rl:"
EXEMPT_PATHS = frozenset({"/health", "/metrics", "/dashboard"})
EXEMPT_PREFIXES = ("/webhooks/", "/dashboard/")
#: signed media downloads: the link's signature is the credential (a wrong one costs an HMAC, no
#: database), and Meta or a webhook consumer fetching many media from one address must not hit
#: the per-IP limit of login pages
EXEMPT_SUFFIXES = ("/signed-download",)
AUTH_PREFIX = "/api/auth/"

# KEYS[i]: a counter; ARGV[2i-1]: its limit; ARGV[2i]: its window in ms. Counts the request in
# every bucket, unless one of them is full: then nothing is counted and that bucket's index is
# returned. Reply: {refused index or 0, count_1, ttl_ms_1, count_2, ttl_ms_2, ...}.
_LUA = """
local out = {0}
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  local ttl = redis.call('PTTL', key)
  if ttl < 0 then
    count = 0
    ttl = tonumber(ARGV[2 * i])
  end
  if out[1] == 0 and count >= tonumber(ARGV[2 * i - 1]) then
    out[1] = i
  end
  out[2 * i] = count
  out[2 * i + 1] = ttl
end
if out[1] == 0 then
  for i, key in ipairs(KEYS) do
    if out[2 * i] == 0 then
      redis.call('SET', key, 1, 'PX', ARGV[2 * i])
      out[2 * i] = 1
    else
      out[2 * i] = redis.call('INCR', key)
    end
  end
end
return out
"""


@dataclass(frozen=True)
class Bucket:
    scope: str  # "ip" | "organization" | "principal"
    key: str
    limit: int
    window: int  # seconds


@dataclass(frozen=True)
class Decision:
    allowed: bool
    bucket: Bucket  # the refusing bucket, else the one closest to its limit
    remaining: int
    reset: int  # seconds until that bucket's window ends


def _buckets(scope: str, tag: str, ident: str, limits: RateLimits) -> list[Bucket]:
    return [Bucket(scope, f"{KEY_PREFIX}{tag}:{ident}:{amount}/{window}", amount, window)
            for amount, window in limits]


def ip_buckets() -> list[Bucket]:
    return _buckets("ip", "ip", client_ip_bucket(request.remote_addr), settings.RATE_LIMIT_PUBLIC)


def api_buckets(principal) -> list[Bucket]:
    return (_buckets("organization", "org", principal.organization_id, settings.RATE_LIMIT_API)
            + _buckets("principal", principal.kind, str(principal.id),
                       settings.RATE_LIMIT_PRINCIPAL or settings.RATE_LIMIT_API))


_script = None


def hit(buckets: list[Bucket]) -> Decision:
    """Count one request in ``buckets`` (atomically, in Redis) and say whether it may proceed."""
    global _script
    from app.kv import redis_client

    client = redis_client()
    if _script is None:
        _script = client.register_script(_LUA)
    args = [v for b in buckets for v in (b.limit, b.window * 1000)]
    reply = [int(v) for v in _script(keys=[b.key for b in buckets], args=args, client=client)]
    refused = reply[0]
    states = [(b, max(0, b.limit - reply[2 * i + 1]), max(1, math.ceil(reply[2 * i + 2] / 1000)))
              for i, b in enumerate(buckets)]
    if refused:
        bucket, _, reset = states[refused - 1]
        return Decision(False, bucket, 0, reset)
    bucket, remaining, reset = min(states, key=lambda s: (s[1], -s[2]))
    return Decision(True, bucket, remaining, reset)


def limit_scope(path: str, handler) -> str | None:
    """``"authenticated"``, ``"public"`` or None (not rate limited) for ``handler`` answering
    ``path`` (also what the OpenAPI document says about 429s, from the route's own path)."""
    if path in EXEMPT_PATHS or path.startswith(EXEMPT_PREFIXES) or path.endswith(EXEMPT_SUFFIXES):
        return None
    if getattr(handler, "permission", None):
        return "authenticated"
    if getattr(handler, "is_public", False) or path.startswith(AUTH_PREFIX):
        return "public"
    return None


def route_access(app: Flask) -> str | None:
    """``limit_scope`` of the current request (CORS preflights are never limited)."""
    if request.method == "OPTIONS":
        return None
    from app.security.guard import handler_for_request

    return limit_scope(request.path, handler_for_request(app))  # no handler (404 / 405): None unless public


def _enforce(buckets: list[Bucket]) -> None:
    import redis

    try:
        decision = hit(buckets)
    except redis.exceptions.RedisError as exc:
        log.warning("rate limit not checked, Redis unavailable: %s", exc.__class__.__name__)
        return
    g.rate_limit = decision
    if not decision.allowed:
        b = decision.bucket
        raise RateLimited(
            f"Too many requests: the limit is {b.limit} per {b.window} s per {b.scope}; "
            f"retry in {decision.reset} s",
            details={"scope": b.scope, "limit": b.limit, "window_seconds": b.window,
                     "retry_after": decision.reset},
            headers={"Retry-After": str(decision.reset)})


def limit_request() -> None:
    """before_request: count the request against its buckets; 429 when one is full."""
    if not settings.RATE_LIMIT_ENABLED:
        return
    access = route_access(current_app)
    if access is None:
        return
    if access == "public":
        _enforce(ip_buckets())
        return
    from app.security.auth import current_principal

    try:
        principal = current_principal()
    except Unauthorized:
        _enforce(ip_buckets())  # guessing keys and tokens is limited like any anonymous caller
        raise
    _enforce(api_buckets(principal))


def _rate_limit_headers(response) -> None:
    decision = g.get("rate_limit")
    if decision is None:
        return
    response.headers["RateLimit-Limit"] = str(decision.bucket.limit)
    response.headers["RateLimit-Remaining"] = str(decision.remaining)
    response.headers["RateLimit-Reset"] = str(decision.reset)


# ----------------------------------------------------------------------------- security headers

HSTS = "max-age=63072000"
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DASHBOARD_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
                 "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
                 "form-action 'self'; frame-ancestors 'none'")
DOCS_PATH = "/api/docs"
#: Swagger UI (app/system/docs.py): everything from this server (its icons are data: URIs); "Try it
#: out" calls the API on the same origin.
DOCS_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")


def _content_security_policy() -> str:
    path = request.path
    if path in ("/dashboard",) or path.startswith("/dashboard/"):
        return DASHBOARD_CSP
    if path.rstrip("/") == DOCS_PATH or path.startswith(DOCS_PATH + "/"):
        return DOCS_CSP
    return API_CSP


def _security_headers(response) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = _content_security_policy()
    if request.is_secure:
        headers.setdefault("Strict-Transport-Security", HSTS)
    if request.path.startswith("/api/"):
        with_credentials = "Authorization" in request.headers or "X-API-Key" in request.headers
        if with_credentials or request.path.startswith(AUTH_PREFIX) or "Cache-Control" not in headers:
            headers["Cache-Control"] = "no-store"


def finish_response(response):
    """after_request, run after every other hook: rate limit and security headers."""
    _rate_limit_headers(response)
    _security_headers(response)
    return response


# ----------------------------------------------------------------------------- CORS

CORS_ALLOW_HEADERS = ["Authorization", "X-API-Key", "Idempotency-Key", "Content-Type", "X-Request-ID"]
CORS_EXPOSE_HEADERS = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After", "X-Request-ID"]
CORS_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d{1,5})?$|^https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


def cors_origins() -> list[str]:
    """``CORS_ORIGINS`` checked: exact origins (``scheme://host[:port]``), or ``*`` in development."""
    origins = [o.strip().rstrip("/") for o in (settings.CORS_ORIGINS or "").split(",") if o.strip()]
    if "*" in origins:
        if settings.APP_ENV != "development":
            raise SystemExit("config: CORS_ORIGINS=* is allowed only with APP_ENV=development; "
                             "list the origins (https://app.example.com,...)")
        return ["*"]
    bad = [o for o in origins if not _ORIGIN.match(o)]
    if bad:
        raise SystemExit(f"config: CORS_ORIGINS entries must look like https://host[:port]: {', '.join(bad)}")
    return origins


def _install_cors(app: Flask) -> None:
    from flask_cors import CORS

    origins = cors_origins()
    if not origins:  # same-origin only: no CORS headers at all
        return
    hooks = app.after_request_funcs.setdefault(None, [])
    before = list(hooks)
    CORS(app, resources={r"/api/.*": {}}, origins=origins, methods=CORS_METHODS,
         allow_headers=CORS_ALLOW_HEADERS, expose_headers=CORS_EXPOSE_HEADERS,
         supports_credentials=False, max_age=600, send_wildcard=origins == ["*"], vary_header=True)
    for hook in [h for h in hooks if h not in before]:
        _run_last(app, hook)


# ----------------------------------------------------------------------------- installation


def _run_last(app: Flask, hook) -> None:
    """Make ``hook`` the after_request function that runs last (Flask runs them in reverse order
    of registration), so it also sees a response replaced by an earlier hook (a failed commit)."""
    hooks = app.after_request_funcs.setdefault(None, [])
    if hook in hooks:
        hooks.remove(hook)
    hooks.insert(0, hook)


def init_app(app: Flask) -> None:
    """Install request protections on ``app``."""
    app.wsgi_app = TrustedProxyMiddleware(app.wsgi_app)  # type: ignore[method-assign]  # as Flask documents it
    app.before_request(limit_request)
    _install_cors(app)
    _run_last(app, finish_response)
