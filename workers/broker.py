"""The Dramatiq broker, built once and set before any actor is imported (ARCHITECTURE rule 5).

Redis in every real process; a StubBroker only when ``WORKERS_STUB_BROKER`` is requested by unit
tests via ``use_stub_broker()`` before ``jobs`` is imported.
"""
from __future__ import annotations

from typing import cast

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)

from config import settings

_broker: dramatiq.Broker | None = None


def _middleware() -> list:
    from workers.middleware import Heartbeat, JobMetrics, PromptDelays, RequestContext, Tracing

    # JobMetrics and Tracing first: "after" hooks run in reverse order, so they see what Retries
    # decided (and a job skipped by AgeLimit still gets its span)
    return [JobMetrics(), Tracing(), AgeLimit(), TimeLimit(time_limit=15 * 60 * 1000), ShutdownNotifications(),
            Callbacks(), Pipelines(), Retries(max_retries=5, min_backoff=1000, max_backoff=5 * 60 * 1000),
            CurrentMessage(), RequestContext(), Heartbeat(), PromptDelays()]


class RecoveringRedisBroker(RedisBroker):
    """Dramatiq's Redis broker, minus one way to strand jobs.

    When a consumer hits a broker error, Dramatiq drops the delayed jobs it held in memory but
    Redis keeps them in this worker's acknowledgement set of the delay queue, and puts them back
    only once the worker is dead (heartbeat timeout). Nothing can be in that set when a delay
    queue's consumer (re)starts: its memory is empty then. So every (re)start of one first puts
    the set's jobs back on the delay queue, where the consumer fetches them again at once."""

    def consume(self, queue_name: str, prefetch: int = 1, timeout: int = 5000):
        if queue_name.endswith(".DQ"):
            self.requeue_own_acks(queue_name)
        return super().consume(queue_name, prefetch, timeout)

    def requeue_own_acks(self, queue_name: str) -> int:
        import logging

        import redis

        key = f"{self.namespace}:__acks__.{self.broker_id}.{queue_name}"
        try:
            ids = [i.decode() for i in self.client.smembers(key)]
            if ids:
                self.do_requeue(queue_name, *ids)
        except redis.exceptions.RedisError:
            return 0  # still disconnected: the consumer's own start fails too, and tries again
        if ids:
            logging.getLogger(__name__).warning("put %d delayed job(s) of %s back after a broker error",
                                                len(ids), queue_name)
        return len(ids)


def build_broker(stub: bool = False) -> dramatiq.Broker:
    if stub:
        return StubBroker(middleware=_middleware())
    if not settings.REDIS_URL:
        raise RuntimeError("REDIS_URL is not set")
    return RecoveringRedisBroker(url=settings.REDIS_URL, middleware=_middleware(),
                                 dead_message_ttl=7 * 24 * 3600 * 1000)


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



def queue_counts(r, queue: str) -> dict:
    """Jobs in one queue of the Redis broker: ready, delayed (its ``.DQ``) and dead (its ``.XQ``)."""
    from dramatiq.common import dq_name, xq_name

    return {"queue": queue, "ready": r.llen(f"dramatiq:{queue}"), "delayed": r.llen(f"dramatiq:{dq_name(queue)}"),
            "dead": r.zcard(f"dramatiq:{xq_name(queue)}")}


def queue_head_ms(queue: str) -> int:
    """When the oldest job still waiting in ``queue`` was enqueued (epoch ms); now when none waits.

    Sweepers that re-send jobs lost by the broker use it to tell loss from backlog: a queue is
    first in, first out, so a row whose job was sent before the job at the head has had its turn.
    (A delayed job joins the queue at its time but keeps its original timestamp: it can only make
    the head look older, never newer.)"""
    import time

    client = cast(RedisBroker, get_broker()).client  # the sweepers that ask run on the Redis broker
    head = client.lindex(f"dramatiq:{queue}", 0)
    if head is None:
        return int(time.time() * 1000)
    raw = client.hget(f"dramatiq:{queue}.msgs", head)
    if raw is None:
        return int(time.time() * 1000)
    return int(dramatiq.Message.decode(raw).message_timestamp)
