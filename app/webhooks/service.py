"""Webhook endpoints and their delivery log: what the API does (create, update, rotate the secret,
send a test, list attempts, redeliver). Events and their fan-out into deliveries are
app/webhooks/events.py; the delivery engine the ``webhooks`` jobs run is app/webhooks/pipeline.py.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import outbox
from app.audit.service import diff, record
from app.db import get_scoped, new_id, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.pagination import decode_cursor, encode_cursor, paginate
from app.security import crypto, ssrf
from app.security.principal import Principal
from app.webhooks import pipeline, signing
from app.webhooks.events import _MEMO, EVENT_TYPES, TEST_EVENT, WILDCARD, emit, lease_end
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent
from app.webhooks.pipeline import iso

log = logging.getLogger(__name__)

D, A = WebhookDelivery, WebhookDeliveryAttempt
MAX_WEBHOOKS_PER_ORG = 50
PREVIOUS_SECRET_TTL = timedelta(hours=24)


def _forget_subscriptions(session: Session) -> None:
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


def create_webhook(session: Session, principal: Principal, *, url: str, events: list[str],
                   description: str | None = None) -> dict:
    """A new endpoint; the answer carries its secret, which is never shown again."""
    url, events = _check_url(url), _check_events(events)
    count = session.scalar(select(func.count())
                           .select_from(scoped_select(Webhook, principal.organization_id).subquery()))
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


def list_webhooks(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                  enabled: bool | None = None) -> dict:
    stmt = scoped_select(Webhook, principal.organization_id)
    if enabled is not None:
        stmt = stmt.where(Webhook.enabled.is_(enabled))
    return paginate(session, stmt, Webhook.id, limit=limit, cursor=cursor)


def get_webhook(session: Session, principal: Principal, webhook_id: str) -> Webhook:
    return get_scoped(session, Webhook, principal.organization_id, webhook_id)


def update_webhook(session: Session, principal: Principal, webhook_id: str, **fields) -> Webhook:
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
            pipeline.abandon_pending(session, hook.id, "the endpoint was disabled", now)
    if "url" in changes:
        changes["url"] = {"from": ssrf.redact_url(changes["url"]["from"]), "to": ssrf.redact_url(changes["url"]["to"])}
    hook.updated_at = now
    session.flush()
    _forget_subscriptions(session)
    record(session, principal, "webhook.update", target_type="webhook", target_id=hook.id, changes=changes)
    return hook


def delete_webhook(session: Session, principal: Principal, webhook_id: str) -> None:
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id, for_update=True)
    now = utcnow()
    hook.deleted_at = hook.updated_at = now
    hook.previous_secret_encrypted = hook.previous_secret_expires_at = None
    pipeline.abandon_pending(session, hook.id, "the endpoint was deleted", now)
    session.flush()
    _forget_subscriptions(session)
    record(session, principal, "webhook.delete", target_type="webhook", target_id=hook.id,
           changes={"url": ssrf.redact_url(hook.url), "events": list(hook.events)})


def rotate_secret(session: Session, principal: Principal, webhook_id: str, *, now: datetime | None = None) -> dict:
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
           changes={"previous_secret_expires_at": iso(hook.previous_secret_expires_at)})
    return _public(hook, secret)


def send_test(session: Session, principal: Principal, webhook_id: str) -> dict:
    """A ``webhook.test`` event, delivered to this endpoint only."""
    hook = get_scoped(session, Webhook, principal.organization_id, webhook_id)
    if not hook.enabled:
        raise Conflict("The endpoint is disabled; enable it to send a test event", code="webhook_disabled")
    event = emit(session, principal.organization_id, TEST_EVENT, {
        "webhook_id": hook.id, "message": "A test event from WhatsApp Service: your endpoint is reachable."})
    now = utcnow()
    row = WebhookDelivery(id=new_id("dlv"), organization_id=hook.organization_id, event_id=event.id,
                          webhook_id=hook.id, status="pending", attempt=0, next_attempt_at=lease_end(now),
                          created_at=now, updated_at=now)
    session.add(row)
    session.flush()
    outbox.enqueue(session, "webhooks.deliver", row.id, 1, hook.id)
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


def list_attempts(session: Session, principal: Principal, webhook_id: str, *, limit: int, cursor: str | None = None,
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


def _delivery_view(session: Session, row: WebhookDelivery) -> dict:
    event_type = session.scalar(select(WebhookEvent.type).where(WebhookEvent.id == row.event_id))
    attempts = session.execute(_attempts_select().where(A.delivery_id == row.id).order_by(A.id).limit(100)).all()
    items = [_attempt_item(a, ev_id, ev_type) for a, ev_id, ev_type in attempts]
    next_at = items[-1]["next_attempt_at"] if row.status == "failed" and items else None
    return {"id": row.id, "webhook_id": row.webhook_id, "event_id": row.event_id, "event_type": event_type,
            "status": row.status, "attempt": row.attempt, "next_attempt_at": next_at,
            "last_status_code": row.last_status_code, "last_error": row.last_error, "delivered_at": row.delivered_at,
            "created_at": row.created_at, "updated_at": row.updated_at, "attempts": items}


def _scoped_delivery(session: Session, principal: Principal, delivery_id: str, *,
                     for_update: bool = False) -> WebhookDelivery:
    """A delivery of the organisation whose endpoint still exists (else 404)."""
    row = get_scoped(session, WebhookDelivery, principal.organization_id, delivery_id, for_update=for_update)
    if session.scalar(select(Webhook.deleted_at.is_(None)).where(Webhook.id == row.webhook_id)) is not True:
        raise NotFound("webhookdelivery not found")
    return row


def get_delivery(session: Session, principal: Principal, delivery_id: str) -> dict:
    return _delivery_view(session, _scoped_delivery(session, principal, delivery_id))


def redeliver(session: Session, principal: Principal, delivery_id: str, *, now: datetime | None = None) -> dict:
    """Deliver an event to the endpoint again, now, with a fresh retry schedule."""
    row = _scoped_delivery(session, principal, delivery_id, for_update=True)
    hook = session.get(Webhook, row.webhook_id)
    if not hook.enabled:
        raise Conflict("The endpoint is disabled; enable it before redelivering", code="webhook_disabled")
    now = now or utcnow()
    if row.status == "delivering" and row.next_attempt_at and row.next_attempt_at > now:
        raise Conflict("An attempt of this delivery is under way; try again in a moment", code="delivery_in_progress")
    previous = row.status
    row.status, row.attempt, row.next_attempt_at = "pending", 0, lease_end(now)
    row.last_error = row.last_status_code = row.delivered_at = None
    row.updated_at = now
    session.flush()
    outbox.enqueue(session, "webhooks.deliver", row.id, 1, row.webhook_id)
    record(session, principal, "webhook_delivery.redeliver", target_type="webhook_delivery", target_id=row.id,
           changes={"webhook_id": row.webhook_id, "event_id": row.event_id, "previous_status": previous})
    return _delivery_view(session, row)


