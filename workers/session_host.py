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

``host_queue(session, client_id)`` tells the message pipeline where a web client's sends go: the
live owner's queue, or None (the message waits until the client is ready again).
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
from dataclasses import dataclass

from dramatiq.middleware import Middleware
from sqlalchemy import select, text

from config import settings

log = logging.getLogger(__name__)

SESSIONS_QUEUE = "sessions"
HOST_QUEUE_PREFIX = "sessions."
#: client statuses in which a web session should be running somewhere
ACTIVE_STATUSES = ("starting", "qr", "ready")
#: statuses in which a stop/logout request still applies (anything else: started again since)
SHUT_STATUSES = ("stopped", "failed", "banned")
ADOPT_LOCK_PREFIX = "wa:sessions:adopt:"
HEARTBEAT_KIND = "session_host"


def new_host_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{name}-{os.getpid()}-{secrets.token_hex(2)}"


def queue_for(host_id: str) -> str:
    return HOST_QUEUE_PREFIX + host_id


# ----------------------------------------------------------------------------- leases (client_sessions)

@dataclass(frozen=True)
class Claim:
    previous_host: str | None
    state_encrypted: str | None


_CLAIM = text("""
    WITH old AS (SELECT client_id, host_id FROM client_sessions WHERE client_id = :client_id FOR UPDATE)
    UPDATE client_sessions cs
       SET host_id = :host_id, lease_expires_at = now() + make_interval(secs => :ttl),
           heartbeat_at = now(), updated_at = now()
      FROM old
     WHERE cs.client_id = old.client_id
       AND (old.host_id IS NULL OR old.host_id = :host_id OR cs.lease_expires_at IS NULL OR cs.lease_expires_at < now())
    RETURNING old.host_id AS previous_host, cs.state_encrypted
""")


def claim_lease(session, client_id: str, organization_id: str, host_id: str,
                ttl_s: float | None = None) -> Claim | None:
    """Take the lease of ``client_id`` for ``host_id`` when nobody holds it, it expired, or it is
    ours already; None when another host holds a live lease."""
    from sqlalchemy.dialects.postgresql import insert

    from app.clients.models import ClientSession

    session.execute(insert(ClientSession).values(client_id=client_id, organization_id=organization_id)
                    .on_conflict_do_nothing(index_elements=[ClientSession.client_id]))
    row = session.execute(_CLAIM, {"client_id": client_id, "host_id": host_id,
                                   "ttl": float(ttl_s or settings.SESSION_LEASE_TTL)}).first()
    return Claim(row.previous_host, row.state_encrypted) if row is not None else None


def renew_leases(session, host_id: str, client_ids, ttl_s: float | None = None) -> set[str]:
    """Extend this host's leases; returns the clients it still holds (the others were taken)."""
    ids = sorted(client_ids)
    if not ids:
        return set()
    rows = session.execute(text("""
        UPDATE client_sessions SET lease_expires_at = now() + make_interval(secs => :ttl), heartbeat_at = now()
         WHERE host_id = :host_id AND client_id = ANY(:ids)
        RETURNING client_id"""), {"host_id": host_id, "ids": ids, "ttl": float(ttl_s or settings.SESSION_LEASE_TTL)})
    return {r.client_id for r in rows}


def release_lease(session, client_id: str, host_id: str) -> bool:
    result = session.execute(text("""
        UPDATE client_sessions SET host_id = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE client_id = :client_id AND host_id = :host_id"""), {"client_id": client_id, "host_id": host_id})
    return result.rowcount > 0


def lease_owner(session, client_id: str) -> str | None:
    """The host holding a live lease on ``client_id``, if any."""
    return session.scalar(text("""
        SELECT host_id FROM client_sessions
         WHERE client_id = :client_id AND host_id IS NOT NULL AND lease_expires_at > now()"""),
        {"client_id": client_id})


def host_queue(session, client_id: str) -> str | None:
    """Contract 4: the queue of the live session host owning ``client_id``, or None."""
    owner = lease_owner(session, client_id)
    return queue_for(owner) if owner else None


def orphaned_clients(session, grace_s: float | None = None, limit: int = 100) -> list[str]:
    """Web clients that should run (starting, qr, ready) but have no live lease. One never hosted
    yet (its ``sessions.start`` may just be waiting in the queue) counts after ``grace_s``."""
    grace = float(settings.SESSION_LEASE_TTL if grace_s is None else grace_s)
    rows = session.execute(text("""
        SELECT c.id FROM clients c LEFT JOIN client_sessions cs ON cs.client_id = c.id
         WHERE c.transport = 'web' AND c.deleted_at IS NULL AND c.status = ANY(:statuses)
           AND (cs.client_id IS NULL OR cs.host_id IS NULL OR cs.lease_expires_at IS NULL
                OR cs.lease_expires_at < now())
           AND (c.status_changed_at < now() - make_interval(secs => :grace) OR cs.heartbeat_at IS NOT NULL)
         ORDER BY c.id LIMIT :limit"""), {"statuses": list(ACTIVE_STATUSES), "grace": grace, "limit": limit})
    return [r.id for r in rows]


