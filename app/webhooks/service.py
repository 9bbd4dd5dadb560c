"""Webhook endpoints (the API) and the delivery engine (the ``webhooks`` jobs).

The schedule lives in Postgres; the broker only carries the next attempt. A delivery row is
``pending`` (never tried, or reset by redeliver), ``delivering`` (an attempt claimed it), ``failed``
(the last attempt failed and another is scheduled), ``succeeded`` or ``dead`` (no attempt left, or
the endpoint was disabled or deleted). ``attempt`` counts the attempts made, and is the token that
makes a job deliver once: ``webhooks.deliver(delivery_id, n, webhook_id)`` performs attempt ``n``
only if it moves the row from ``n - 1`` to ``n`` (a duplicate or stale job changes nothing).

``next_attempt_at`` tells the claimer (``dispatch_due``, every few seconds) when to act: for a
waiting row it is when the next attempt is due; once a job is on its way (fan-out, redeliver, a
short retry sent as a delayed broker message) or running, it is the end of a lease. A row whose
time has come is (re)dispatched, so a job lost with a worker or with Redis costs a delay, never the
delivery; the attempt-token makes the occasional duplicate job harmless.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, func, select, text, update

from app import outbox
from app.audit.service import diff, record
from app.db import get_scoped, new_id, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.pagination import decode_cursor, encode_cursor, paginate
from app.security import crypto
from app.security.principal import Principal
from app.security import ssrf
from app.webhooks import delivery, signing
from app.webhooks.events import _MEMO, EVENT_TYPES, TEST_EVENT, WILDCARD, emit, subscribed_endpoints
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent
from config import settings

log = logging.getLogger(__name__)

D, A = WebhookDelivery, WebhookDeliveryAttempt
ACTIVE = ("pending", "delivering", "failed")
MAX_WEBHOOKS_PER_ORG = 50
PREVIOUS_SECRET_TTL = timedelta(hours=24)
RETENTION = timedelta(days=30)
#: retries due within this many seconds travel as delayed broker messages; later ones wait in
#: Postgres for the claimer
BROKER_CARRIES_S = 60.0
NO_SYNC = {"synchronize_session": False}
DISABLE_MESSAGES = {
    "gone": "The endpoint answered 410 Gone.",
    "failing": "Every delivery attempt failed for 5 days.",
    "manual": "Disabled through the API.",
}


def lease_s() -> float:
    """How long a dispatched or running attempt may take before the claimer sends it again."""
    return max(60.0, 2 * settings.WEBHOOK_TIMEOUT + 30)


def _lease_end(now: datetime, extra_s: float = 0.0) -> datetime:
    return now + timedelta(seconds=lease_s() + extra_s)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value else None


def _forget_subscriptions(session) -> None:
    session.info.pop(_MEMO, None)


# =========================================================================== endpoints (API)

def _check_url(url: str) -> str:
    url = (url or "").strip()
    problem = ssrf.check_url(url)
    if problem:
        raise ValidationError(details={"url": [problem]})
    return url


def _check_events(events: list[str]) -> list[str]:
    unknown = sorted({e for e in events if e != WILDCARD and e not in EVENT_TYPES})
    if unknown:
        raise ValidationError(details={"events": [
            f"Unknown event type(s): {', '.join(unknown)}. Use exact names ({', '.join(EVENT_TYPES)}) or \"*\"."]})
    if not events:
        raise ValidationError(details={"events": ["Subscribe to at least one event type (or \"*\")."]})
    return [WILDCARD] if WILDCARD in events else list(dict.fromkeys(events))


def _public(hook: Webhook, secret: str | None = None) -> dict:
    out = {name: getattr(hook, name) for name in (
        "id", "url", "events", "description", "enabled", "disabled_reason", "failing_since",
        "consecutive_failures", "last_success_at", "previous_secret_expires_at", "created_at", "updated_at")}
    if secret is not None:
        out["secret"] = secret
    return out


def create_webhook(session, principal: Principal, *, url: str, events: list[str],
                   description: str | None = None) -> dict:
    """A new endpoint; the answer carries its secret, which is never shown again."""
    url, events = _check_url(url), _check_events(events)
    count = session.scalar(select(func.count()).select_from(scoped_select(Webhook, principal.organization_id).subquery()))
    if count >= MAX_WEBHOOKS_PER_ORG:
        raise Conflict(f"An organisation has at most {MAX_WEBHOOKS_PER_ORG} webhook endpoints", code="webhook_limit")
    secret, now = signing.generate_secret(), utcnow()
    hook = Webhook(id=new_id("whk"), organization_id=principal.organization_id, url=url, events=events,
                   description=description, enabled=True, secret_encrypted=crypto.encrypt(secret),
                   created_by=principal.id if principal.kind == "user" else None, created_at=now, updated_at=now,
                   consecutive_failures=0)
    session.add(hook)
    session.flush()
    _forget_subscriptions(session)
    record(session, principal, "webhook.create", target_type="webhook", target_id=hook.id,
           changes={"url": ssrf.redact_url(url), "events": events, "description": description})
    return _public(hook, secret)


def list_webhooks(session, principal: Principal, *, limit: int, cursor: str | None = None,
                  enabled: bool | None = None) -> dict:
    stmt = scoped_select(Webhook, principal.organization_id)
    if enabled is not None:
        stmt = stmt.where(Webhook.enabled.is_(enabled))
    return paginate(session, stmt, Webhook.id, limit=limit, cursor=cursor)


def get_webhook(session, principal: Principal, webhook_id: str) -> Webhook:
    return get_scoped(session, Webhook, principal.organization_id, webhook_id)


def update_webhook(session, principal: Principal, webhook_id: str, **fields) -> Webhook:
    """Change url, events, description or enabled. Disabling abandons the endpoint's pending
    deliveries; enabling again delivers new events only (redeliver brings back old ones)."""
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id, for_update=True)
    wanted: dict = {}
    if fields.get("url") is not None:
        wanted["url"] = _check_url(fields["url"])
    if fields.get("events") is not None:
        wanted["events"] = _check_events(fields["events"])
    if "description" in fields:
        wanted["description"] = fields["description"]
    if fields.get("enabled") is not None:
        wanted["enabled"] = bool(fields["enabled"])
    changes = diff(hook, wanted)
    if not changes:
        return hook
    now = utcnow()
    for key, value in wanted.items():
        setattr(hook, key, value)
    if "enabled" in changes:
        if hook.enabled:
            hook.disabled_reason, hook.failing_since, hook.consecutive_failures = None, None, 0
        else:
            hook.disabled_reason = "manual"
            _abandon_pending(session, hook.id, "the endpoint was disabled", now)
    if "url" in changes:
        changes["url"] = {"from": ssrf.redact_url(changes["url"]["from"]), "to": ssrf.redact_url(changes["url"]["to"])}
    hook.updated_at = now
    session.flush()
    _forget_subscriptions(session)
    record(session, principal, "webhook.update", target_type="webhook", target_id=hook.id, changes=changes)
    return hook


def delete_webhook(session, principal: Principal, webhook_id: str) -> None:
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id, for_update=True)
    now = utcnow()
    hook.deleted_at = hook.updated_at = now
    hook.previous_secret_encrypted = hook.previous_secret_expires_at = None
    _abandon_pending(session, hook.id, "the endpoint was deleted", now)
    session.flush()
    _forget_subscriptions(session)
    record(session, principal, "webhook.delete", target_type="webhook", target_id=hook.id,
           changes={"url": ssrf.redact_url(hook.url), "events": list(hook.events)})


def rotate_secret(session, principal: Principal, webhook_id: str, *, now: datetime | None = None) -> dict:
    """A new secret; the current one keeps signing alongside it for 24 hours."""
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id, for_update=True)
    now = now or utcnow()
    secret = signing.generate_secret()
    hook.previous_secret_encrypted = hook.secret_encrypted
    hook.previous_secret_expires_at = now + PREVIOUS_SECRET_TTL
    hook.secret_encrypted = crypto.encrypt(secret)
    hook.updated_at = now
    session.flush()
    record(session, principal, "webhook.rotate_secret", target_type="webhook", target_id=hook.id,
           changes={"previous_secret_expires_at": _iso(hook.previous_secret_expires_at)})
    return _public(hook, secret)


def send_test(session, principal: Principal, webhook_id: str) -> dict:
    """A ``webhook.test`` event, delivered to this endpoint only."""
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id)
    if not hook.enabled:
        raise Conflict("The endpoint is disabled; enable it to send a test event", code="webhook_disabled")
    event = emit(session, principal.organization_id, TEST_EVENT, {
        "webhook_id": hook.id, "message": "A test event from WhatsApp Service: your endpoint is reachable."})
    now = utcnow()
    row = WebhookDelivery(id=new_id("dlv"), organization_id=hook.organization_id, event_id=event.id,
                          webhook_id=hook.id, status="pending", attempt=0, next_attempt_at=_lease_end(now),
                          created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    outbox.enqueue(session, "webhooks.deliver", row.id, 1, hook.id, queue_name="webhooks")
    record(session, principal, "webhook.test", target_type="webhook", target_id=hook.id,
           changes={"event_id": event.id})
    return {"event_id": event.id, "delivery_id": row.id, "type": TEST_EVENT}


# =========================================================================== delivery log (API)

def _attempt_item(attempt: WebhookDeliveryAttempt, event_id: str, event_type: str) -> dict:
    return {"id": attempt.delivery_id, "attempt_id": attempt.id, "event_id": event_id, "event_type": event_type,
            "attempt": attempt.attempt, "status_code": attempt.status_code, "duration_ms": attempt.duration_ms,
            "error": attempt.error, "response": attempt.response_excerpt,
            "succeeded": attempt.status_code is not None and 200 <= attempt.status_code < 300,
            "created_at": attempt.created_at, "next_attempt_at": attempt.next_attempt_at}


def _attempts_select():
    return (select(A, D.event_id, WebhookEvent.type)
            .join(D, D.id == A.delivery_id)
            .join(WebhookEvent, WebhookEvent.id == D.event_id))


def list_attempts(session, principal: Principal, webhook_id: str, *, limit: int, cursor: str | None = None,
                  event_id: str | None = None) -> dict:
    """The endpoint's delivery attempts, newest first."""
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id)
    stmt = _attempts_select().where(A.webhook_id == hook.id, A.organization_id == principal.organization_id)
    if event_id:
        stmt = stmt.where(D.event_id == event_id)
    if cursor:
        raw = decode_cursor(cursor)
        prefix, _, number = raw.partition("_")
        if prefix != "att" or not number.isdigit():
            raise ValidationError(details={"cursor": ["Invalid cursor."]})
        stmt = stmt.where(A.id < int(number))
    rows = session.execute(stmt.order_by(A.id.desc()).limit(limit + 1)).all()
    items = [_attempt_item(a, ev_id, ev_type) for a, ev_id, ev_type in rows[:limit]]
    next_cursor = encode_cursor(f"att_{rows[limit - 1][0].id}") if len(rows) > limit else None
    return {"items": items, "next_cursor": next_cursor}


