"""Heartbeats of the running processes (worker pools, schedulers, session hosts) in Redis.

Each live process writes ``wa:hb:<kind>:<name>:<host>:<pid>`` (JSON, with a TTL of
``WORKER_HEARTBEAT_TTL``: ``workers.middleware.HeartbeatThread``); a process that dies stops
writing and its key expires. ``/health``, ``/metrics`` and ``python -m workers status`` read them.
"""
from __future__ import annotations

import json
import os
import socket

from redis import Redis

HEARTBEAT_PREFIX = "wa:hb:"


def heartbeat_key(kind: str, name: str) -> str:
    """The key this process beats under."""
    return f"{HEARTBEAT_PREFIX}{kind}:{name}:{socket.gethostname()}:{os.getpid()}"


def live_heartbeats(redis_client: Redis, kind: str | None = None) -> list[dict]:
    """Every live heartbeat (optionally of one kind: ``pool``, ``scheduler``, ``session_host``)."""
    pattern = f"{HEARTBEAT_PREFIX}{kind or '*'}:*"
    keys = list(redis_client.scan_iter(match=pattern, count=500))
    out = []
    for raw in redis_client.mget(keys) if keys else []:
        if raw:
            out.append(json.loads(raw))
    return out
