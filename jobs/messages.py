"""Actors of the message pipeline (app/messages/ holds the logic)."""
import logging

import dramatiq
from dramatiq.middleware import CurrentMessage

from app.db import job_session
from app.messages import batches, dispatch, inbound, planning, sweeper, tracking
from app.queues import actor
from app.transports.base import TransientSendError
from config import settings
from jobs.periodic import every

log = logging.getLogger(__name__)

#: an ack may overtake the recording of its send; retried this often (250 ms doubling) before dropped
ACK_RETRIES = 6


@actor("messages.send", max_retries=settings.MESSAGE_MAX_ATTEMPTS + 2, min_backoff=1000, max_backoff=60_000)
def send(message_id: str) -> None:
    """Pace, claim and send one message (or hold it, or hand it to its session host)."""
    try:
        dispatch.run_send_job(message_id)
    except TransientSendError as exc:
        # the message is queued again: retry with backoff (the row counts attempts, not the broker)
        raise dramatiq.Retry(f"{exc.code}: {exc}", delay=exc.retry_after_ms) from exc


@actor(planning.SEND_DUE_ACTOR, max_retries=5, min_backoff=1000, max_backoff=30_000)
def send_due(client_id: str) -> None:
    """Send a client's waiting messages in batches (clients that are not paced; app/messages/batches.py)."""
    batches.run_send_due(client_id)


@actor("messages.on_ack", max_retries=ACK_RETRIES + 1)
def on_ack(client_id: str, external_id: str, status: str, error=None, at_iso=None) -> None:
    """A transport's delivery report (sent / delivered / read / failed) for a message it sent.
    Reports are inbox.apply jobs now; this one serves jobs sent before the upgrade."""
    with job_session() as session:
        found = tracking.apply_ack(session, client_id, external_id, status, error, tracking.parse_time(at_iso))
    if found is None:
        retries = CurrentMessage.get_current_message().options.get("retries", 0)
        if retries >= ACK_RETRIES:
            log.info("ack %s of %s matches no message of client %s; dropped", status, external_id, client_id)
            return
        raise dramatiq.Retry("the ack overtook its send", delay=250 * 2 ** retries)


@actor("messages.on_inbound", max_retries=5, min_backoff=1000)
def on_inbound(client_id: str, payload: dict) -> None:
    """A contact wrote to a client: store it once, update the contact, handle STOP / START.
    Reports are inbox.apply jobs now; this one serves jobs sent before the upgrade."""
    with job_session() as session:
        inbound.receive_inbound(session, client_id, payload)


@actor("messages.reconcile", max_retries=8, min_backoff=5000, max_backoff=300_000)
def reconcile(message_id: str) -> None:
    """Ask the transport whether an ``unknown`` message went out, and record the truth."""
    sweeper.reconcile(message_id)


@actor("messages.sweep", max_retries=0)
def sweep() -> None:
    """Interrupted sends, unknown ones to ask about, lost jobs, expired idempotency keys
    (app/messages/sweeper.py)."""
    with job_session() as session:
        sweeper.sweep(session)


@actor("messages.release_parked", max_retries=0)
def release_parked() -> None:
    """Move messages due soon from the parking lot into the broker (app/messages/planning.py)."""
    planning.release_parked()


every(settings.MESSAGE_SWEEP_EVERY, "messages.sweep")
every(max(1, settings.MESSAGE_PARK_AFTER // 4), "messages.release_parked")
