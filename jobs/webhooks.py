"""Webhook actors, all on the ``webhooks`` queue (the ``webhooks`` pool).

``fan_out`` turns an event into one delivery per subscribed endpoint; ``deliver`` makes one
attempt; ``dispatch_due`` (every 5 s) sends what the Postgres schedule says is due, including jobs
lost with a worker or with Redis; ``cleanup`` (hourly) keeps the delivery log to 30 days.
"""
import json
import time

from app.db import job_session, one_statement
from app.queues import actor
from app.system import counters
from app.webhooks import delivery, pipeline
from app.webhooks import events as webhook_events
from config import settings
from jobs.periodic import every

DISPATCH_BATCH = 500
DISPATCH_MAX_BATCHES = 10


@actor("webhooks.fan_out", max_retries=10, min_backoff=500,
                max_backoff=60_000)
def fan_out(event_id: str) -> None:
    with job_session() as session:
        webhook_events.fan_out(session, event_id)


#: a thread that finished an attempt runs the endpoint's next parked job itself (the slot passes
#: straight to it), at most this many times or for this long, then hands over through the broker
CHAIN_MAX = 100
CHAIN_SECONDS = 5.0


@actor("webhooks.deliver", max_retries=5, min_backoff=1000, max_backoff=60_000,
       time_limit=int((3 * settings.WEBHOOK_TIMEOUT + 60) * 1000))
def deliver(delivery_id: str, attempt: int, webhook_id: str | None = None) -> None:
    """Attempt ``attempt`` of a delivery to endpoint ``webhook_id``.

    First a slot among the endpoint's ``WEBHOOK_MAX_IN_FLIGHT`` (Redis only): without one, the job
    is parked and returns at once, freeing its thread. With one: the attempt (``attempt_once``),
    then the slot passes to the endpoint's longest-parked job, which this thread runs next (up to
    ``CHAIN_MAX`` jobs or ``CHAIN_SECONDS``; then the slot is released and that job goes back
    through the broker). No retry is used up by waiting. Only our own failures (database, Redis)
    raise; the retried job then finds the attempt claimed or not, as it was (no pre-ping: a
    connection broken since its last use fails the job once, and the retry gets a new one).
    """
    if webhook_id is None:  # a job sent before webhook ids travelled with it
        with job_session() as session:
            webhook_id = pipeline.webhook_of(session, delivery_id)
        if webhook_id is None:
            return
    slot = delivery.acquire_slot(webhook_id, json.dumps([delivery_id, attempt, webhook_id]))
    if slot is None:
        return
    started, chained = time.monotonic(), 0
    job = None  # a parked job this thread took over, until its attempt is done
    try:
        attempt_once(delivery_id, attempt)
        while chained < CHAIN_MAX and time.monotonic() - started < CHAIN_SECONDS:
            woken = delivery.pass_slot(webhook_id, slot)
            if woken is None:
                slot = None  # released: nobody was waiting
                return
            job = json.loads(woken)
            chained += 1
            attempt_once(job[0], job[1])
            job = None
    except BaseException:
        if job is not None:  # its wake-up is not lost with this job's failure
            deliver.send(*job)
        raise
    finally:
        if slot is not None:
            woken = delivery.release_slot(webhook_id, slot)
            if woken:
                deliver.send(*json.loads(woken))


def attempt_once(delivery_id: str, attempt: int) -> str | None:
    """Claim, send, record: the HTTP request runs between two statements, never inside a
    transaction. Returns the delivery's new status (None: nothing to do)."""
    with one_statement() as conn:
        request = pipeline.prepare_attempt(conn, delivery_id, attempt)
    if request is None:
        return None
    if request.unsendable:
        outcome = delivery.Outcome(error=request.unsendable)
    else:
        outcome = delivery.send(request.url, request.body, request.headers)
        counters.observe("wa_webhook_attempt_duration_seconds", outcome.duration_ms / 1000, outcome=outcome.kind)
    counters.inc("wa_webhook_attempts_total", outcome=outcome.kind)
    if outcome.success:
        with one_statement() as conn:
            return pipeline.record_attempt(conn, request, outcome)
    with job_session() as session:
        return pipeline.record_attempt(session, request, outcome)


@actor("webhooks.dispatch_due", max_retries=0,
                time_limit=120_000)
def dispatch_due() -> None:
    for _ in range(DISPATCH_MAX_BATCHES):
        with job_session() as session:
            sent = pipeline.dispatch_due(session, limit=DISPATCH_BATCH)
        if sent < DISPATCH_BATCH:
            break


@actor("webhooks.cleanup", max_retries=0, time_limit=600_000)
def cleanup() -> None:
    with job_session() as session:
        pipeline.cleanup(session)


every(5, "webhooks.dispatch_due")
every(3600, "webhooks.cleanup")
