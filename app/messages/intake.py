"""Writing accepted messages (``app.messages.service.accept_messages`` decides what is accepted):
the rows and their ``queued`` history rows in one statement. Their ``messages.send`` jobs go after
the commit (``planning.enqueue_plans(..., outbox_row=False)``).

The job needs no outbox row: the message row itself is the durable record of the work. A job lost
between the commit and the broker (the process died, Redis refused it) leaves a ``queued`` message
with nothing on its way, which the sweeper (``app.messages.sweeper.requeue_lost``) sends again once
its due time is ``MESSAGE_LOST_AFTER`` past (tests/messages/test_routes.py checks it).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.clients.models import Client
from app.db import json_rows

#: the messages and their ``queued`` history rows in one statement, from one JSON array of rows (one
#: parameter: a text per row of JSON costs the driver nothing, where text arrays are quoted element
#: by element)
_INSERT_QUEUED = """
    WITH m AS (
        INSERT INTO messages (id, organization_id, client_id, direction, contact_id, to_phone, from_phone, type, text,
                              media_id, caption, template_id, variables, status, campaign_id, automation_id,
                              idempotency_key, scheduled_at, scheduled_for, attempts, queued_at, created_at, updated_at)
        SELECT u.id, :org, :client, 'outbound', u.contact_id, u.to_phone, :from_phone, u.type, u.text,
               u.media_id, u.caption, u.template_id, COALESCE(u.variables, '{{}}'::jsonb), 'queued', :campaign,
               :automation, u.idempotency_key, u.scheduled_at, u.scheduled_for, 0, :now, :now, :now
        FROM jsonb_to_recordset(CAST(:rows AS jsonb))
             AS u(id text, contact_id text, to_phone text, type text, text text, media_id text, caption text,
                  template_id text, variables jsonb, idempotency_key text, scheduled_at timestamptz,
                  scheduled_for timestamptz)
        {on_conflict}
        RETURNING id)
    INSERT INTO message_status_history (organization_id, message_id, status, at, details)
    SELECT :org, m.id, 'queued', :now, '{{}}'::jsonb FROM m
    {returning}"""
_INSERT_PLAIN = text(_INSERT_QUEUED.format(on_conflict="", returning=""))
_INSERT_KEYED = text(_INSERT_QUEUED.format(
    on_conflict="ON CONFLICT (organization_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
    returning="RETURNING message_id"))


def insert_queued(session: Session, client: Client, values: list[dict], now: datetime, *, campaign_id: str | None,
                   automation_id: str | None, keys: bool) -> set[str] | None:
    """Write the messages of ``values`` and their ``queued`` history rows with one ``INSERT ...
    SELECT`` from one JSON parameter (``json_rows``: one statement and one round trip whatever the
    count). With ``keys`` a message whose idempotency key exists is skipped, and the ids written
    are returned; without, None (all were)."""
    columns = ("id", "contact_id", "to_phone", "type", "text", "media_id", "caption", "template_id", "variables",
               "idempotency_key", "scheduled_at", "scheduled_for")
    rows = [{c: v[c] for c in columns} for v in values]
    for row in rows:
        row["variables"] = row["variables"] or None
    params = {
        "org": client.organization_id, "client": client.id, "from_phone": client.phone, "now": now,
        "campaign": campaign_id, "automation": automation_id,
        "rows": json_rows(rows),
    }
    if keys:
        return set(session.scalars(_INSERT_KEYED, params))
    session.execute(_INSERT_PLAIN, params)
    return None

