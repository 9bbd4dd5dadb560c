"""Applying one transport report (``inbox.apply``): a client status to the client's status machine,
an ack to its message, an inbound message to the messages. Recording reports is app/inbox/service.py.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import outbox
from app.clients.lifecycle import record_status
from app.db import job_session, utcnow
from app.inbox.models import TransportEvent
from app.inbox.service import ACK_PATIENCE, APPLY_ACTOR
from app.messages.inbound import receive_inbound
from app.messages.tracking import apply_ack, parse_time

log = logging.getLogger(__name__)

#: what applying one report did (its row's ``outcome``; ``done``: applied already, or by another job)
ApplyOutcome = Literal["applied", "ignored", "waiting", "orphaned", "done"]


def apply(event_id: int) -> ApplyOutcome:
    """``inbox.apply``: apply one report once. Returns applied / ignored / waiting / orphaned / done
    (already applied, or taken by a concurrent job)."""
    with job_session() as session:
        event = session.scalars(select(TransportEvent).where(TransportEvent.id == event_id,
                                                             TransportEvent.applied_at.is_(None))
                                .with_for_update(skip_locked=True)).first()
        if event is None:
            return "done"
        outcome = _apply(session, event)
        if outcome == "waiting":
            if utcnow() - event.created_at > ACK_PATIENCE:
                outcome = "orphaned"
                log.info("ack %s of client %s matches no message after %s; given up",
                         event.payload.get("status"), event.client_id, ACK_PATIENCE)
            else:
                delay_ms = min(60_000, 250 * 2 ** min(event.attempts, 8))
                event.attempts += 1
                event.due_at = event.dispatched_at = func.now() + timedelta(milliseconds=delay_ms)
                outbox.after_commit(session, APPLY_ACTOR, [(event.id,)], delays_ms=[delay_ms])
                return outcome
        event.applied_at, event.outcome = func.now(), outcome
        return outcome


def _apply(session: Session, event: TransportEvent) -> ApplyOutcome:
    payload = event.payload
    if event.kind == "status":
        done = record_status(session, event.client_id, payload["status"], payload.get("detail") or {})
        return "applied" if done is not None else "ignored"
    if event.kind == "ack":
        found = apply_ack(session, event.client_id, payload["external_id"], payload["status"],
                          payload.get("error"), parse_time(payload.get("at")), message_id=payload.get("message_id"))
        return "applied" if found is not None else "waiting"
    if event.kind == "inbound":
        return "applied" if receive_inbound(session, event.client_id, payload) is not None else "ignored"
    log.warning("transport event %s of unknown kind %r ignored", event.id, event.kind)
    return "ignored"
