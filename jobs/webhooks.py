"""Webhook actors, all on the ``webhooks`` queue (the ``webhooks`` pool).

``fan_out`` turns an event into one delivery per subscribed endpoint; ``deliver`` makes one
attempt; ``dispatch_due`` (every 5 s) sends what the Postgres schedule says is due, including jobs
lost with a worker or with Redis; ``cleanup`` (hourly) keeps the delivery log to 30 days.
"""
import json

import dramatiq

from app.db import job_session
from app.webhooks import delivery, service
from config import settings
from workers.periodic import every

DISPATCH_BATCH = 500
DISPATCH_MAX_BATCHES = 10


@dramatiq.actor(actor_name="webhooks.fan_out", queue_name="webhooks", max_retries=10, min_backoff=500,
                max_backoff=60_000)
def fan_out(event_id: str) -> None:
    with job_session() as session:
        service.fan_out(session, event_id)


@dramatiq.actor(actor_name="webhooks.deliver", queue_name="webhooks", max_retries=5, min_backoff=1000,
                max_backoff=60_000, time_limit=int((3 * float(settings.WEBHOOK_TIMEOUT) + 60) * 1000))
def deliver(delivery_id: str, attempt: int, webhook_id: str | None = None) -> None:
    """Attempt ``attempt`` of a delivery to endpoint ``webhook_id``.

    First a slot among the endpoint's ``WEBHOOK_MAX_IN_FLIGHT`` (Redis only): without one, the job
    is parked and returns at once, freeing its thread; the attempt that releases a slot sends the
    longest-parked job again. No retry is used up. Then the HTTP request runs between two short
    transactions, never inside one; what happened is written whatever the endpoint did. Only our
    own failures (database, Redis) raise, and the retried job then finds the attempt claimed or
    not, as it was.
    """
    if webhook_id is None:  # a job sent before webhook ids travelled with it
        with job_session() as session:
            webhook_id = service.webhook_of(session, delivery_id)
        if webhook_id is None:
            return
    slot = delivery.acquire_slot(webhook_id, json.dumps([delivery_id, attempt, webhook_id]))
    if slot is None:
        return
    try:
        with job_session() as session:
            request = service.prepare_attempt(session, delivery_id, attempt)
        if request is not None:
            outcome = delivery.send(request.url, request.body, request.headers)
            with job_session() as session:
                service.record_attempt(session, request, outcome)
    finally:
        woken = delivery.release_slot(webhook_id, slot)
        if woken:
            deliver.send(*json.loads(woken))


@dramatiq.actor(actor_name="webhooks.dispatch_due", queue_name="webhooks", max_retries=0,
                time_limit=120_000)
def dispatch_due() -> None:
    for _ in range(DISPATCH_MAX_BATCHES):
        with job_session() as session:
            sent = service.dispatch_due(session, limit=DISPATCH_BATCH)
        if sent < DISPATCH_BATCH:
            break


@dramatiq.actor(actor_name="webhooks.cleanup", queue_name="webhooks", max_retries=0, time_limit=600_000)
def cleanup() -> None:
    with job_session() as session:
        service.cleanup(session)


every(5, "webhooks.dispatch_due")
every(3600, "webhooks.cleanup")
