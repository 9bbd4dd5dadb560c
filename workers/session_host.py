"""Session hosts: the processes of the ``sessions`` pool, which own the stateful (web) sessions.

Each worker process of the pool is one host with an id (``<hostname>-<pid>-<random>``) and its own
queue ``sessions.<host_id>``, declared when the worker boots (``SessionHostMiddleware``). It
consumes the shared ``sessions`` queue (``sessions.start`` / ``stop`` / ``logout`` of any client)
and its own queue (``sessions.send`` for the clients it owns, and requests forwarded to it).

A client is leased by one host at a time through ``client_sessions`` (host_id, lease_expires_at,
heartbeat_at; times from the database clock): ``claim_lease`` takes it atomically when it is free,
expired or already ours; a lease thread renews this host's leases every
SESSION_HEARTBEAT_INTERVAL seconds for SESSION_LEASE_TTL seconds. A host that dies stops renewing,
so within SESSION_LEASE_TTL its leases expire; the lease thread of every live host looks for such
orphans (clients that should run but have no live lease) and enqueues ``sessions.start`` for them,
and whichever host takes that job claims the lease and restores the session from its saved login
state (no QR). A host that cannot renew for a whole TTL (database unreachable) closes its sessions
itself, so two hosts never drive one account.

The leases themselves are domain rules (app/clients/leases.py); this module runs the hosts.

Size: ``SessionHost`` is one host's whole life (start, stop, logout, send, take-over, lease
renewal, orphan adoption, shutdown hand-over), each step under the same per-client lock and
session table; split, every part would reach into the others' state.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import defaultdict

import dramatiq
from dramatiq.middleware import Middleware
from sqlalchemy import select

from app import outbox
from app.clients import hosting
from app.clients.hosting import HostSendOutcome, ShutdownOutcome, StartOutcome
from app.clients.info import client_info
from app.clients.leases import (
    HEARTBEAT_KIND,
    claim_lease,
    lease_owner,
    orphaned_clients,
    queue_for,
    release_lease,
    renew_leases,
)
from app.clients.models import Client
from app.clients.session_state import forget_session_state
from app.clients.statuses import ACTIVE_STATUSES, SHUT_STATUSES
from app.db import job_session
from app.kv import redis_client
from app.messages.dispatch import perform_send
from app.messages.models import Message
from app.messages.planning import resume_client
from app.messages.tracking import SEND_ACTOR
from app.queues import SESSIONS_QUEUE
from app.security.crypto import decrypt_bytes
from app.transports.base import TransientSendError
from config import settings
from workers.middleware import HeartbeatThread

log = logging.getLogger(__name__)

ADOPT_LOCK_PREFIX = "wa:sessions:adopt:"


def new_host_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{name}-{os.getpid()}-{secrets.token_hex(2)}"


# ----------------------------------------------------------------------------- memory

def memory_usage(pid: int | None = None) -> dict:
    """Resident memory of a process and all its descendants (Playwright's driver, Chromium)."""
    import psutil

    root = psutil.Process(pid or os.getpid())
    total, count = 0, 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
            count += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return {"rss_mb": round(total / 2 ** 20, 1), "processes": count}


# ----------------------------------------------------------------------------- sinks

class HostSink:
    """The platform's sink, plus a callback on the session's first ``ready``."""

    def __init__(self, inner, on_first_ready=None):
        self.inner, self.on_first_ready = inner, on_first_ready

    def status(self, client, status, detail=None, *, delay_ms: int = 0) -> None:
        self.inner.status(client, status, detail, delay_ms=delay_ms)
        if status == "ready" and self.on_first_ready is not None:
            callback, self.on_first_ready = self.on_first_ready, None
            callback()

    def ack(self, client, external_id, status, *, error=None, at=None, delay_ms: int = 0, message_id=None) -> None:
        self.inner.ack(client, external_id, status, error=error, at=at, delay_ms=delay_ms, message_id=message_id)

    def inbound(self, client, message, *, delay_ms: int = 0) -> None:
        self.inner.inbound(client, message, delay_ms=delay_ms)

    def session_state(self, client, state: bytes) -> None:
        self.inner.session_state(client, state)


class QuietSink:
    """Reports nothing: a session opened only to log it out."""

    def status(self, *args, **kwargs) -> None: ...
    def ack(self, *args, **kwargs) -> None: ...
    def inbound(self, *args, **kwargs) -> None: ...
    def session_state(self, *args, **kwargs) -> None: ...


# ----------------------------------------------------------------------------- the host

class SessionHost:
    """The live web sessions of this process, their leases, and what the ``sessions.*`` jobs do."""

    def __init__(self, host_id: str | None = None, *, runtime=None, sink=None):
        self.host_id = host_id or new_host_id()
        self.queue_name = queue_for(self.host_id)
        self._runtime = runtime
        self._sink = sink
        self.sessions: dict = {}  # client id -> WebTransport
        self._lock = threading.RLock()
        self._client_locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._stopped = threading.Event()
        self._lease_thread: threading.Thread | None = None
        self._status_thread: HeartbeatThread | None = None
        self._last_renewal = time.monotonic()

    # -- collaborators, created on first use (the browser starts with the first session)

    @property
    def runtime(self):
        if self._runtime is None:
            from app.transports.web_browser import default_runtime

            self._runtime = default_runtime()
        return self._runtime

    @property
    def sink(self):
        if self._sink is None:
            from app.inbox.service import InboxSink

            self._sink = InboxSink()
        return self._sink

    def _client_lock(self, client_id: str) -> threading.Lock:
        with self._lock:
            return self._client_locks[client_id]

    def live(self, client_id: str):
        """This host's session of the client, unless it ended (it may still be starting)."""
        transport = self.sessions.get(client_id)
        return transport if transport is not None and transport.state != "closed" else None

    # -- sessions.start / stop / logout

    def start_session(self, client_id: str) -> StartOutcome:
        """Run ``client_id``'s session here unless another live host does. Returns what happened:
        skipped, running, forwarded, started, failed."""

        with self._client_lock(client_id):
            with job_session() as session:
                client = session.get(Client, client_id)
                if client is None or client.deleted_at is not None or client.status not in ACTIVE_STATUSES:
                    return "skipped"
                claim = claim_lease(session, client.id, client.organization_id, self.host_id)
                if claim is None:
                    owner = lease_owner(session, client_id)
                    if owner and owner != self.host_id:
                        outbox.enqueue(session, "sessions.start", client_id, queue_name=queue_for(owner))
                        return "forwarded"
                    return "skipped"
                current = self.live(client_id)
                if current is not None:
                    current.report_current()
                    return "running"
                info = client_info(session, client)
                state = decrypt_bytes(claim.state_encrypted) if claim.state_encrypted else None
                was_ready = client.status == "ready"
            transport = self._new_transport(info, resume_on_ready=was_ready)
            with self._lock:
                stale = self.sessions.pop(client_id, None)
                self.sessions[client_id] = transport
            if stale is not None:
                self._close_quietly(stale)
            try:
                transport.start(state)
            except Exception as exc:
                from app.transports.web_browser import PermanentStartError

                log.warning("session host %s: client %s did not start: %s", self.host_id, client_id, exc)
                self._forget(client_id, transport)
                # a configuration that cannot work fails; anything else is retried by the reconnects
                status = "failed" if isinstance(exc, PermanentStartError) else "disconnected"
                self.sink.status(info, status, {"reason": f"WhatsApp Web did not open: {exc}"[:500]})
                return "failed"
            log.info("session host %s: client %s started%s", self.host_id, client_id,
                     " from its saved login" if state else "")
            return "started"

    def stop_session(self, client_id: str) -> ShutdownOutcome:
        """Close the session (keeping its login). skipped, forwarded, not_running, stopped."""
        return self._shutdown(client_id, "stop")

    def logout_session(self, client_id: str) -> ShutdownOutcome:
        """Log the account out and forget its saved login. skipped, forwarded, logged_out."""
        return self._shutdown(client_id, "logout")

    def _shutdown(self, client_id: str, verb: str) -> ShutdownOutcome:

        with self._client_lock(client_id):
            transport = self.sessions.get(client_id)
            offline_state, info = None, None
            with job_session() as session:
                client = session.get(Client, client_id)
                if client is None:
                    return "skipped"
                if client.deleted_at is None and client.status not in SHUT_STATUSES:
                    return "skipped"  # started again since the request
                if transport is None:
                    owner = lease_owner(session, client_id)
                    if owner and owner != self.host_id:
                        outbox.enqueue(session, f"sessions.{verb}", client_id, queue_name=queue_for(owner))
                        return "forwarded"
                    if verb == "logout":  # no live session anywhere: open one from the saved login to log out
                        claim = claim_lease(session, client.id, client.organization_id, self.host_id)
                        if claim is not None and claim.state_encrypted:
                            offline_state, info = decrypt_bytes(claim.state_encrypted), client_info(session, client)
                    if offline_state is None:
                        release_lease(session, client_id, self.host_id)
                        if verb == "logout":
                            forget_session_state(session, client_id)
                        return "not_running" if verb == "stop" else "logged_out"
            if transport is None:
                transport = self._new_transport(info, sink=QuietSink())
                try:
                    transport.start(offline_state)
                    transport.wait_settled(settings.WEB_NAV_TIMEOUT)
                except Exception:
                    log.warning("session host %s: could not open client %s to log it out", self.host_id, client_id,
                                exc_info=True)
            try:
                if verb == "stop":
                    transport.stop()
                else:
                    transport.logout()
            except Exception:
                log.warning("session host %s: %s of client %s failed", self.host_id, verb, client_id, exc_info=True)
                self._close_quietly(transport)
            with self._lock:
                if self.sessions.get(client_id) is transport:
                    del self.sessions[client_id]
            with job_session() as session:
                release_lease(session, client_id, self.host_id)
                if verb == "logout":
                    forget_session_state(session, client_id)
            return "stopped" if verb == "stop" else "logged_out"

    # -- sessions.send

    def transport_for(self, client_id: str):
        """``perform_send``'s transport lookup: this host's live session of the client."""

        transport = self.live(client_id)
        if transport is None:
            raise TransientSendError("the web session is not live on this host", code="session_not_running")
        return transport

    def send(self, message_id: str) -> HostSendOutcome:
        """``sessions.send``: send through the live session, or hand the message back to
        ``messages.send`` (which routes it to the current owner, or holds it) when it is not here."""

        with job_session() as session:
            client_id = session.scalar(select(Message.client_id).where(Message.id == message_id))
            if client_id is None:
                return "missing"
            if self.live(client_id) is None:
                release_lease(session, client_id, self.host_id)  # so the message is not routed back here
                outbox.enqueue(session, SEND_ACTOR, message_id)
                return "rerouted"

        return perform_send(message_id, self.transport_for)

    # -- transports

    def _new_transport(self, info, *, sink=None, resume_on_ready: bool = False):
        from app.transports.web import WebTransport

        on_ready = (lambda: self._resume(info.id)) if resume_on_ready else None
        return WebTransport(info, sink or HostSink(self.sink, on_ready), runtime=self.runtime,
                            on_closed=self._session_ended)

    def _resume(self, client_id: str) -> None:
        """A session taken over while the client stayed ``ready``: messages that waited for it
        (or sat in the old host's queue) are sent on (contract 5)."""
        try:
            with job_session() as session:
                resume_client(session, client_id)
        except Exception:
            log.warning("session host %s: resuming the messages of %s failed", self.host_id, client_id, exc_info=True)

    def _session_ended(self, transport) -> None:
        """The transport closed by itself (logged out, banned, QR timeout, crash): give up the lease."""
        self._forget(transport.client.id, transport)

    def _forget(self, client_id: str, transport) -> None:

        with self._lock:
            if self.sessions.get(client_id) is transport:
                del self.sessions[client_id]
        try:
            with job_session() as session:
                release_lease(session, client_id, self.host_id)
        except Exception:
            log.warning("session host %s: could not release the lease of %s", self.host_id, client_id, exc_info=True)

    def _close_quietly(self, transport) -> None:
        try:
            transport.close()
        except Exception:
            log.warning("session host %s: closing a session failed", self.host_id, exc_info=True)

    # -- the lease thread

    def renew(self) -> None:
        """One round of the lease thread: renew, drop sessions another host took, adopt orphans."""

        with self._lock:
            held = dict(self.sessions)
        try:
            with job_session() as session:
                kept = renew_leases(session, self.host_id, held)
            self._last_renewal = time.monotonic()
        except Exception:
            log.warning("session host %s: lease renewal failed", self.host_id, exc_info=True)
            if time.monotonic() - self._last_renewal > settings.SESSION_LEASE_TTL:
                log.error("session host %s: no lease renewal for %ss; closing every session", self.host_id,
                          settings.SESSION_LEASE_TTL)
                kept = set()
            else:
                return
        for client_id, transport in held.items():
            if client_id not in kept:
                log.warning("session host %s: lost the lease of %s; closing its session here", self.host_id, client_id)
                with self._lock:
                    if self.sessions.get(client_id) is transport:
                        del self.sessions[client_id]
                self._close_quietly(transport)
        self.adopt_orphans()

    def adopt_orphans(self) -> list[str]:
        """Enqueue ``sessions.start`` (shared queue: any host may take it) for every web client
        that should run but has no live lease; once per client per lease period."""

        try:
            r = redis_client()
            adopted = []
            with job_session() as session:
                for client_id in orphaned_clients(session):
                    if r.set(ADOPT_LOCK_PREFIX + client_id, self.host_id, nx=True,
                             ex=max(1, settings.SESSION_LEASE_TTL)):
                        outbox.enqueue(session, "sessions.start", client_id, queue_name=SESSIONS_QUEUE)
                        adopted.append(client_id)
            if adopted:
                log.info("session host %s: restarting orphaned sessions %s", self.host_id, adopted)
            return adopted
        except Exception:
            log.warning("session host %s: orphan check failed", self.host_id, exc_info=True)
            return []

    def _lease_loop(self) -> None:
        while not self._stopped.wait(settings.SESSION_HEARTBEAT_INTERVAL):
            try:
                self.renew()
            except Exception:
                log.exception("session host %s: lease round failed", self.host_id)

    def status_info(self) -> dict:
        """What ``python -m workers status`` shows of this host."""
        with self._lock:
            sessions = [{"client_id": cid, "state": t.state, "phone": t.phone}
                        for cid, t in sorted(self.sessions.items())]
        return {"host_id": self.host_id, "queue": self.queue_name, "sessions": sessions,
                "browser": self._runtime is not None and self._runtime.browser_running(), **memory_usage()}

    def start_background(self) -> None:
        self._stopped.clear()
        self._lease_thread = threading.Thread(target=self._lease_loop, name=f"leases-{self.host_id}", daemon=True)
        self._lease_thread.start()
        self._status_thread = HeartbeatThread(redis_client(), HEARTBEAT_KIND, self.host_id, extra=self.status_info)
        self._status_thread.beat()
        self._status_thread.start()
        self.adopt_orphans()

    def stop_background(self) -> None:
        self._stopped.set()
        if self._status_thread is not None:
            self._status_thread.stop()

    def shutdown(self) -> None:
        """Worker shutdown: save and close every session, release the leases (another host takes
        the sessions over at once), close the browser."""

        self.stop_background()
        with self._lock:
            held, self.sessions = dict(self.sessions), {}
        if held:
            from app.transports.web import stop_all

            try:
                stop_all(held.values())
            except Exception:
                log.warning("session host %s: stopping its sessions failed", self.host_id, exc_info=True)
            try:
                with job_session() as session:
                    for client_id in held:
                        release_lease(session, client_id, self.host_id)
            except Exception:
                log.warning("session host %s: releasing leases failed", self.host_id, exc_info=True)
        if self._runtime is not None:
            self._runtime.close()


# ----------------------------------------------------------------------------- this process's host

_host: SessionHost | None = None
_host_lock = threading.Lock()


def current_host() -> SessionHost:
    """This process's session host (created on first use)."""
    global _host
    with _host_lock:
        if _host is None:
            _host = SessionHost()
        return _host


class SessionHostMiddleware(Middleware):
    """In a ``sessions`` pool worker: create the host, consume its own queue ``sessions.<host_id>``
    besides the pool's queues, run its lease thread; at shutdown hand its sessions over."""

    def after_worker_boot(self, broker, worker):
        host = current_host()
        if worker.consumer_whitelist:
            worker.consumer_whitelist.add(host.queue_name)
        broker.declare_queue(host.queue_name)  # the worker adds a consumer for every declared queue
        host.start_background()
        log.info("session host %s consuming %s", host.host_id, host.queue_name)

    def before_worker_shutdown(self, broker, worker):
        if _host is not None:
            _host.stop_background()

    def after_worker_shutdown(self, broker, worker):
        if _host is not None:
            _host.shutdown()


def install(broker: dramatiq.Broker) -> None:
    """Make this process a session host (``workers.worker.setup`` in the ``sessions`` pool): the
    ``sessions.*`` jobs find it through ``app.clients.hosting``, and the middleware runs it."""
    hosting.install(current_host)
    if not any(isinstance(m, SessionHostMiddleware) for m in broker.middleware):
        broker.add_middleware(SessionHostMiddleware())