def _delivery_view(session, row: WebhookDelivery) -> dict:
    event_type = session.scalar(select(WebhookEvent.type).where(WebhookEvent.id == row.event_id))
    attempts = session.execute(_attempts_select().where(A.delivery_id == row.id).order_by(A.id).limit(100)).all()
    items = [_attempt_item(a, ev_id, ev_type) for a, ev_id, ev_type in attempts]
    next_at = items[-1]["next_attempt_at"] if row.status == "failed" and items else None
    return {"id": row.id, "webhook_id": row.webhook_id, "event_id": row.event_id, "event_type": event_type,
            "status": row.status, "attempt": row.attempt, "next_attempt_at": next_at,
            "last_status_code": row.last_status_code, "last_error": row.last_error, "delivered_at": row.delivered_at,
            "created_at": row.created_at, "updated_at": row.updated_at, "attempts": items}


def _scoped_delivery(session, principal: Principal, delivery_id: str, *, for_update: bool = False) -> WebhookDelivery:
    """A delivery of the organisation whose endpoint still exists (else 404)."""
    row = get_scoped(session, WebhookDelivery, principal.organization_id, delivery_id, for_update=for_update)
    if session.scalar(select(Webhook.deleted_at.is_(None)).where(Webhook.id == row.webhook_id)) is not True:
        raise NotFound("webhookdelivery not found")
    return row


