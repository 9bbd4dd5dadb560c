"""What a send that went out writes, and how it outlives a database blip.

``record_sent`` is ``sending -> sent`` with its history row, the contact's last outbound time and
the ``message.sent`` event in one statement, inside the transaction that also writes the
transport's reports (its acks to come) and, for subscribed endpoints, the deliveries.
``record_sent_alone`` does the same in one autocommitted statement (no BEGIN and COMMIT) while
nobody is subscribed to ``message.sent``, which is the common case; it declines otherwise.
``durably`` retries either while the database is away: the outcome of a send that happened must
not be lost.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime

from sqlalchemy import text, update
from sqlalchemy.orm import Session

from app import outbox
from app.db import OperationalErrors, job_session, json_rows, new_id, one_statement, utcnow
from app.inbox.service import Report, insert_reports_sql, report_params, wake
from app.messages.models import Message
from app.messages.tracking import apply_ack, dump, record_status
from app.webhooks.events import route, subscribed_where

log = logging.getLogger(__name__)

RECONCILE_ACTOR = "messages.reconcile"
#: the first question to the transport about a message whose send ended in doubt
RECONCILE_FIRST_MS = 5_000

def _sent_steps(only_if: str = "TRUE") -> str:
    """The CTEs of ``sending -> sent`` (``m``: the message, its history row, the contact's last
    outbound time, the ``message.sent`` event), the transition made only if ``only_if`` holds."""
    return f"""
    m AS (
        UPDATE messages SET status = 'sent', sent_at = :at, external_id = :external_id, updated_at = :at,
                            error_code = NULL, error_message = NULL
        WHERE id = :id AND status = 'sending' AND {only_if}
        RETURNING id, organization_id, contact_id),
    h AS (
        INSERT INTO message_status_history (organization_id, message_id, status, at, details)
        SELECT organization_id, id, 'sent', :at, jsonb_build_object('external_id', CAST(:external_id AS text)) FROM m),
    c AS (
        UPDATE contacts SET last_outbound_at = GREATEST(contacts.last_outbound_at, :at)
        FROM m WHERE contacts.id = m.contact_id),
    e AS (
        INSERT INTO webhook_events (id, organization_id, type, payload, created_at)
        SELECT :event_id, organization_id, 'message.sent', CAST(:payload AS jsonb), :at FROM m)"""


# in the caller's transaction; returns the subscribers of ``message.sent``, for their deliveries
_SENT = text(f"""
    WITH {_sent_steps()}
    SELECT m.organization_id,
           ARRAY(SELECT w.id FROM webhooks AS w WHERE {subscribed_where("w", "m.organization_id", "'message.sent'")}
                 ORDER BY w.id) AS endpoints
      FROM m
""")
# the same and the transport's reports, as a statement of its own, made only while nobody takes
# ``message.sent`` (``s``)
_SENT_ALONE = text(f"""
    WITH s AS (
        SELECT EXISTS (SELECT 1 FROM webhooks AS w
                        WHERE {subscribed_where("w", "CAST(:org AS text)", "'message.sent'")}) AS subscribed),
    {_sent_steps(only_if="NOT (SELECT subscribed FROM s)")},
    r AS ({insert_reports_sql(only_if="EXISTS (SELECT 1 FROM m)")})
    SELECT EXISTS (SELECT 1 FROM m) AS done, (SELECT subscribed FROM s) AS subscribed
