"""Queues: which pool owns each queue, and which queue each job runs on, declared once.

The pools are read by the CLI, `make run`, `/health`, `python -m workers status` and the compose
file test. Every actor runs on the queue ``ACTOR_QUEUES`` names (``DEFAULT_QUEUE`` unless listed):
actors are declared with ``actor()``, and jobs enqueued by name (``app/outbox.py``) find their
queue here too, so a process that does not import the actor (the api) still routes it right.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq


@dataclass(frozen=True)
class Pool:
    name: str
    queues: tuple[str, ...]
    threads: int
    doc: str


POOLS: dict[str, Pool] = {
    p.name: p
    for p in (
        Pool("messages", ("messages",), 16,
             "claims and sends paced outbound messages over stateless transports (sim, cloud)"),
        Pool("sessions", ("sessions",), 4, "session hosts: own the stateful WhatsApp Web sessions and send for them"),
        Pool("webhooks", ("webhooks",), 16, "signs and delivers webhook events, retries on schedule"),
        Pool("default", ("default",), 8,
             "campaign fan-out, automations, media processing, analytics rollups, status updates"),
    )
}

QUEUES: dict[str, str] = {q: p.name for p in POOLS.values() for q in p.queues}


DEFAULT_QUEUE = "default"
SESSIONS_QUEUE = "sessions"
#: per-host queues of the session hosts: ``sessions.<host id>``
HOST_QUEUE_PREFIX = SESSIONS_QUEUE + "."

#: actor -> queue, for every actor not on DEFAULT_QUEUE
ACTOR_QUEUES: dict[str, str] = {
    "messages.send": "messages",
    "messages.send_due": "messages",
    "sessions.start": SESSIONS_QUEUE,
    "sessions.stop": SESSIONS_QUEUE,
    "sessions.logout": SESSIONS_QUEUE,
    "sessions.send": SESSIONS_QUEUE,  # sent to the owning host's own queue (``host_queue``)
    "webhooks.fan_out": "webhooks",
    "webhooks.deliver": "webhooks",
    "webhooks.dispatch_due": "webhooks",
    "webhooks.cleanup": "webhooks",
}


def queue_of(actor_name: str) -> str:
    """The queue ``actor_name`` runs on."""
    return ACTOR_QUEUES.get(actor_name, DEFAULT_QUEUE)


def actor(actor_name: str, **options: Any) -> Callable[[Callable[..., Any]], dramatiq.Actor]:
    """``@dramatiq.actor`` on the queue this module routes ``actor_name`` to."""
    return dramatiq.actor(actor_name=actor_name, queue_name=queue_of(actor_name), **options)
