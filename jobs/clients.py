"""Client lifecycle jobs, and the jobs transport reports become (app/inbox/apply.py).

``clients.start`` / ``stop`` / ``logout`` run stateless transports (sim, cloud) right here and
forward web clients to their session host (``sessions.<verb>`` on queue "sessions"). Transport
calls happen after the status is committed, so the reports they trigger (``clients.on_status``,
which may run at once on another thread) find it.
"""
from __future__ import annotations

import base64
import logging

from app.clients import lifecycle, proxy_service, session_state
from app.db import job_session
from app.inbox.service import InboxSink
from app.queues import actor
from app.transports import transport_class
from config import settings
from jobs.periodic import every

log = logging.getLogger(__name__)


def _transport(info, sink=None):
    return transport_class(info.transport)(info, sink or InboxSink())


@actor("clients.start", max_retries=3)
def start(client_id: str) -> None:
    """Connect a client that is ``starting`` (API start) or ``disconnected`` (a reconnect attempt)."""
    with job_session() as session:
        info = lifecycle.begin_start(session, client_id)
    if info is None:
        return
    sink = InboxSink()
    try:
        with sink.batch():  # a start's reports (the sim's QR rotations) in one transaction
            _transport(info, sink).start()
    except Exception as exc:  # a transport that cannot even begin: the client failed, no retry
        log.exception("client %s: transport start failed", client_id)
        with job_session() as session:
            lifecycle.record_status(session, client_id, "failed", {"reason": f"start failed: {exc}"[:500]})


def _shutdown(client_id: str, verb: str) -> None:
    with job_session() as session:
        info = lifecycle.begin_shutdown(session, client_id, verb)
    if info is not None:
        getattr(_transport(info), verb)()


@actor("clients.stop", max_retries=3)
def stop(client_id: str) -> None:
    """Close the transport session of a stopped client, keeping its login."""
    _shutdown(client_id, "stop")


@actor("clients.logout", max_retries=3)
def logout(client_id: str) -> None:
    """Log a stopped (or deleted) client's account out."""
    _shutdown(client_id, "logout")


@actor("clients.on_status")
def on_status(client_id: str, status: str, detail: dict | None = None) -> None:
    """A transport reported a status (qr, ready, ...). Reports are inbox.apply jobs now; this one
    serves jobs sent before the upgrade."""
    with job_session() as session:
        lifecycle.record_status(session, client_id, status, detail or {})


@actor("clients.save_session_state")
def save_session_state(client_id: str, state_b64: str) -> None:
    """A stateful transport's login state, stored encrypted (client_sessions.state_encrypted).
    The sink stores it at once now; this job serves jobs sent before the upgrade."""
    with job_session() as session:
        session_state.save_session_state(session, client_id, base64.b64decode(state_b64))


@actor("clients.check_proxies", max_retries=0)
def check_proxies() -> None:
    """Periodic: a ``clients.check_proxy`` job for every proxy."""
    with job_session() as session:
        proxy_service.enqueue_checks(session)


@actor("clients.check_proxy", max_retries=0)
def check_proxy(proxy_id: str) -> None:
    """Open a tunnel through one proxy; mark it ok, failing or dead (with a proxy_dead alert)."""
    with job_session() as session:
        info = proxy_service.proxy_to_check(session, proxy_id)
    if info is None:
        return
    error = proxy_service.probe(info)  # outside any transaction: it may take PROXY_CHECK_TIMEOUT
    with job_session() as session:
        proxy_service.record_check(session, proxy_id, error)


every(settings.PROXY_CHECK_INTERVAL, "clients.check_proxies")
