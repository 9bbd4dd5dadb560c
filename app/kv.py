"""The process's Redis client (pacing state, rate limits, heartbeats, live events)."""
from __future__ import annotations

import os
import threading

import redis

from config import settings

_client: redis.Redis | None = None
_pid: int | None = None
_lock = threading.Lock()


def redis_client() -> redis.Redis:
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            if not settings.REDIS_URL:
                raise RuntimeError("REDIS_URL is not set")
            _client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=3,
                                           health_check_interval=30)
            _pid = os.getpid()
        return _client


#: Redis errors that mean "Redis cannot take this now" (down, loading, full, a read-only replica),
#: as opposed to a bug in how it is used: the api answers 503 with Retry-After for these
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.BusyLoadingError,
               redis.exceptions.ReadOnlyError, redis.exceptions.OutOfMemoryError, redis.exceptions.MasterDownError,
               redis.exceptions.TryAgainError)
_UNAVAILABLE_REPLIES = ("OOM", "MISCONF", "LOADING", "READONLY", "MASTERDOWN")


def unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` (also a Dramatiq broker error) says Redis cannot take work right now."""
    from dramatiq.errors import BrokerConnectionError

    if isinstance(exc, (UNAVAILABLE, BrokerConnectionError)):
        return True
    # a script's refused write comes back as a plain error reply quoting the reason ("... -OOM ...")
    if not isinstance(exc, redis.exceptions.ResponseError):
        return False
    text = str(exc).lstrip()
    return text.startswith(_UNAVAILABLE_REPLIES) or any(f"-{reply} " in text for reply in _UNAVAILABLE_REPLIES)


def reset_redis_client() -> None:
    global _client
    with _lock:
        _client = None
