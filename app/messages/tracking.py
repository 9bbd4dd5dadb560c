"""Outbound message statuses and how they move: the history row and ``message.*`` event of every
change, and the transports' acks.

Statuses only move forward (``RANK``); each change writes a ``message_status_history`` row and
emits the matching ``message.*`` event with the message as the API shows it.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Row, text
from sqlalchemy.orm import Session

from app.clients.models import Client
from app.db import json_rows, utcnow
from app.messages.models import Message, MessageStatusHistory
from app.messages.statuses import DOUBTFUL_FAILURES, EVENTS, RANK, TERMINAL, TIMESTAMP_OF
from app.webhooks.events import emit, emit_many

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
                  details: dict | None = None, emit_event: bool = True) -> None:
    """The history row of a status ``message`` just moved to, and its ``message.*`` event (unless
    ``emit_event`` is False: the caller emits it later)."""
    session.add(MessageStatusHistory(organization_id=message.organization_id, message_id=message.id, status=status,
                                     at=at or utcnow(), details=details or {}))
    if emit_event and status in EVENTS:
        emit(session, message.organization_id, f"message.{status}", dump(message))


def sendable(client: Client) -> bool:
    """Whether a client may send now (contract 5): ready, not paused, not deleted."""
    return client.status == "ready" and not client.paused and client.deleted_at is None


@dataclass(frozen=True)
class Ack:
    """A transport's delivery report of one message it sent (``apply_acks``)."""

    client_id: str
    external_id: str | None
    status: str
    error: dict | None = None
    at: datetime | None = None
    message_id: str | None = None


def apply_ack(session: Session, client_id: str, external_id: str | None, status: str, error: dict | None = None,
              at: datetime | None = None, *, message_id: str | None = None) -> dict | None:
    """One transport ack (``apply_acks`` of one)."""
    return apply_acks(session, [Ack(client_id, external_id, status, error, at, message_id)])[0]


def apply_acks(session: Session, acks: list[Ack]) -> list[dict | None]:
    """Apply transport acks, in order, with a fixed number of statements whatever their number:
    one SELECT ... FOR UPDATE per way of finding the messages (their transport id, else our id
    when the transport knows it), one UPDATE, one history INSERT and one event INSERT per status
    reached. Returns, per ack, the message's columns after it (a dict), or None when no message
    has this external id (yet) — nor this ``message_id`` (a message whose send was never recorded).

    Statuses only move forward, and a failed ack does not undo a delivery; an ``unknown`` message,
    or one failed only because its worker was interrupted, takes what the ack says. A read that
    overtook its delivery report also records ``delivered`` (read implies delivered implies sent),
    with its history row and event, so that integrators counting ``message.delivered`` miss none.
    Several acks of one message in one call (delivered and read both waiting) are folded into one
    update of its row."""
    if not acks:
        return []
    rows = _lock_acked(session, acks)
    now = utcnow()
    changed: dict[str, dict] = {}
    steps: list[tuple[str, dict, datetime, dict]] = []  # (status, message after it, at, details)
    results: list[dict | None] = []
    for ack in acks:
        row = rows.get(("ext", ack.client_id, ack.external_id)) if ack.external_id else None
        if row is None and ack.message_id:
            row = rows.get(("id", ack.client_id, ack.message_id))
        if row is None:
            results.append(None)
            continue
        if ack.external_id and row["external_id"] is None:
            row["external_id"] = ack.external_id
            changed[row["id"]] = row
        moves = _steps(row, ack)
        if moves and ack.status != "failed":  # a forward move clears an error; a doubtful failure is undone
            if row["status"] == "failed":
                row["failed_at"] = None
            row["error_code"] = row["error_message"] = None
        for step in moves:
            at = ack.at or now
            row["status"] = step
            if step == "failed":
                error = ack.error or {}
                row["failed_at"] = at
                row["error_code"] = str(error.get("code") or "undelivered")[:100]
                row["error_message"] = str(error["message"])[:1000] if error.get("message") else None
            elif row[TIMESTAMP_OF[step]] is None:
                row[TIMESTAMP_OF[step]] = at
            row["updated_at"] = now
            changed[row["id"]] = row
            steps.append((step, dict(row), at, {"external_id": ack.external_id, "ack": ack.status}))
        results.append(row)
    if changed:
        _write_acked(session, list(changed.values()), steps)
    return results