""")


#: how long a worker keeps trying to record the outcome of a send while the database is away
RECORD_PATIENCE_S = 30.0


def durably(work, patience_s: float | None = None, *, alone_first: bool = False) -> bool:
    """Run ``work(session)`` in a transaction, retried with backoff while the database is
    unreachable (at most ``patience_s``): the outcome of a send that happened must not be lost to
    a database blip. False when it never succeeded (the sweeper then reconciles the message).
    ``alone_first``: ``work(None)`` first, which does it all in statements of its own and returns
    True, or does nothing and returns False (then the transaction)."""
    deadline = time.monotonic() + (RECORD_PATIENCE_S if patience_s is None else patience_s)
    pause = 0.2
    while True:
        try:
            if alone_first and work(None):
                return True
            with job_session() as session:
                work(session)
            return True
        except OperationalErrors as exc:
            if time.monotonic() + pause > deadline:
                log.error("database unavailable for %.0f s; giving up recording (%s)", RECORD_PATIENCE_S,
                          exc.__class__.__name__)
                return False
            log.warning("database unavailable (%s); recording again in %.1f s", exc.__class__.__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def mark_unknown(session: Session, message_id: str, code: str, text: str) -> Message | None:
    """``sending`` -> ``unknown``: it may or may not have reached WhatsApp. Never sent again; a
    ``messages.reconcile`` job asks the transport, and any ack moves it to the truth."""
    now = utcnow()
    row = session.scalars(
        update(Message).where(Message.id == message_id, Message.status == "sending")
        .values(status="unknown", error_code=code[:100], error_message=text[:1000], updated_at=now)
        .returning(Message), execution_options={"populate_existing": True, "synchronize_session": False}).first()
    if row is not None:
        record_status(session, row, "unknown", at=now, details={"code": code})
        outbox.enqueue(session, RECONCILE_ACTOR, row.id, delay_ms=RECONCILE_FIRST_MS)
    return row


#: organisations whose last send here found subscribers of ``message.sent`` (a hint, never trusted:
#: the one-statement record checks for itself)
_SUBSCRIBED_ORGS: dict[str, bool] = {}


def record_sent_alone(claimed: dict, external_id: str, reports: list[Report]) -> bool:
    """``sending -> sent`` with everything ``record_sent`` writes and the transport's ``reports``,
    in one autocommitted statement (no BEGIN and COMMIT: three round trips fewer), when nobody is
    subscribed to ``message.sent`` (then the deliveries need a transaction). False when it did
    nothing: subscribers, or the message is not ``sending`` any more."""
    org = claimed["organization_id"]
    if _SUBSCRIBED_ORGS.get(org):
        return False
    with one_statement() as conn:
        row = conn.execute(_SENT_ALONE, {**_sent_params(claimed, external_id), "org": org,
                                         **report_params(reports)}).one()
    if len(_SUBSCRIBED_ORGS) > 10_000:
        _SUBSCRIBED_ORGS.clear()
    _SUBSCRIBED_ORGS[org] = row.subscribed
    if row.done:
        wake(reports)
    return bool(row.done)


def _sent_row(claimed: dict, external_id: str, at: datetime) -> dict:
    """What ``sending -> sent`` writes of one message; the event's payload is the claimed row as it
    will be (nothing else changes a ``sending`` row)."""
    after = {**claimed, "status": "sent", "sent_at": at, "external_id": external_id, "updated_at": at,
             "error_code": None, "error_message": None}
    return {"id": claimed["id"], "external_id": external_id, "event_id": new_id("evt"), "payload": dump(after)}


def _sent_params(claimed: dict, external_id: str) -> dict:
    """The parameters of ``_sent_steps``."""
    at = utcnow()
    row = _sent_row(claimed, external_id, at)
    return {**row, "at": at, "payload": json.dumps(row["payload"])}


def record_sent(session: Session, message_id: str, external_id: str, *, claimed: dict) -> None:
    """``sending -> sent`` with its history row, the contact's last outbound time and the
    ``message.sent`` event, in one statement. ``claimed`` (the row as the claim returned it) gives the
    event's data: nothing else changes a ``sending`` row, so it is the row after the update."""
    params = _sent_params(claimed, external_id)
    at, event_id = params["at"], params["event_id"]
    row = session.execute(_SENT, params).first()
    if row is not None:
        _SUBSCRIBED_ORGS[row.organization_id] = bool(row.endpoints)  # none any more: one statement next time
        route(session, row.organization_id, "message.sent", [event_id], endpoints=list(row.endpoints))
        return
    # reconciled meanwhile (unknown, or a late ack): keep the transport's id, and let an
    # unknown message know it went out
    session.execute(update(Message).where(Message.id == message_id).values(external_id=external_id),
                    execution_options={"synchronize_session": False})
    message = session.get(Message, message_id)
    if message is not None and message.status == "unknown":
        apply_ack(session, message.client_id, external_id, "sent", at=at, message_id=message_id)


# ``record_sent`` for many sends of one organisation at once, made only while nobody takes
# ``message.sent`` (else each is recorded with its deliveries by ``record_sent``)
_SENT_MANY = text(f"""
    WITH s AS (
        SELECT EXISTS (SELECT 1 FROM webhooks AS w
                        WHERE {subscribed_where("w", "CAST(:org AS text)", "'message.sent'")}) AS subscribed),
    u AS (SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb))
                   AS u(id text, external_id text, event_id text, payload jsonb)),
    m AS (
        UPDATE messages SET status = 'sent', sent_at = :at, external_id = u.external_id, updated_at = :at,
                            error_code = NULL, error_message = NULL
          FROM u
         WHERE messages.id = u.id AND messages.status = 'sending' AND NOT (SELECT subscribed FROM s)
        RETURNING messages.id, messages.organization_id, messages.contact_id, u.external_id, u.event_id, u.payload),
    h AS (
        INSERT INTO message_status_history (organization_id, message_id, status, at, details)
        SELECT organization_id, id, 'sent', :at, jsonb_build_object('external_id', external_id) FROM m),
    c AS (
        UPDATE contacts SET last_outbound_at = GREATEST(contacts.last_outbound_at, :at)
          FROM (SELECT DISTINCT contact_id FROM m) AS x WHERE contacts.id = x.contact_id),
    e AS (
        INSERT INTO webhook_events (id, organization_id, type, payload, created_at)
        SELECT event_id, organization_id, 'message.sent', payload, :at FROM m)
    SELECT (SELECT subscribed FROM s) AS subscribed, ARRAY(SELECT id FROM m) AS done
""")


def record_sent_many(session: Session, sends: list[tuple[dict, str]]) -> None:
    """``record_sent`` for ``sends`` (``(claimed row, external id)`` of one organisation), in the
    caller's transaction: one statement for all while nobody takes ``message.sent``; else, and for
    any that is not ``sending`` any more, one ``record_sent`` each."""
    if not sends:
        return
    org = sends[0][0]["organization_id"]
    at = utcnow()
    rows = [_sent_row(claimed, external_id, at) for claimed, external_id in sends]
    done = session.execute(_SENT_MANY, {"org": org, "at": at, "rows": json_rows(rows)}).one()
    _SUBSCRIBED_ORGS[org] = done.subscribed
    recorded = set(done.done)
    for claimed, external_id in sends:
        if claimed["id"] not in recorded:
            record_sent(session, claimed["id"], external_id, claimed=claimed)
