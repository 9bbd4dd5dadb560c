"""Emitting events: one ``webhook_events`` row in the caller's transaction (the event outbox), and
a fan-out job sent after commit that creates one delivery per subscribed endpoint.

Every event of API.md goes through ``emit``. ``data`` is the full resource as the API returns it.

``emit`` runs for every message status change, so it first asks which enabled endpoints of the
organisation take the type: one indexed query in the caller's own transaction (remembered until it
ends), not a cache that could be stale, so an endpoint that exists when the event happens always
gets it. None: nothing more is done (no job at all). A few: their deliveries are written right here
and their delivery jobs sent after commit, which spares a queue hop. Many: the ``webhooks.fan_out``
job writes them, keeping the caller's transaction small.
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import outbox
from app.db import new_id, utcnow
from app.webhooks.models import WebhookEvent
from config import settings

EVENT_TYPES = (
    "message.queued", "message.sent", "message.delivered", "message.read", "message.failed", "message.received",
    "message.unknown",
    "client.qr", "client.connected", "client.disconnected", "client.banned",
    "campaign.started", "campaign.paused", "campaign.completed", "campaign.cancelled",
    "contact.opted_out", "webhook.test",
    "automation.triggered",
    "media.ready", "media.failed",
)
#: Sent only by POST /api/webhooks/{id}/test, to that one endpoint: never fanned out.
TEST_EVENT = "webhook.test"
WILDCARD = "*"

_MEMO = "webhooks_subscribed"

#: at most this many subscribed endpoints get their deliveries written inside emit()
INLINE_FAN_OUT_MAX = 5


def subscribed_where(alias: str, organization: str, event_type: str) -> str:
    """The SQL condition "endpoint ``alias`` of ``organization`` takes ``event_type``" (both SQL
    expressions), for statements that find the subscribers in passing (a message's ``sent``)."""
    return (f"{alias}.organization_id = {organization} AND {alias}.enabled AND {alias}.deleted_at IS NULL"
            f" AND ({alias}.events @> ARRAY[CAST({event_type} AS text)] OR {alias}.events @> ARRAY['*'])")


_SUBSCRIBED = text(f"SELECT w.id FROM webhooks AS w WHERE {subscribed_where('w', ':org', ':type')} ORDER BY w.id")


def subscribed_endpoints(session: Session, organization_id: str, event_type: str) -> list[str]:
    """Ids of the organisation's enabled endpoints that take ``event_type`` (memoised per transaction)."""
    memo = session.info.setdefault(_MEMO, {})
    key = (organization_id, event_type)
    if key not in memo:
        memo[key] = list(session.scalars(_SUBSCRIBED, {"org": organization_id, "type": event_type}))
    return memo[key]


@sa_event.listens_for(Session, "after_commit")
@sa_event.listens_for(Session, "after_rollback")
def _forget_memo(session: Session) -> None:
    session.info.pop(_MEMO, None)


def _json_default(value):
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _payload(data: dict | None) -> dict:
    """``data`` as the JSON it will be stored and sent as (datetimes in ISO 8601)."""
    return json.loads(json.dumps(data or {}, default=_json_default))


def route(session: Session, organization_id: str, event_type: str, event_ids: list[str], *,
          endpoints: list[str] | None = None) -> None:
    """Deliveries of recorded events: written here for a few subscribed endpoints, left to one
    ``webhooks.fan_out`` job per event for many, nothing at all for none. ``endpoints``: the
    subscribers, when the statement that recorded the events found them in the same transaction."""
    if endpoints is None:
        endpoints = subscribed_endpoints(session, organization_id, event_type)
    else:
        session.info.setdefault(_MEMO, {})[(organization_id, event_type)] = endpoints
    if len(endpoints) > INLINE_FAN_OUT_MAX:
        outbox.enqueue_many(session, "webhooks.fan_out", [(event_id,) for event_id in event_ids])
    elif endpoints:
        session.flush()  # the deliveries reference the event rows
        create_deliveries_for(session, organization_id, [(e, hook) for e in event_ids for hook in endpoints])


def emit(session: Session, organization_id: str, event_type: str, data: dict) -> WebhookEvent:
    """Record ``event_type`` with ``data`` for ``organization_id``; deliveries follow the commit."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; add it to EVENT_TYPES and API.md")
    event = WebhookEvent(id=new_id("evt"), organization_id=organization_id, type=event_type, payload=_payload(data),
                         created_at=utcnow())
    session.add(event)
    if event_type != TEST_EVENT:
        route(session, organization_id, event_type, [event.id])
    return event


def emit_many(session: Session, organization_id: str, event_type: str, items: list[dict]) -> list[str]:
    """``emit`` for many events of one type (a batch of messages): one statement for the events
    (which also finds their subscribers, unless this transaction knows them) and one for their
    deliveries, instead of an ORM object and a flush each. Returns the event ids."""
    if event_type not in EVENT_TYPES or event_type == TEST_EVENT:
        raise ValueError(f"emit_many cannot record {event_type!r}")
    if not items:
        return []
    ids = [new_id("evt") for _ in items]
    params = {"ids": ids, "org": organization_id, "type": event_type, "at": utcnow(),
              "payloads": json.dumps([data or {} for data in items], default=_json_default)}
    known = session.info.get(_MEMO, {}).get((organization_id, event_type))
    if known is not None:
        session.execute(_INSERT_EVENTS, params)
        route(session, organization_id, event_type, ids, endpoints=known)
    else:
        endpoints = session.scalar(_INSERT_EVENTS_FINDING_SUBSCRIBERS, params)
        route(session, organization_id, event_type, ids, endpoints=list(endpoints or []))
    return ids


_INSERT_EVENTS_SQL = """
    INSERT INTO webhook_events (id, organization_id, type, payload, created_at)
    SELECT e.id, :org, :type, p.payload, :at
      FROM unnest(CAST(:ids AS text[])) WITH ORDINALITY AS e(id, n)
      JOIN jsonb_array_elements(CAST(:payloads AS jsonb)) WITH ORDINALITY AS p(payload, n) USING (n)"""
_INSERT_EVENTS = text(_INSERT_EVENTS_SQL)
_INSERT_EVENTS_FINDING_SUBSCRIBERS = text(f"""
    WITH e AS ({_INSERT_EVENTS_SQL})
    SELECT ARRAY(SELECT w.id FROM webhooks AS w WHERE {subscribed_where("w", "CAST(:org AS text)", ":type")}
                 ORDER BY w.id)""")


# ----------------------------------------------------------------------------- fan-out into deliveries

def lease_s() -> float:
    """How long a dispatched or running attempt may take before the claimer sends it again."""
    return max(60.0, 2 * settings.WEBHOOK_TIMEOUT + 30)


def lease_end(now: datetime, extra_s: float = 0.0) -> datetime:
    """When a delivery dispatched ``now`` is due again if its job never ran."""
    return now + timedelta(seconds=lease_s() + extra_s)


def fan_out(session: Session, event_id: str, *, now: datetime | None = None) -> int:
    """One delivery per subscribed, enabled endpoint of the event's organisation (idempotent)."""
    event = session.execute(select(WebhookEvent.organization_id, WebhookEvent.type)
                            .where(WebhookEvent.id == event_id)).first()
    if event is None or event.type == TEST_EVENT:
        return 0
    hook_ids = subscribed_endpoints(session, event.organization_id, event.type)
    return create_deliveries(session, event.organization_id, event_id, hook_ids, now=now)


# One short statement whatever the number of endpoints (two array parameters, not a VALUES list).
_CREATE_DELIVERIES = text("""
INSERT INTO webhook_deliveries (id, organization_id, event_id, webhook_id, status, attempt, next_attempt_at,
                                created_at, updated_at)
SELECT d.id, :org, d.event_id, d.webhook_id, 'pending', 0, :lease_end, :now, :now
  FROM unnest(CAST(:ids AS text[]), CAST(:events AS text[]), CAST(:hooks AS text[])) AS d(id, event_id, webhook_id)
    ON CONFLICT (webhook_id, event_id) DO NOTHING
RETURNING id, webhook_id
""")


def create_deliveries(session: Session, organization_id: str, event_id: str, webhook_ids: list[str], *,
                      now: datetime | None = None) -> int:
    """A delivery of the event to each endpoint (none twice) and its first attempt's job, sent after
    commit. Called by fan_out, and by emit() itself for the usual handful of endpoints."""
    return create_deliveries_for(session, organization_id, [(event_id, hook) for hook in webhook_ids], now=now)


def create_deliveries_for(session: Session, organization_id: str, pairs: list[tuple[str, str]], *,
                          now: datetime | None = None) -> int:
    """``create_deliveries`` for many (event id, endpoint id) pairs in one statement (emit_many)."""
    if not pairs:
        return 0
    now = now or utcnow()
    created = session.execute(_CREATE_DELIVERIES, {
        "ids": [new_id("dlv") for _ in pairs], "events": [e for e, _ in pairs], "hooks": [h for _, h in pairs],
        "org": organization_id, "lease_end": lease_end(now), "now": now}).all()
    # no outbox row: each delivery is leased (``next_attempt_at``), so the claimer sends a job the
    # broker never got once its lease runs out (``dispatch_due``)
    outbox.after_commit(session, "webhooks.deliver", [(delivery_id, 1, hook_id) for delivery_id, hook_id in created])
    return len(created)
