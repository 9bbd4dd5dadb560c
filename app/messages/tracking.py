"""Outbound message statuses and how they move: the history row and ``message.*`` event of every
change, and the transports' acks.

Statuses only move forward (``RANK``); each change writes a ``message_status_history`` row and
emits the matching ``message.*`` event with the message as the API shows it.
"""
from __future__ import annotations

import functools
from datetime import UTC, datetime

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from app.clients.models import Client
from app.db import utcnow
from app.messages.models import Message, MessageStatusHistory
from app.messages.statuses import DOUBTFUL_FAILURES, EVENTS, RANK, TERMINAL, TIMESTAMP_OF
from app.webhooks.events import emit

SEND_ACTOR = "messages.send"
#: messages.idempotency_key of the confirmation sent to a contact who opts out (it must reach them)
OPT_OUT_KEY_PREFIX = "opt-out:"

_PLAIN = (("id", "id"), ("client_id", "client_id"), ("direction", "direction"), ("to", "to_phone"),
          ("from", "from_phone"), ("contact_id", "contact_id"), ("type", "type"), ("text", "text"),
          ("media_id", "media_id"), ("caption", "caption"), ("template_id", "template_id"), ("status", "status"),
          ("attempts", "attempts"), ("campaign_id", "campaign_id"))
_TIMES = ("scheduled_at", "scheduled_for", "created_at", "queued_at", "sending_at", "sent_at", "delivered_at",
          "read_at", "failed_at", "cancelled_at")


def dump(message: Message | Row | dict) -> dict:
    """The message (a Message, a row of its columns, or a dict of them) as the API returns it
    (``MessageSchema``), for webhook events: the same output, computed directly because it runs for
    every status change (tests/messages/test_routes.py compares)."""
    get = message.get if isinstance(message, dict) else functools.partial(getattr, message)
    out = {key: get(attr) for key, attr in _PLAIN}
    out["variables"] = dict(get("variables") or {})
    for name in _TIMES:
        value = get(name)
        out[name] = value.isoformat() if value is not None else None
    code = get("error_code")
    out["error"] = {"code": code, "message": get("error_message")} if code else None
    return out


def record_status(session: Session, message: Message, status: str, *, at: datetime | None = None,
                  details: dict | None = None) -> None:
    """The history row of a status ``message`` just moved to, and its ``message.*`` event."""
    session.add(MessageStatusHistory(organization_id=message.organization_id, message_id=message.id, status=status,
                                     at=at or utcnow(), details=details or {}))
    if status in EVENTS:
        emit(session, message.organization_id, f"message.{status}", dump(message))


def sendable(client: Client) -> bool:
    """Whether a client may send now (contract 5): ready, not paused, not deleted."""
    return client.status == "ready" and not client.paused and client.deleted_at is None


def apply_ack(session: Session, client_id: str, external_id: str | None, status: str, error: dict | None = None,
              at: datetime | None = None, *, message_id: str | None = None) -> Message | None:
    """A transport's ack. None when no message has this external id (yet) — nor this
    ``message_id``, when the transport knows ours (a message whose send was never recorded).
    Statuses only move forward, and a failed ack does not undo a delivery; an ``unknown`` message,
    or one failed only because its worker was interrupted, takes what the ack says."""
    found = select(Message).where(Message.client_id == client_id, Message.direction == "outbound")
    message = None
    if external_id:
        message = session.scalars(found.where(Message.external_id == external_id).with_for_update()
                                  .execution_options(populate_existing=True)).first()  # the locked row
    if message is None and message_id:
        message = session.scalars(found.where(Message.id == message_id).with_for_update()
                                  .execution_options(populate_existing=True)).first()
        if message is not None and external_id and message.external_id is None:
            message.external_id = external_id
    if message is None:
        return None
    at = at or utcnow()
    current = message.status
    doubtful = current == "failed" and message.error_code in DOUBTFUL_FAILURES
    if current in TERMINAL and not doubtful:
        return message
    if status == "failed":
        if doubtful or RANK.get(current, 0) >= RANK["delivered"]:
            return message
        error = error or {}
        message.failed_at = at
        message.error_code = str(error.get("code") or "undelivered")[:100]
        message.error_message = (str(error["message"])[:1000] if error.get("message") else None)
        steps = ["failed"]
    elif status in RANK and (doubtful or RANK[status] > RANK.get(current, 0)):
        # read implies delivered implies sent: a step the acks skipped (a read that overtook its
        # delivery report) is recorded too, with its history row and event, so that integrators
        # counting message.delivered miss none
        base = 1 if doubtful else RANK.get(current, 0)
        steps = [step for step in ("sent", "delivered", "read") if base < RANK[step] <= RANK[status]]
        message.error_code = message.error_message = None
        message.failed_at = None if doubtful else message.failed_at
    else:
        return message  # late or repeated ack: nothing moves backwards
    for step in steps:
        message.status = step
        if getattr(message, TIMESTAMP_OF[step]) is None:
            setattr(message, TIMESTAMP_OF[step], at)
        message.updated_at = utcnow()
        session.flush()
        record_status(session, message, step, at=at, details={"external_id": external_id, "ack": status})
    return message


def parse_time(value: object) -> datetime | None:
    """A report's time (ISO 8601 or a datetime), in UTC when it names no zone; None if unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
