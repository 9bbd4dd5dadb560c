"""When a queued message's ``messages.send`` runs: pacing slots reserved at intake, parking of
jobs due later than ``MESSAGE_PARK_AFTER``, and resuming a client's waiting messages.

A ready client's slots are reserved at once (``plan``), and each job is delayed in the broker until
its slot; ``messages.scheduled_for`` shows it. A job due more than ``MESSAGE_PARK_AFTER`` ahead is
parked in a Redis sorted set instead, and the feeder (``release_parked``) hands it to the broker
shortly before its time: a worker holds the delayed jobs it has fetched in memory, up to a limit,
so days of backlog must not sit there.

A client that is not paced and sends over a stateless transport (sim, cloud) has no slots to wait
for: its new messages due now get no job each, but one ``messages.send_due`` job per intake, which
sends whatever that client has waiting in batches (app/messages/batches.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import dramatiq
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app import outbox
from app.clients.models import Client
from app.db import utcnow
from app.kv import redis_client
from app.messages import pacing
from app.messages.models import Message
from app.messages.pacing import Limits
from app.messages.tracking import SEND_ACTOR, sendable
from app.queues import queue_of
from app.transports import STATEFUL
from config import settings
from workers.broker import get_broker


def to_ms(when: datetime) -> int:
    """A time as epoch milliseconds (pacing's unit)."""
    return int(when.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    """Epoch milliseconds as a UTC time."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def _park_after_ms() -> int:
    return settings.MESSAGE_PARK_AFTER * 1000


#: a client's messages sent in batches (app/messages/batches.py)
SEND_DUE_ACTOR = "messages.send_due"


def takes_batches(client: Client) -> bool:
    """Whether ``client``'s new messages are sent in batches by ``messages.send_due``: it is not
    paced (no slot to wait for) and its transport is stateless (sent from the messages pool)."""
    return Limits.of(client) is None and client.transport not in STATEFUL


@dataclass(frozen=True)
class Plan:
    """When one message's ``messages.send`` runs, and whether a pacing slot was reserved for it."""

    message_id: str
    token: str
    delay_ms: int
    scheduled_for: datetime | None
    reserved: bool
    #: sent by its client's ``messages.send_due`` job, not a job of its own
    batched: bool = False
    client_id: str = ""


def plan(client: Client, entries: list[tuple[str, int, datetime | None]], *, batchable: bool = False) -> list[Plan]:
    """When each message's job should run: ``entries`` are ``(message_id, attempt, scheduled_at)``.

    For a client that may send now and is paced, the slots are reserved here (not granted: the job
    is granted its slot when it runs at it); a message with a future ``scheduled_at`` waits for
    that instead; a client that is not ready gets its jobs at once (they hold the messages).
    ``batchable`` (new messages that are not a campaign's): first attempts due now of a client that
    ``takes_batches`` are left to its ``messages.send_due`` job."""
    now_ms = pacing.now_ms()
    limits = Limits.of(client) if sendable(client) else None
    batched = batchable and takes_batches(client)
    due = [(i, e) for i, e in enumerate(entries) if not (e[2] is not None and to_ms(e[2]) > now_ms)]
    slots = {}
    if limits and due:
        got = pacing.acquire_many(client.id, now_ms, limits, [pacing.token_for(e[0], e[1]) for _, e in due],
                                  grant=False)
        slots = {i: s for (i, _), s in zip(due, got, strict=True)}
    plans = []
    for i, (message_id, attempt, scheduled_at) in enumerate(entries):
        token = pacing.token_for(message_id, attempt)
        if i in slots:
            at = slots[i].at_ms
            plans.append(Plan(message_id, token, max(0, at - now_ms), from_ms(at), True))
        elif scheduled_at is not None and to_ms(scheduled_at) > now_ms:
            plans.append(Plan(message_id, token, to_ms(scheduled_at) - now_ms, None, False))
        else:
            plans.append(Plan(message_id, token, 0, None, False, batched and attempt == 0, client.id))
    return plans


def enqueue_plans(session: Session, plans: list[Plan], *, outbox_row: bool = True) -> None:
    """Have each planned message's job run at its time (``schedule``), and the batched ones'
    client's ``messages.send_due`` job run now."""
    schedule(session, [(p.message_id, p.delay_ms) for p in plans if not p.batched], outbox_row=outbox_row)
    clients = sorted({p.client_id for p in plans if p.batched})
    if clients:
        send = outbox.enqueue_many if outbox_row else outbox.after_commit
        send(session, SEND_DUE_ACTOR, [(c,) for c in clients])


PARKED_KEY = "wa:msgs:parked"
_RELEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
return due
"""


def schedule(session: Session, jobs: list[tuple[str, int]], *, outbox_row: bool = True) -> None:
    """Have ``messages.send`` run for each ``(message_id, delay_ms)``: through the outbox (sent
    after commit) when due within ``MESSAGE_PARK_AFTER``, else parked in Redis for the feeder
    (``release_parked``). Parking happens now; if the transaction then rolls back, the feeder
    later finds no message and nothing happens. A parking lot lost with Redis is recovered by
    the sweeper (``requeue_lost``) from the rows. ``outbox_row=False`` (intake): the jobs are sent
    after commit without an outbox row; one lost on the way is the sweeper's too."""
    soon = [(m, d) for m, d in jobs if d <= _park_after_ms()]
    later = [(m, d) for m, d in jobs if d > _park_after_ms()]
    if soon:
        send = outbox.enqueue_many if outbox_row else outbox.after_commit
        send(session, SEND_ACTOR, [(m,) for m, _ in soon], delays_ms=[d for _, d in soon])
    if later:
        now = pacing.now_ms()
        redis_client().zadd(PARKED_KEY, {m: now + d for m, d in later})


def release_parked(limit: int = 10_000) -> int:
    """The feeder (``messages.release_parked``, periodic): move parked messages due within
    ``MESSAGE_PARK_AFTER`` into the broker, each delayed until its time."""
    now = pacing.now_ms()
    due = redis_client().eval(_RELEASE, 1, PARKED_KEY, now + _park_after_ms(), limit)
    broker = get_broker()
    for i in range(0, len(due), 2):
        message_id = due[i].decode() if isinstance(due[i], bytes) else due[i]
        delay = max(0, int(float(due[i + 1])) - now)
        broker.enqueue(dramatiq.Message(queue_name=queue_of(SEND_ACTOR), actor_name=SEND_ACTOR, args=(message_id,),
                                        kwargs={}, options={}), delay=delay or None)
    return len(due) // 2


def release_plans(client_id: str, plans: list[Plan]) -> None:
    """Give back the slots reserved for plans that were not used (duplicates at intake)."""
    pacing.release(client_id, *[p.token for p in plans if p.reserved])


def release_reservation(message: Message) -> None:
    """Give back the pacing slot a queued message reserved (cancelled, held)."""
    pacing.release(message.client_id, pacing.token_for(message.id, message.attempts))


def resume_client(session: Session, client_id: str) -> int:
    """Contract 5: the client is ready again; send on every message that waited for it, in order,
    with fresh pacing slots. Called in the caller's transaction; returns how many."""
    client = session.get(Client, client_id)
    if client is None or not sendable(client):
        return 0
    rows = session.execute(select(Message.id, Message.attempts, Message.scheduled_at, Message.campaign_id).where(
        Message.client_id == client_id, Message.status == "queued", Message.direction == "outbound")
        .order_by(Message.id)).all()
    for campaign in (False, True):  # a campaign's messages are never sent in batches
        replan(session, client, [r for r in rows if (r.campaign_id is not None) == campaign], batchable=not campaign)
    return len(rows)


def replan(session: Session, client: Client, rows, *, batchable: bool = False) -> list[Plan]:
    """Fresh slots and jobs, in order, for queued messages of ``client`` (rows with ``id``,
    ``attempts`` and ``scheduled_at``): a client ready again, a campaign resumed, a share moved.
    ``batchable``: none of them is a campaign's (``plan``). Planned 5,000 at a time."""
    now = utcnow()
    plans: list[Plan] = []
    for start in range(0, len(rows), 5000):
        part = plan(client, [(r.id, r.attempts, r.scheduled_at) for r in rows[start:start + 5000]],
                    batchable=batchable)
        session.execute(update(Message), [{"id": p.message_id, "scheduled_for": p.scheduled_for, "updated_at": now}
                                          for p in part])
        enqueue_plans(session, part)
        plans += part
    return plans
