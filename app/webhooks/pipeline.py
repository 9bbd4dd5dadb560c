"""The webhook delivery engine (the ``webhooks`` jobs): claiming due deliveries, preparing and
recording each attempt, disabling endpoints that keep failing, and cleaning up.

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
delivery; the attempt-token makes the occasional duplicate job harmless. The HTTP attempt itself
(timeouts, retry schedule, per-endpoint in-flight limit) is app/webhooks/delivery.py.
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from app import outbox
from app.audit.service import record
from app.clients.models import BanAlert
from app.db import new_id, rowcount, utcnow
from app.security import crypto, ssrf
from app.webhooks import delivery, signing
from app.webhooks.events import lease_end
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent

log = logging.getLogger(__name__)

D, A = WebhookDelivery, WebhookDeliveryAttempt
ACTIVE = ("pending", "delivering", "failed")
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


def iso(value: datetime | None) -> str | None:
    """A time as the API and the envelopes show it (ISO 8601, UTC)."""
    return value.astimezone(UTC).isoformat() if value else None


def dispatch_due(session: Session, *, now: datetime | None = None, limit: int = 500) -> int:
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
                        .values(next_attempt_at=lease_end(now), updated_at=now).execution_options(**NO_SYNC))
        outbox.enqueue_many(session, "webhooks.deliver", jobs)
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
    return {"id": event_id, "type": event_type, "created_at": iso(created_at), "organization_id": organization_id,
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


def prepare_attempt(session: Session, delivery_id: str, attempt: int, *,
                    now: datetime | None = None) -> DeliveryRequest | None:
    """Claim attempt ``attempt`` of a delivery and build its signed request; None when there is
    nothing to do (a duplicate or stale job, a disabled or deleted endpoint).

    ``session``: a Session, or a Connection in autocommit (the claim is one statement, atomic by
    itself: the delivery job runs it as its own transaction)."""
    now = now or utcnow()
    row = session.execute(_CLAIM, {"id": delivery_id, "attempt": attempt, "previous": attempt - 1, "now": now,
                                   "lease_end": lease_end(now)}).first()
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


def webhook_of(session: Session, delivery_id: str) -> str | None:
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


def record_attempt(session: Session, req: DeliveryRequest, outcome: delivery.Outcome, *, now: datetime | None = None,
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
    values: dict[str, Any] = {"last_status_code": outcome.status_code, "last_error": attempt_row["error"],
                              "updated_at": now}
    by_broker = False
    if delay is None:
        values.update(status="dead", next_attempt_at=None)
    else:
        due = now + timedelta(seconds=delay)
        by_broker = delay <= BROKER_CARRIES_S
        attempt_row["next_at"] = due
        values.update(status="failed", next_attempt_at=lease_end(due) if by_broker else due)
    updated = rowcount(session.execute(
        update(D).where(D.id == req.delivery_id, D.attempt == req.attempt, D.status == "delivering")
        .values(**values).execution_options(**NO_SYNC)))
    if not updated:  # redelivered, disabled or deleted meanwhile: log the attempt, schedule nothing
        attempt_row["next_at"] = None
    session.execute(text(_INSERT_ATTEMPT), attempt_row)
    if updated and by_broker:
        outbox.enqueue(session, "webhooks.deliver", req.delivery_id, req.attempt + 1, req.webhook_id,
                       delay_ms=max(1, int(delay * 1000)))
    if disable:
        disable_webhook(session, req.webhook_id, disable, now=now)
    return values["status"] if updated else "abandoned"


def abandon_pending(session: Session, webhook_id: str, reason: str, now: datetime) -> None:
    session.execute(update(D).where(D.webhook_id == webhook_id, D.status.in_(ACTIVE))
                    .values(status="dead", next_attempt_at=None, last_error=reason, updated_at=now)
                    .execution_options(**NO_SYNC))


def disable_webhook(session: Session, webhook_id: str, reason: str, *, now: datetime | None = None) -> bool:
    """The platform disables an endpoint (410 Gone, or failing for 5 days): its pending deliveries
    are abandoned, an alert is raised and the audit log says why. False if it already was."""
    now = now or utcnow()
    row = session.execute(
        update(Webhook).where(Webhook.id == webhook_id, Webhook.enabled.is_(True), Webhook.deleted_at.is_(None))
        .values(enabled=False, disabled_reason=reason, updated_at=now)
        .returning(Webhook.organization_id, Webhook.url, Webhook.failing_since, Webhook.consecutive_failures)
        .execution_options(**NO_SYNC)
    ).first()
    if row is None:
        return False
    abandon_pending(session, webhook_id, "the endpoint was disabled", now)
    message = DISABLE_MESSAGES.get(reason, reason)
    session.add(BanAlert(id=new_id("alr"), organization_id=row.organization_id, client_id=None, kind="webhook_disabled",
                         details={"webhook_id": webhook_id, "url": ssrf.redact_url(row.url), "reason": reason,
                                  "message": message, "failing_since": iso(row.failing_since),
                                  "consecutive_failures": row.consecutive_failures},
                         created_at=now))
    record(session, None, "webhook.disable", organization_id=row.organization_id, target_type="webhook",
           target_id=webhook_id, changes={"enabled": {"from": True, "to": False}, "reason": reason, "message": message})
    log.warning("webhook %s disabled: %s", webhook_id, message)
    return True


def cleanup(session: Session, *, now: datetime | None = None, batch: int = 5000, max_batches: int = 20) -> int:
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