def _steps(row: dict, ack: Ack) -> list[str]:
    """The statuses ``ack`` moves the message (its current columns) through, in order."""
    current = row["status"]
    doubtful = current == "failed" and row["error_code"] in DOUBTFUL_FAILURES
    if current in TERMINAL and not doubtful:
        return []
    if ack.status == "failed":
        if doubtful or RANK.get(current, 0) >= RANK["delivered"]:
            return []
        return ["failed"]
    if ack.status in RANK and (doubtful or RANK[ack.status] > RANK.get(current, 0)):
        base = 1 if doubtful else RANK.get(current, 0)
        return [step for step in ("sent", "delivered", "read") if base < RANK[step] <= RANK[ack.status]]
    return []  # late or repeated ack: nothing moves backwards


_COLUMNS = [c.key for c in Message.__table__.columns]
_LOCK_BY_EXTERNAL = text(f"""
    SELECT {", ".join("m." + c for c in _COLUMNS)} FROM messages AS m
      JOIN unnest(CAST(:clients AS text[]), CAST(:keys AS text[])) AS a(client_id, external_id)
        ON m.client_id = a.client_id AND m.external_id = a.external_id
     WHERE m.direction = 'outbound' ORDER BY m.id FOR UPDATE OF m""")
_LOCK_BY_ID = text(f"""
    SELECT {", ".join(_COLUMNS)} FROM messages
     WHERE id = ANY(CAST(:keys AS text[])) AND direction = 'outbound' ORDER BY id FOR UPDATE""")


def _lock_acked(session: Session, acks: list[Ack]) -> dict[tuple[str, str, str], dict]:
    """The acked messages' columns, locked, keyed ``("ext", client, external id)`` and
    ``("id", client, message id)``."""
    found: dict[tuple[str, str, str], dict] = {}
    by_id: dict[str, dict] = {}
    pairs = sorted({(a.client_id, a.external_id) for a in acks if a.external_id})
    if pairs:
        for r in session.execute(_LOCK_BY_EXTERNAL, {"clients": [c for c, _ in pairs], "keys": [e for _, e in pairs]}):
            row = by_id.setdefault(r.id, dict(r._mapping))
            found[("ext", row["client_id"], row["external_id"])] = row
    wanted = sorted({a.message_id for a in acks if a.message_id and a.message_id not in by_id
                     and ("ext", a.client_id, a.external_id) not in found})
    if wanted:
        for r in session.execute(_LOCK_BY_ID, {"keys": wanted}):
            by_id.setdefault(r.id, dict(r._mapping))
    for row in by_id.values():
        found[("id", row["client_id"], row["id"])] = row
    return found


# one JSON parameter each (``json_rows``)
_UPDATE_ACKED = text("""
    UPDATE messages AS m
       SET status = u.status, external_id = u.external_id, sent_at = u.sent_at, delivered_at = u.delivered_at,
           read_at = u.read_at, failed_at = u.failed_at, error_code = u.error_code, error_message = u.error_message,
           updated_at = u.updated_at
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS u(id text, status text, external_id text, sent_at timestamptz, delivered_at timestamptz,
                read_at timestamptz, failed_at timestamptz, error_code text, error_message text,
                updated_at timestamptz)
     WHERE m.id = u.id""")
_INSERT_HISTORY = text("""
    INSERT INTO message_status_history (organization_id, message_id, status, at, details)
    SELECT h.organization_id, h.message_id, h.status, h.at, h.details
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS h(organization_id text, message_id text, status text, at timestamptz, details jsonb)""")
_ACKED_COLUMNS = ("id", "status", "external_id", "sent_at", "delivered_at", "read_at", "failed_at", "error_code",
                  "error_message", "updated_at")
#: the order events of one batch are emitted in: a message's steps always climb it
_EVENT_ORDER = ("sent", "delivered", "read", "failed")


def _write_acked(session: Session, rows: list[dict], steps: list[tuple[str, dict, datetime, dict]]) -> None:
    session.execute(_UPDATE_ACKED, {"rows": json_rows([{c: r[c] for c in _ACKED_COLUMNS} for r in rows])})
    ordered = sorted(steps, key=lambda s: _EVENT_ORDER.index(s[0]))
    if ordered:
        session.execute(_INSERT_HISTORY, {"rows": json_rows(
            [{"organization_id": m["organization_id"], "message_id": m["id"], "status": status, "at": at,
              "details": details} for status, m, at, details in ordered])})
    groups: dict[tuple[str, str], list[dict]] = {}
    for status, message, _, _ in ordered:
        groups.setdefault((message["organization_id"], status), []).append(dump(message))
    for (organization_id, status), items in groups.items():
        emit_many(session, organization_id, f"message.{status}", items)
    ids = {r["id"] for r in rows}
    for obj in list(session.identity_map.values()):  # ORM copies of these rows are stale now
        if isinstance(obj, Message) and obj.id in ids:
            session.expire(obj)


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