def get_delivery(session, principal: Principal, delivery_id: str) -> dict:
    return _delivery_view(session, _scoped_delivery(session, principal, delivery_id))


def redeliver(session, principal: Principal, delivery_id: str, *, now: datetime | None = None) -> dict:
    """Deliver an event to the endpoint again, now, with a fresh retry schedule."""
    row = _scoped_delivery(session, principal, delivery_id, for_update=True)
    hook = session.get(Webhook, row.webhook_id)
    if not hook.enabled:
        raise Conflict("The endpoint is disabled; enable it before redelivering", code="webhook_disabled")
    now = now or utcnow()
    if row.status == "delivering" and row.next_attempt_at and row.next_attempt_at > now:
        raise Conflict("An attempt of this delivery is under way; try again in a moment", code="delivery_in_progress")
    previous = row.status
    row.status, row.attempt, row.next_attempt_at = "pending", 0, _lease_end(now)
    row.last_error = row.last_status_code = row.delivered_at = None
    row.updated_at = now
    session.flush()
    outbox.enqueue(session, "webhooks.deliver", row.id, 1, row.webhook_id, queue_name="webhooks")
    record(session, principal, "webhook_delivery.redeliver", target_type="webhook_delivery", target_id=row.id,
           changes={"webhook_id": row.webhook_id, "event_id": row.event_id, "previous_status": previous})
    return _delivery_view(session, row)