def reap_dead_host_queues(r) -> int:
    """Hand the jobs waiting in dead hosts' own queues (``sessions.<host id>``, ready or delayed)
    to the shared ``sessions`` queue, and return how many. Nobody consumes a dead host's queue, so
    without this a stop or logout forwarded to a host just before it died would be lost; on the
    shared queue the host that takes it forwards it to the client's owner of the moment, and a
    ``sessions.send`` is claimed atomically there, so a job moved twice still acts once. Dead
    letters stay where they are, for ``python -m workers dlq``."""
    import dramatiq

    from workers.middleware import live_heartbeats

    live = {b.get("queue") for b in live_heartbeats(r, HEARTBEAT_KIND)}
    broker = dramatiq.get_broker()
    moved = 0
    for key in list(r.scan_iter(match=f"dramatiq:{HOST_QUEUE_PREFIX}*.msgs", count=500)):
        name = (key.decode() if isinstance(key, bytes) else key)[len("dramatiq:"):-len(".msgs")]
        queue = name[:-len(".DQ")] if name.endswith(".DQ") else name
        if name.endswith(".XQ") or queue == SESSIONS_QUEUE or queue in live:
            continue
        for mid, raw in r.hgetall(key).items():
            old = dramatiq.Message.decode(raw)
            eta = old.options.get("eta")
            options = {k: v for k, v in old.options.items() if k not in ("eta", "redis_message_id")}
            delay = max(0, int(eta - time.time() * 1000)) if eta else 0
            broker.enqueue(old.copy(queue_name=SESSIONS_QUEUE, options=options), delay=delay or None)
            r.hdel(key, mid)
            r.lrem(f"dramatiq:{name}", 0, mid)
            moved += 1
    if moved:
        log.info("session hosts: moved %d job(s) from dead hosts' queues to %r", moved, SESSIONS_QUEUE)
    return moved


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
        self._status_thread = None
        self._last_renewal = time.monotonic()

    # -- collaborators, created on first use (the browser starts with the first session)

    @property
    def runtime(self):
        if self._runtime is None:
            from app.transports.web import default_runtime

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

    def start_session(self, client_id: str) -> str:
        """Run ``client_id``'s session here unless another live host does. Returns what happened:
        skipped, running, forwarded, started, failed."""
        from app import outbox
        from app.clients.models import Client
        from app.clients.service import client_info
        from app.db import job_session
        from app.security.crypto import decrypt_bytes

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
                from app.transports.web import PermanentStartError

                log.warning("session host %s: client %s did not start: %s", self.host_id, client_id, exc)
                self._forget(client_id, transport)
                # a configuration that cannot work fails; anything else is retried by the reconnects
                status = "failed" if isinstance(exc, PermanentStartError) else "disconnected"
                self.sink.status(info, status, {"reason": f"WhatsApp Web did not open: {exc}"[:500]})
                return "failed"
            log.info("session host %s: client %s started%s", self.host_id, client_id,
                     " from its saved login" if state else "")
            return "started"

    def stop_session(self, client_id: str) -> str:
        """Close the session (keeping its login). skipped, forwarded, not_running, stopped."""
        return self._shutdown(client_id, "stop")

    def logout_session(self, client_id: str) -> str:
        """Log the account out and forget its saved login. skipped, forwarded, logged_out."""
        return self._shutdown(client_id, "logout")

    def _shutdown(self, client_id: str, verb: str) -> str:
        from app import outbox
        from app.clients.models import Client
        from app.clients.service import client_info, forget_session_state
        from app.db import job_session
        from app.security.crypto import decrypt_bytes

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
        from app.transports.base import TransientSendError

        transport = self.live(client_id)
        if transport is None:
            raise TransientSendError("the web session is not live on this host", code="session_not_running")
        return transport

    def send(self, message_id: str) -> str:
        """``sessions.send``: send through the live session, or hand the message back to
        ``messages.send`` (which routes it to the current owner, or holds it) when it is not here."""
        from app import outbox
        from app.db import job_session
        from app.messages.models import Message
        from app.messages.service import SEND_ACTOR, SEND_QUEUE

        with job_session() as session:
            client_id = session.scalar(select(Message.client_id).where(Message.id == message_id))
            if client_id is None:
                return "missing"
            if self.live(client_id) is None:
                release_lease(session, client_id, self.host_id)  # so the message is not routed back here
                outbox.enqueue(session, SEND_ACTOR, message_id, queue_name=SEND_QUEUE)
                return "rerouted"
        from app.messages.dispatch import perform_send

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
        from app.db import job_session

        try:
            from app.messages.dispatch import resume_client
        except ImportError:
            return
        try:
            with job_session() as session:
                resume_client(session, client_id)
        except Exception:
            log.warning("session host %s: resuming the messages of %s failed", self.host_id, client_id, exc_info=True)

    def _session_ended(self, transport) -> None:
        """The transport closed by itself (logged out, banned, QR timeout, crash): give up the lease."""
        self._forget(transport.client.id, transport)

    def _forget(self, client_id: str, transport) -> None:
        from app.db import job_session

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
        from app.db import job_session

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
        from app import outbox
        from app.db import job_session
        from app.kv import redis_client

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
        from app.kv import redis_client
        from workers.middleware import HeartbeatThread

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
        from app.db import job_session

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
        from workers.state import current_pool

        if current_pool() != "sessions":
            return
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
