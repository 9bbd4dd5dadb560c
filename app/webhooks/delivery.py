"""One delivery attempt over HTTP, the retry schedule, and the per-endpoint in-flight limit.

No database here: ``service`` decides what to send and records what happened; this module makes
the request (through the SSRF guard, never following redirects, within ``WEBHOOK_TIMEOUT``) and
says when the next attempt is due.
"""
from __future__ import annotations

import email.utils
import random
import re
import secrets
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from urllib3 import Timeout
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ReadTimeoutError,
    SSLError,
)

from app.security import ssrf
from config import settings

#: Standard Webhooks' schedule: seconds after each failed attempt (attempt 1 fails -> 5 s, ...).
RETRY_SCHEDULE_S = (5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
MAX_ATTEMPTS = 1 + len(RETRY_SCHEDULE_S)
JITTER = 0.2
MAX_RETRY_AFTER_S = 24 * 3600
#: An endpoint whose every attempt failed for this long is disabled (scaled by WEBHOOK_TIME_SCALE).
DISABLE_AFTER_S = 5 * 24 * 3600
#: the delivery log keeps this many characters of an answer at most (see ``excerpt``)
EXCERPT_CHARS = 256
READ_LIMIT_BYTES = 64 * 1024  # read this much at most (keeps the connection reusable for small answers)
RETRY_AFTER_STATUSES = (429, 503)


def scaled(seconds: float) -> float:
    return seconds * settings.WEBHOOK_TIME_SCALE


def next_delay(attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float | None:
    """Seconds from the failure of ``attempt`` (1-based) to the next attempt; None when it was the last.

    The schedule's delay with ±20% jitter; a ``Retry-After`` (429/503) pushes it later, never sooner.
    """
    if attempt >= MAX_ATTEMPTS:
        return None
    delay = RETRY_SCHEDULE_S[attempt - 1] * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER_S))
    return scaled(delay)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds or an HTTP date); None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class Outcome:
    status_code: int | None = None
    duration_ms: int = 0
    error: str | None = None
    response_excerpt: str | None = None
    retry_after: float | None = None

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        return self.status_code == 410

    @property
    def kind(self) -> str:
        """For metrics: ``success``, ``client_error`` (4xx), ``server_error`` (5xx or any other
        answer), ``error`` (no answer: timeout, connection error, an address refused)."""
        if self.status_code is None:
            return "error"
        if self.success:
            return "success"
        return "client_error" if 400 <= self.status_code < 500 else "server_error"


def _root(exc: BaseException) -> BaseException:
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or getattr(exc, "reason", None)
        if not isinstance(nxt, BaseException):
            args = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
            nxt = args[0] if args else None
        if nxt is None:
            break
        exc = nxt
    return exc


def describe_error(exc: BaseException, timeout: float) -> str:
    """A short, URL-free description of a failed request for the delivery log."""
    blocked = ssrf.find_blocked(exc)
    if blocked is not None:
        return str(blocked)
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: a refused connection is no timeout
    if isinstance(exc, ConnectTimeoutError) and not isinstance(exc, NewConnectionError):
        return f"timeout: no connection within {timeout:g} s"
    if isinstance(exc, ReadTimeoutError):
        return f"timeout: no response within {timeout:g} s"
    root = _root(exc)
    if isinstance(exc, SSLError) or isinstance(root, ssl.SSLError):
        return f"TLS error: {str(root)[:300]}"
    if isinstance(exc, NameResolutionError) or isinstance(root, socket.gaierror):
        return "connection error: the host name does not resolve"
    if isinstance(root, ConnectionRefusedError) or "Connection refused" in str(root):
        return "connection error: connection refused"
    text = str(root).split("(Caused by", 1)[0].strip()
    what = f"connection error: {type(root).__name__}"
    return f"{what}: {text[:300]}" if text else what


#: what a request to the endpoint may raise (urllib3 wraps socket errors; a bad URL is a ValueError)
REQUEST_ERRORS = (HTTPError, OSError, ValueError)


def send(url: str, body: bytes, headers: dict, timeout: float | None = None) -> Outcome:
    """POST ``body`` to ``url``. Never raises for anything the endpoint or the network does.

    urllib3 straight, through this thread's guarded connection pools (kept alive per host): no
    retries, no redirects, at most ``READ_LIMIT_BYTES`` of the answer read within the timeout.
    """
    timeout = float(settings.WEBHOOK_TIMEOUT if timeout is None else timeout)
    started = time.monotonic()
    deadline = started + timeout
    outcome = Outcome()
    try:
        resp = ssrf.thread_pool_manager().urlopen(
            "POST", url, body=body, headers=headers, redirect=False, retries=False,
            timeout=Timeout(connect=timeout, read=timeout), preload_content=False)
    except REQUEST_ERRORS as exc:
        outcome.error = describe_error(exc, timeout)
    else:
        outcome.status_code = resp.status
        raw = bytearray()
        complete = False
        try:
            while True:
                chunk = resp.read(8192)
                if not chunk:
                    complete = True
                    break
                raw += chunk
                if len(raw) >= READ_LIMIT_BYTES or time.monotonic() > deadline:
                    break
        except REQUEST_ERRORS as exc:
            outcome.error = "reading the response failed: " + describe_error(exc, timeout)
        finally:
            if complete:
                resp.release_conn()  # the whole answer was read: the connection is reused
            else:
                resp.close()  # an answer cut short: the connection is not reusable
        if raw:
            outcome.response_excerpt = excerpt(bytes(raw[:EXCERPT_CHARS * 4]))
        if not outcome.success and outcome.error is None:
            outcome.error = _status_error(resp.status)
        if resp.status in RETRY_AFTER_STATUSES:
            outcome.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    outcome.duration_ms = int((time.monotonic() - started) * 1000)
    return outcome


