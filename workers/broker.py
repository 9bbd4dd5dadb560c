"""The Dramatiq broker, built once and set before any actor is imported (ARCHITECTURE rule 5).

Redis in every real process; a StubBroker only when ``WORKERS_STUB_BROKER`` is requested by unit
tests via ``use_stub_broker()`` before ``jobs`` is imported.
"""
from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (AgeLimit, Callbacks, CurrentMessage, Pipelines, Retries, ShutdownNotifications,
                                 TimeLimit)

from config import settings

_broker: dramatiq.Broker | None = None


def _middleware() -> list:
    from workers.middleware import Heartbeat, RequestContext
    from workers.pacing import PromptDelays

    return [AgeLimit(), TimeLimit(time_limit=15 * 60 * 1000), ShutdownNotifications(), Callbacks(), Pipelines(),
            Retries(max_retries=5, min_backoff=1000, max_backoff=5 * 60 * 1000), CurrentMessage(),
            RequestContext(), Heartbeat(), PromptDelays()]


def build_broker(stub: bool = False) -> dramatiq.Broker:
    if stub:
        return StubBroker(middleware=_middleware())
    if not settings.REDIS_URL:
        raise RuntimeError("REDIS_URL is not set")
    return RedisBroker(url=settings.REDIS_URL, middleware=_middleware(), dead_message_ttl=7 * 24 * 3600 * 1000)


def get_broker() -> dramatiq.Broker:
    global _broker
    if _broker is None:
        _broker = build_broker()
        dramatiq.set_broker(_broker)
    return _broker


def use_stub_broker() -> dramatiq.Broker:
    """Unit tests only: replace the broker before ``jobs`` is imported."""
    global _broker
    _broker = build_broker(stub=True)
    dramatiq.set_broker(_broker)
    return _broker


broker = get_broker()


def queue_counts(r, queue: str) -> dict:
    """Jobs in one queue of the Redis broker: ready, delayed (its ``.DQ``) and dead (its ``.XQ``)."""
    from dramatiq.common import dq_name, xq_name

    return {"queue": queue, "ready": r.llen(f"dramatiq:{queue}"), "delayed": r.llen(f"dramatiq:{dq_name(queue)}"),
            "dead": r.zcard(f"dramatiq:{xq_name(queue)}")}
