"""Session-host actors: the stateful (web) sessions of the ``sessions`` pool.

``sessions.start`` / ``stop`` / ``logout`` come on the shared queue "sessions" (from
``clients.start`` & co., and from the orphan adoption of live hosts); the host that takes one
claims the client's lease or forwards the request to the live owner's queue. ``sessions.send``
comes on the owning host's own queue ``sessions.<host_id>`` (``messages.send`` routes it there via
``workers.session_host.host_queue``). workers/session_host.py holds the logic.
"""
from __future__ import annotations

import logging

import dramatiq

from app.transports.base import TransientSendError
from config import settings
from workers.broker import get_broker
from workers.periodic import every
from workers.session_host import SESSIONS_QUEUE, SessionHostMiddleware, current_host

log = logging.getLogger(__name__)


@dramatiq.actor(actor_name="sessions.start", queue_name=SESSIONS_QUEUE, max_retries=3)
def start(client_id: str) -> None:
    """Run a web client's session on this host (restoring its saved login), unless a live host does."""
    outcome = current_host().start_session(client_id)
    log.info("sessions.start %s: %s", client_id, outcome)


@dramatiq.actor(actor_name="sessions.stop", queue_name=SESSIONS_QUEUE, max_retries=3)
def stop(client_id: str) -> None:
    """Close a stopped web client's session, keeping its login."""
    outcome = current_host().stop_session(client_id)
    log.info("sessions.stop %s: %s", client_id, outcome)


@dramatiq.actor(actor_name="sessions.logout", queue_name=SESSIONS_QUEUE, max_retries=3)
def logout(client_id: str) -> None:
    """Log a web client's account out and forget its saved login."""
    outcome = current_host().logout_session(client_id)
    log.info("sessions.logout %s: %s", client_id, outcome)


@dramatiq.actor(actor_name="sessions.send", queue_name=SESSIONS_QUEUE, max_retries=settings.MESSAGE_MAX_ATTEMPTS + 2,
                min_backoff=1000, max_backoff=60_000)
def send(message_id: str) -> None:
    """Send one message through this host's live session (enqueued on ``sessions.<host_id>``)."""
    try:
        current_host().send(message_id)
    except TransientSendError as exc:
        # perform_send put the message back to queued: the retry paces it again (messages.send)
        raise dramatiq.Retry(f"{exc.code}: {exc}", delay=exc.retry_after_ms) from exc


@dramatiq.actor(actor_name="sessions.reap_dead_host_queues", queue_name="default", max_retries=0)
def reap_dead_host_queues() -> None:
    """Jobs left in a dead host's own queue go to the shared ``sessions`` queue (session_host.py)."""
    from app.kv import redis_client
    from workers import session_host

    session_host.reap_dead_host_queues(redis_client())


every(30, "sessions.reap_dead_host_queues")


def _install_middleware() -> None:
    broker = get_broker()
    if not any(isinstance(m, SessionHostMiddleware) for m in broker.middleware):
        broker.add_middleware(SessionHostMiddleware())


_install_middleware()
