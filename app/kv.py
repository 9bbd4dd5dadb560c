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


def reset_redis_client() -> None:
    global _client
    with _lock:
        _client = None
