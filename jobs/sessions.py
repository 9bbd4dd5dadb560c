"""Session-host actors: the stateful (web) sessions of the ``sessions`` pool.

``sessions.start`` / ``stop`` / ``logout`` come on the shared queue "sessions" (from
``clients.start`` & co., and from the orphan adoption of live hosts); the host that takes one
claims the client's lease or forwards the request to the live owner's queue. ``sessions.send``
comes on the owning host's own queue ``sessions.<host_id>`` (``messages.send`` routes it there via
``app.clients.leases.host_queue``). The host is the sessions pool's runtime
(workers/session_host.py), reached through ``app.clients.hosting``.
"""
from __future__ import annotations

import logging

import dramatiq

from app.clients import leases
from app.clients.hosting import current_host
from app.kv import redis_client
from app.queues import actor
from app.transports.base import TransientSendError
from config import settings
from jobs.periodic import every

log = logging.getLogger(__name__)


@actor("sessions.start", max_retries=3)
def start(client_id: str) -> None:
    """Run a web client's session on this host (restoring its saved login), unless a live host does."""
    outcome = current_host().start_session(client_id)
    log.info("sessions.start %s: %s", client_id, outcome)


@actor("sessions.stop", max_retries=3)
def stop(client_id: str) -> None:
    """Close a stopped web client's session, keeping its login."""
    outcome = current_host().stop_session(client_id)
    log.info("sessions.stop %s: %s", client_id, outcome)


@actor("sessions.logout", max_retries=3)
def logout(client_id: str) -> None:
    """Log a web client's account out and forget its saved login."""
    outcome = current_host().logout_session(client_id)
    log.info("sessions.logout %s: %s", client_id, outcome)


@actor("sessions.send", max_retries=settings.MESSAGE_MAX_ATTEMPTS + 2,
                min_backoff=1000, max_backoff=60_000)
def send(message_id: str) -> None:
    """Send one message through this host's live session (enqueued on ``sessions.<host_id>``)."""
    try:
        current_host().send(message_id)
    except TransientSendError as exc:
        # perform_send put the message back to queued: the retry paces it again (messages.send)
        raise dramatiq.Retry(f"{exc.code}: {exc}", delay=exc.retry_after_ms) from exc


@actor("sessions.reap_dead_host_queues", max_retries=0)
def reap_dead_host_queues() -> None:
    """Jobs left in a dead host's own queue go to the shared ``sessions`` queue."""
    leases.reap_dead_host_queues(redis_client())


every(30, "sessions.reap_dead_host_queues")