# =========================================================================== the engine (jobs)

def fan_out(session, event_id: str, *, now: datetime | None = None) -> int:
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


def create_deliveries(session, organization_id: str, event_id: str, webhook_ids: list[str], *,
                      now: datetime | None = None) -> int:
    """A delivery of the event to each endpoint (none twice) and its first attempt's job, sent after
    commit. Called by fan_out, and by emit() itself for the usual handful of endpoints."""
    return create_deliveries_for(session, organization_id, [(event_id, hook) for hook in webhook_ids], now=now)


def create_deliveries_for(session, organization_id: str, pairs: list[tuple[str, str]], *,
                          now: datetime | None = None) -> int:
    """``create_deliveries`` for many (event id, endpoint id) pairs in one statement (emit_many)."""
    if not pairs:
        return 0
    now = now or utcnow()
    created = session.execute(_CREATE_DELIVERIES, {
        "ids": [new_id("dlv") for _ in pairs], "events": [e for e, _ in pairs], "hooks": [h for _, h in pairs],
        "org": organization_id, "lease_end": _lease_end(now), "now": now}).all()
    outbox.enqueue_many(session, "webhooks.deliver", [(delivery_id, 1, hook_id) for delivery_id, hook_id in created],
                        queue_name="webhooks")
    return len(created)