_UNPRINTABLE = re.compile(r"[^\S ]+|[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def excerpt(raw: bytes) -> str | None:
    """A short, printable excerpt of an answer for the delivery log: at most EXCERPT_CHARS
    characters, control and invisible characters removed, runs of whitespace made one space.
    The log is for telling why an endpoint refused a delivery, not for reading its pages."""
    text = _UNPRINTABLE.sub(" ", raw.decode("utf-8", "replace"))
    text = " ".join(text.split())
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS - 1] + "…"
    return text or None


def _status_error(status: int) -> str:
    if 300 <= status < 400:
        return f"HTTP {status}: redirects are not followed"
    if status == 410:
        return "HTTP 410 Gone: the endpoint is disabled"
    return f"HTTP {status}"


# --------------------------------------------------------------------------- in-flight limit
#
# A semaphore per endpoint in Redis: ``wa:whk:inflight:<id>`` holds the running attempts (a sorted
# set of tokens scored by when they expire, so a crashed worker's slot frees itself), and
# ``wa:whk:waiting:<id>`` the jobs that found every slot taken (a sorted set by arrival: the same
# job parked twice is one entry). Nobody polls: a finished attempt passes its slot to the
# longest-waiting job (``pass_slot``), which the same thread then runs (no broker round trip), or
# releasing a slot hands back that job, which the caller sends to the broker. A parked job whose
# wake-up is lost (its releaser died) is sent again by the claimer when its delivery's lease runs out.

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  redis.call('ZREM', KEYS[2], ARGV[4])
  return 1
end
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[4])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[5]))
return 0
"""
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local next = redis.call('ZPOPMIN', KEYS[2])
return next[1]
"""
# The slot stays taken (its expiry renewed) and now belongs to the longest-waiting job, returned.
_PASS = """
local next = redis.call('ZPOPMIN', KEYS[2])
if next[1] == nil then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return nil
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
return next[1]
"""
_scripts: dict = {}
WAITING_TTL_MS = 24 * 3600 * 1000


def _script(name: str, source: str):
    from app.kv import redis_client

    if name not in _scripts:
        _scripts[name] = redis_client().register_script(source)
    return _scripts[name]


def _keys(webhook_id: str) -> list[str]:
    return [f"wa:whk:inflight:{webhook_id}", f"wa:whk:waiting:{webhook_id}"]


def _hold_ms() -> int:
    """How long a slot lasts if its holder dies without releasing it."""
    return int((2 * settings.WEBHOOK_TIMEOUT + 30) * 1000)


def acquire_slot(webhook_id: str, waiter: str) -> str | None:
    """A slot among the endpoint's ``WEBHOOK_MAX_IN_FLIGHT`` (a token to release), or None when
    they are all taken: ``waiter`` (the job, serialised) is then parked until a slot is released."""
    from app.kv import redis_client

    limit = settings.WEBHOOK_MAX_IN_FLIGHT
    token = secrets.token_hex(8)
    if limit <= 0:
        return token
    got = _script("acquire", _ACQUIRE)(keys=_keys(webhook_id), args=[limit, _hold_ms(), token, waiter, WAITING_TTL_MS],
                                       client=redis_client())
    return token if got else None


def release_slot(webhook_id: str, token: str) -> str | None:
    """Give the slot back; returns the longest-parked job of the endpoint (to send), if any."""
    from app.kv import redis_client

    if settings.WEBHOOK_MAX_IN_FLIGHT <= 0:
        return None
    woken = _script("release", _RELEASE)(keys=_keys(webhook_id), args=[token], client=redis_client())
    return woken.decode() if isinstance(woken, bytes) else woken


def pass_slot(webhook_id: str, token: str) -> str | None:
    """The attempt holding ``token`` finished: hand the slot to the endpoint's longest-parked job
    and return that job (the caller runs it, still holding ``token``), or, when none waits,
    release the slot and return None. One round trip either way."""
    from app.kv import redis_client

    if settings.WEBHOOK_MAX_IN_FLIGHT <= 0:
        return None
    woken = _script("pass", _PASS)(keys=_keys(webhook_id), args=[token, _hold_ms()], client=redis_client())
    return woken.decode() if isinstance(woken, bytes) else woken
