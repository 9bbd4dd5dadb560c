"""The message sweeper (``messages.sweep``, periodic) and reconciliation: nothing stays stuck.

A worker killed between the claim and the result leaves the row in ``sending``: ``interrupted``
makes it ``unknown`` after ``MESSAGE_SENDING_TIMEOUT`` (it may have reached WhatsApp, so it is
never resent) and ``reconcile`` asks the transport what became of it; ``requeue_lost`` gives
``queued`` messages whose job was lost a new one.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app import idempotency, outbox
from app.clients.info import load_client_info
from app.clients.models import Client
from app.db import job_session
from app.messages import pacing
from app.messages.dispatch import requeue_after_error, sink
from app.messages.models import Message
from app.messages.planning import from_ms, schedule, to_ms
from app.messages.recording import RECONCILE_ACTOR, RECONCILE_FIRST_MS, mark_unknown
from app.messages.statuses import ReconcileOutcome
from app.messages.tracking import SEND_ACTOR, apply_ack
from app.queues import queue_of
from app.transports import KNOWS_RECEIPTS, STATEFUL, transport_class
from config import settings
from workers.broker import queue_head_ms

log = logging.getLogger(__name__)

#: how long ``unknown`` messages are asked about again (by the sweeper), after which they stay
#: unknown until an ack comes
RECONCILE_FOR = timedelta(days=1)


def interrupted(session: Session, older_than_s: float | None = None, limit: int = 1000) -> int:
    """``sending`` rows older than the timeout (their worker died mid-send, or could not record
    the outcome) become ``unknown`` (code ``interrupted``) and the transport is asked about them;
    they are never resent unless the transport is certain it never got them."""
    older_than_s = settings.MESSAGE_SENDING_TIMEOUT if older_than_s is None else older_than_s
    stuck = list(session.scalars(select(Message.id).where(
        Message.status == "sending", Message.sending_at < func.now() - timedelta(seconds=older_than_s))
        .limit(limit).with_for_update(skip_locked=True)))
    for message_id in stuck:
        mark_unknown(session, message_id, "interrupted",
                      "The worker stopped while sending; the transport is asked whether the message went out")
    if stuck:
        log.warning("sweeper: %d message(s) interrupted mid-send are unknown until the transport tells", len(stuck))
    return len(stuck)


#: a ``sent`` message whose receipts have not come after this long is asked about (transports
#: that know receipts: ``KNOWS_RECEIPTS``)
RECEIPTS_OVERDUE = timedelta(minutes=10)


def reconcile_unknown(session: Session, limit: int = 500) -> int:
    """Ask again (periodic) about ``unknown`` messages of the last ``RECONCILE_FOR``, and about
    ``sent`` ones whose receipts are overdue where the transport can tell; each at most every
    ``RECEIPTS_OVERDUE`` once it was asked (asking touches ``updated_at``)."""
    doubtful = or_(and_(Message.status == "unknown",
                        Message.updated_at < func.now() - timedelta(milliseconds=RECONCILE_FIRST_MS)),
                   and_(Message.status == "sent", Client.transport.in_(sorted(KNOWS_RECEIPTS)),
                        Message.updated_at < func.now() - RECEIPTS_OVERDUE))
    ids = list(session.scalars(select(Message.id).join(Client, Client.id == Message.client_id).where(
        Message.direction == "outbound", doubtful, Message.updated_at > func.now() - RECONCILE_FOR,
        Client.transport.notin_(STATEFUL)).order_by(Message.updated_at).limit(limit)))
    if ids:
        session.execute(update(Message).where(Message.id.in_(ids), Message.status == "sent")
                        .values(updated_at=func.now()), execution_options={"synchronize_session": False})
    outbox.enqueue_many(session, RECONCILE_ACTOR, [(i,) for i in ids])
    return len(ids)


def reconcile(message_id: str) -> ReconcileOutcome:
    """``messages.reconcile``: ask the transport whether an ``unknown`` message went out (or how far
    a ``sent`` one whose receipts are overdue got). Sent: the truth is recorded (with the receipts
    it knows of); certainly not sent: queued again; can't tell: stays as it is. Returns what
    happened."""
    with job_session() as session:
        message = session.get(Message, message_id)
        if message is None or message.status not in ("unknown", "sent") or message.direction != "outbound":
            return "skipped"
        info = load_client_info(session, message.client_id)
        if info.transport in STATEFUL:
            return "unknown"  # a browser session is asked by its own acks
        attempted_at = message.sending_at
    found = transport_class(info.transport)(info, sink).lookup(message_id, attempted_at)  # may raise: retried
    if found is None:
        return "unknown"
    with job_session() as session:
        message = session.get(Message, message_id, with_for_update=True, populate_existing=True)
        if message is None or message.status not in ("unknown", "sent"):
            return "skipped"
        if not found.sent:
            if message.status == "sent":
                return "sent"  # we recorded it sent: a network that forgot it does not undo that
            requeue_after_error(session, message_id, message.attempts, message.error_code or "interrupted",
                                "the transport never received it")
            schedule(session, [(message_id, 0)])
            return "requeued"
        status: ReconcileOutcome = found.status or "sent"
        for step in ("sent", "delivered", "read"):  # each step at its own time
            apply_ack(session, message.client_id, found.external_id, step, at=found.times.get(step),
                      message_id=message_id)
            if step == status:
                break
        return status


def _campaign_running():
    """Not a campaign message, or one of a running campaign (a paused one's wait for resume)."""
    from app.campaigns.models import Campaign

    return or_(Message.campaign_id.is_(None), exists().where(Campaign.id == Message.campaign_id,
                                                            Campaign.status == "running"))


def requeue_lost(session: Session, lost_after_s: float | None = None, limit: int = 5000) -> int:
    """``queued`` messages of sendable clients whose due time passed ``lost_after_s`` ago with
    nothing happening: their job was lost (Redis lost it, or a crash outlived the outbox). They get
    a new one (a duplicate is harmless: the claim happens once)."""
    lost_after_s = settings.MESSAGE_LOST_AFTER if lost_after_s is None else lost_after_s
    # a backlog is not a loss: a job due before the one at the head of the queue has had its turn
    head = from_ms(queue_head_ms(queue_of(SEND_ACTOR))) - timedelta(seconds=lost_after_s)
    cutoff = func.least(func.now() - timedelta(seconds=lost_after_s), head)
    ids = session.scalars(
        select(Message.id).join(Client, Client.id == Message.client_id)
        .where(Message.status == "queued", Message.direction == "outbound",
               Client.status == "ready", Client.paused.is_(False), Client.deleted_at.is_(None), _campaign_running(),
               func.greatest(Message.scheduled_for, Message.scheduled_at, Message.updated_at) < cutoff)
        .order_by(Message.id).limit(limit).with_for_update(of=Message, skip_locked=True)).all()
    if not ids:
        return 0
    session.execute(update(Message).where(Message.id.in_(ids)).values(updated_at=func.now()),
                    execution_options={"synchronize_session": False})
    outbox.enqueue_many(session, SEND_ACTOR, [(i,) for i in ids])
    log.warning("sweeper: re-enqueued %d queued message(s) whose job was lost", len(ids))
    return len(ids)


def reschedule_queued(session: Session, after_id: str = "", limit: int = 5000) -> list[str]:
    """Every ``queued`` message of sendable clients (from ``after_id``, at most ``limit``) gets a
    new job at its time (its slot or ``scheduled_at``, else now): for a broker that lost all of
    them, delayed and parked ones included. Returns the ids, to go on from the last."""
    rows = session.execute(
        select(Message.id, Message.scheduled_for, Message.scheduled_at).join(Client, Client.id == Message.client_id)
        .where(Message.status == "queued", Message.direction == "outbound", Message.id > after_id,
               Client.status == "ready", Client.paused.is_(False), Client.deleted_at.is_(None), _campaign_running())
        .order_by(Message.id).limit(limit)).all()
    now = pacing.now_ms()
    schedule(session, [(r.id, max([0] + [to_ms(t) - now for t in (r.scheduled_for, r.scheduled_at) if t]))
                       for r in rows])
    return [r.id for r in rows]


def sweep(session: Session, *, sending_timeout_s: float | None = None, lost_after_s: float | None = None) -> dict:
    """Everything the periodic ``messages.sweep`` does, in the caller's transaction."""
    return {"interrupted": interrupted(session, sending_timeout_s),
            "reconciling": reconcile_unknown(session),
            "requeued": requeue_lost(session, lost_after_s),
            "idempotency_keys_purged": idempotency.purge_expired(session)}