def dispatch_due(session, *, now: datetime | None = None, limit: int = 500) -> int:
    """The claimer: send a job for every delivery whose time has come (a due retry, or a lease that
    ran out because a job was lost or a worker died) and lease it again. Rows are locked with SKIP
    LOCKED, so concurrent claimers never dispatch the same row twice."""
    now = now or utcnow()
    rows = session.execute(
        select(D.id, D.attempt, D.webhook_id).where(D.status.in_(ACTIVE), D.next_attempt_at <= now)
        .order_by(D.next_attempt_at).limit(limit).with_for_update(skip_locked=True)
    ).all()
    jobs = [(row.id, row.attempt + 1, row.webhook_id) for row in rows if row.attempt < delivery.MAX_ATTEMPTS]
    exhausted = [row.id for row in rows if row.attempt >= delivery.MAX_ATTEMPTS]
    if jobs:
        session.execute(update(D).where(D.id.in_([j[0] for j in jobs]))
                        .values(next_attempt_at=_lease_end(now), updated_at=now).execution_options(**NO_SYNC))
        outbox.enqueue_many(session, "webhooks.deliver", jobs, queue_name="webhooks")
    if exhausted:  # the last attempt was lost with its worker: nothing is left to try
        session.execute(update(D).where(D.id.in_(exhausted))
                        .values(status="dead", next_attempt_at=None, updated_at=now,
                                last_error=func.coalesce(D.last_error, "the last attempt was interrupted"))
                        .execution_options(**NO_SYNC))
    return len(jobs)


@dataclass
class DeliveryRequest:
    """Everything one attempt needs, read in a short transaction before the HTTP request."""

    delivery_id: str
    webhook_id: str
    organization_id: str
    event_id: str
    attempt: int
    url: str
    body: bytes
    headers: dict
    #: why the request could not be built (e.g. a secret no key can decrypt): the attempt is
    #: recorded as failed with this error, and retried on schedule, instead of vanishing
    unsendable: str | None = None


def envelope(event: WebhookEvent) -> dict:
    return _envelope(event.id, event.type, event.created_at, event.organization_id, event.payload)


def _envelope(event_id: str, event_type: str, created_at: datetime, organization_id: str, data) -> dict:
    return {"id": event_id, "type": event_type, "created_at": _iso(created_at), "organization_id": organization_id,
            "data": data}


def envelope_bytes(event: WebhookEvent) -> bytes:
    return _body(envelope(event))


