"""The worker pools and the queues each one owns: declared once, read by the CLI, `make run`,
`/health`, `python -m workers status` and the compose file test."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    name: str
    queues: tuple[str, ...]
    threads: int
    doc: str


POOLS: dict[str, Pool] = {
    p.name: p
    for p in (
        Pool("messages", ("messages",), 16, "claims and sends paced outbound messages over stateless transports (sim, cloud)"),
        Pool("sessions", ("sessions",), 4, "session hosts: own the stateful WhatsApp Web sessions and send for them"),
        Pool("webhooks", ("webhooks",), 16, "signs and delivers webhook events, retries on schedule"),
        Pool("default", ("default",), 8, "campaign fan-out, automations, media processing, analytics rollups, status updates"),
    )
}

QUEUES: dict[str, str] = {q: p.name for p in POOLS.values() for q in p.queues}


def pool_for_queue(queue: str) -> str:
    """The pool that owns a queue; per-host session queues (``sessions.<host>``) belong to ``sessions``."""
    base = queue.split(".", 1)[0] if queue.startswith("sessions.") else queue
    try:
        return QUEUES[base]
    except KeyError:
        raise KeyError(f"queue {queue!r} has no owner pool in workers/pools.py") from None