def _body(envelope_: dict) -> bytes:
    """The request body: compact JSON, the same bytes on every attempt (JSONB keeps a stable order)."""
    return json.dumps(envelope_, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def active_secrets(hook, now: datetime) -> list[str]:
    """The secrets that sign right now: the current one, and the previous one for 24 h after a
    rotation. ``hook``: a Webhook or a row with its secret columns."""
    secrets = [crypto.decrypt(hook.secret_encrypted)]
    if hook.previous_secret_encrypted and hook.previous_secret_expires_at and hook.previous_secret_expires_at > now:
        secrets.append(crypto.decrypt(hook.previous_secret_encrypted))
    return secrets


# One round trip: claim attempt n (the row moves from n - 1 to n) and read what the request needs.
# UPDATE ... FROM locks only the delivery row, never the (shared, hot) webhook row.
_CLAIM = text("""
UPDATE webhook_deliveries AS d
   SET status = 'delivering', attempt = :attempt, next_attempt_at = :lease_end, updated_at = :now
  FROM webhooks AS w, webhook_events AS e
 WHERE d.id = :id AND d.attempt = :previous AND d.status IN ('pending', 'delivering', 'failed')
   AND w.id = d.webhook_id AND e.id = d.event_id
RETURNING d.organization_id, d.webhook_id, w.url, (w.enabled AND w.deleted_at IS NULL) AS active,
          w.secret_encrypted, w.previous_secret_encrypted, w.previous_secret_expires_at,
          e.id AS event_id, e.type AS event_type, e.created_at AS event_created_at, e.payload
""")


_ABANDON = text("""
UPDATE webhook_deliveries SET status = 'dead', attempt = :attempt, next_attempt_at = NULL, updated_at = :now,
       last_error = 'the endpoint is disabled or deleted'
 WHERE id = :id
""")


def prepare_attempt(session, delivery_id: str, attempt: int, *, now: datetime | None = None) -> DeliveryRequest | None:
    """Claim attempt ``attempt`` of a delivery and build its signed request; None when there is
    nothing to do (a duplicate or stale job, a disabled or deleted endpoint).

    ``session``: a Session, or a Connection in autocommit (the claim is one statement, atomic by
    itself: the delivery job runs it as its own transaction)."""
    now = now or utcnow()
    row = session.execute(_CLAIM, {"id": delivery_id, "attempt": attempt, "previous": attempt - 1, "now": now,
                                   "lease_end": _lease_end(now)}).first()
    if row is None:
        return None
    if not row.active:
        session.execute(_ABANDON, {"id": delivery_id, "attempt": attempt - 1, "now": now})
        return None
    request = DeliveryRequest(delivery_id=delivery_id, webhook_id=row.webhook_id, organization_id=row.organization_id,
                              event_id=row.event_id, attempt=attempt, url=row.url, body=b"", headers={})
    try:
        request.body = _body(_envelope(row.event_id, row.event_type, row.event_created_at, row.organization_id,
                                       row.payload))
        request.headers = signing.request_headers(active_secrets(row, now), row.event_id, int(now.timestamp()),
                                                  request.body)
    except Exception as exc:  # the attempt is claimed already: record why it could not be made
        log.exception("webhooks: could not build attempt %d of delivery %s", attempt, delivery_id)
        request.unsendable = f"could not sign the request ({exc.__class__.__name__}); check APP_ENCRYPTION_KEYS"
    return request


def webhook_of(session, delivery_id: str) -> str | None:
    return session.scalar(select(D.webhook_id).where(D.id == delivery_id))


_INSERT_ATTEMPT = """
INSERT INTO webhook_delivery_attempts (organization_id, delivery_id, webhook_id, attempt, status_code, duration_ms,
                                       error, response_excerpt, created_at, next_attempt_at)
VALUES (:org, :delivery_id, :webhook_id, :attempt, :status_code, :duration_ms, :error, :excerpt, :now, :next_at)
"""

# A success in one round trip: the attempt, the delivery, and the endpoint's health (written only
# when it changes, or once a minute for last_success_at, so a busy endpoint's row stays cool).
_RECORD_SUCCESS = text("""
WITH d AS (
    UPDATE webhook_deliveries SET status = 'succeeded', delivered_at = :now, next_attempt_at = NULL,
           last_status_code = :status_code, last_error = NULL, updated_at = :now
     WHERE id = :delivery_id AND attempt = :attempt AND status = 'delivering'
), w AS (
    UPDATE webhooks SET failing_since = NULL, consecutive_failures = 0, last_success_at = :now
     WHERE id = :webhook_id AND (failing_since IS NOT NULL OR consecutive_failures <> 0
                                 OR last_success_at IS NULL OR last_success_at < :stale)
)""" + _INSERT_ATTEMPT)


def record_attempt(session, req: DeliveryRequest, outcome: delivery.Outcome, *, now: datetime | None = None,
                   rng: random.Random | None = None) -> str:
    """Write the attempt to the log and decide what follows; returns the delivery's new status.

    A success is one statement (``session`` may then be a Connection in autocommit); a failure
    takes several (the endpoint's health, the schedule, maybe the next job and a disable) and needs
    a Session's transaction."""
    now = now or utcnow()
    attempt_row = {"org": req.organization_id, "delivery_id": req.delivery_id, "webhook_id": req.webhook_id,
                   "attempt": req.attempt, "status_code": outcome.status_code, "duration_ms": outcome.duration_ms,
                   "error": (outcome.error or None) and outcome.error[:1000], "excerpt": outcome.response_excerpt,
                   "now": now, "next_at": None}
    if outcome.success:
        session.execute(_RECORD_SUCCESS, {**attempt_row, "stale": now - timedelta(seconds=60)})
        return "succeeded"

    health = session.execute(
        update(Webhook).where(Webhook.id == req.webhook_id)
        .values(consecutive_failures=Webhook.consecutive_failures + 1,
                failing_since=func.coalesce(Webhook.failing_since, now))
        .returning(Webhook.failing_since, Webhook.enabled).execution_options(**NO_SYNC)
    ).first()
    disable = None
    if outcome.gone:
        disable = "gone"
    elif health and health.enabled and health.failing_since <= now - timedelta(
            seconds=delivery.scaled(delivery.DISABLE_AFTER_S)):
        disable = "failing"
    delay = None if disable else delivery.next_delay(req.attempt, outcome.retry_after, rng)
    values = {"last_status_code": outcome.status_code, "last_error": attempt_row["error"], "updated_at": now}
    by_broker = False
    if delay is None:
        values.update(status="dead", next_attempt_at=None)
    else:
        due = now + timedelta(seconds=delay)
        by_broker = delay <= BROKER_CARRIES_S
        attempt_row["next_at"] = due
        values.update(status="failed", next_attempt_at=_lease_end(due) if by_broker else due)
    updated = session.execute(
        update(D).where(D.id == req.delivery_id, D.attempt == req.attempt, D.status == "delivering")
        .values(**values).execution_options(**NO_SYNC)).rowcount
    if not updated:  # redelivered, disabled or deleted meanwhile: log the attempt, schedule nothing
        attempt_row["next_at"] = None
    session.execute(text(_INSERT_ATTEMPT), attempt_row)
    if updated and by_broker:
        outbox.enqueue(session, "webhooks.deliver", req.delivery_id, req.attempt + 1, req.webhook_id,
                       delay_ms=max(1, int(delay * 1000)), queue_name="webhooks")
    if disable:
        disable_webhook(session, req.webhook_id, disable, now=now)
    return values["status"] if updated else "abandoned"


def _abandon_pending(session, webhook_id: str, reason: str, now: datetime) -> None:
    session.execute(update(D).where(D.webhook_id == webhook_id, D.status.in_(ACTIVE))
                    .values(status="dead", next_attempt_at=None, last_error=reason, updated_at=now)
                    .execution_options(**NO_SYNC))


def disable_webhook(session, webhook_id: str, reason: str, *, now: datetime | None = None) -> bool:
    """The platform disables an endpoint (410 Gone, or failing for 5 days): its pending deliveries
    are abandoned, an alert is raised and the audit log says why. False if it already was."""
    from app.clients.models import BanAlert

    now = now or utcnow()
    row = session.execute(
        update(Webhook).where(Webhook.id == webhook_id, Webhook.enabled.is_(True), Webhook.deleted_at.is_(None))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
        .returning(Webhook.organization_id, Webhook.url, Webhook.failing_since, Webhook.consecutive_failures)
        .execution_options(**NO_SYNC)
    ).first()
    if row is None:
        return False
    _abandon_pending(session, webhook_id, "the endpoint was disabled", now)
    message = DISABLE_MESSAGES.get(reason, reason)
    session.add(BanAlert(id=new_id("alr"), organization_id=row.organization_id, client_id=None, kind="webhook_disabled",
                         details={"webhook_id": webhook_id, "url": ssrf.redact_url(row.url), "reason": reason,
                                  "message": message, "failing_since": _iso(row.failing_since),
                                  "consecutive_failures": row.consecutive_failures},
                         created_at=now))
    record(session, None, "webhook.disable", organization_id=row.organization_id, target_type="webhook",
           target_id=webhook_id, changes={"enabled": {"from": True, "to": False}, "reason": reason, "message": message})
    log.warning("webhook %s disabled: %s", webhook_id, message)
    return True


def cleanup(session, *, now: datetime | None = None, batch: int = 5000, max_batches: int = 20) -> int:
    """Drop events older than 30 days with their deliveries and attempts (the delivery log's
    retention), and previous secrets whose 24 hours are over. Returns the events removed."""
    now = now or utcnow()
    cutoff = now - RETENTION
    removed = 0
    for _ in range(max_batches):
        ids = session.scalars(select(WebhookEvent.id).where(WebhookEvent.created_at < cutoff).limit(batch)).all()
        if not ids:
            break
        session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)).execution_options(**NO_SYNC))
        removed += len(ids)
        if len(ids) < batch:
            break
    session.execute(update(Webhook).where(Webhook.previous_secret_expires_at <= now)
                    .values(previous_secret_encrypted=None, previous_secret_expires_at=None)
                    .execution_options(**NO_SYNC))
    return removed
