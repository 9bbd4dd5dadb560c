"""Session leases: which session host runs a stateful (web) client, through ``client_sessions``.

A client is leased by one host at a time (host_id, lease_expires_at, heartbeat_at; times from the
database clock): ``claim_lease`` takes it atomically when it is free, expired or already ours; the
owner renews it every SESSION_HEARTBEAT_INTERVAL seconds for SESSION_LEASE_TTL seconds. A host
that dies stops renewing, so its leases expire and ``orphaned_clients`` finds them for a live host
to adopt. The hosts themselves run in the ``sessions`` pool (workers/session_host.py); the message
pipeline asks ``host_queue`` where a web client's sends go; ``reap_dead_host_queues`` (periodic)
hands the jobs left in a dead host's own queue to the shared one.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import dramatiq
from redis import Redis
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.clients.models import ClientSession
from app.clients.statuses import ACTIVE_STATUSES
from app.db import rowcount
from app.queues import HOST_QUEUE_PREFIX, SESSIONS_QUEUE
from app.system.heartbeats import live_heartbeats
from config import settings
from workers.broker import get_broker

log = logging.getLogger(__name__)

#: the heartbeat kind of a session host (its heartbeat carries its own queue)
HEARTBEAT_KIND = "session_host"


def queue_for(host_id: str) -> str:
    """A session host's own queue: ``sessions.<host id>``."""
    return HOST_QUEUE_PREFIX + host_id


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


def claim_lease(session: Session, client_id: str, organization_id: str, host_id: str,
                ttl_s: float | None = None) -> Claim | None:
    """Take the lease of ``client_id`` for ``host_id`` when nobody holds it, it expired, or it is
    ours already; None when another host holds a live lease."""
    session.execute(insert(ClientSession).values(client_id=client_id, organization_id=organization_id)
                    .on_conflict_do_nothing(index_elements=[ClientSession.client_id]))
    row = session.execute(_CLAIM, {"client_id": client_id, "host_id": host_id,
                                   "ttl": float(ttl_s or settings.SESSION_LEASE_TTL)}).first()
    return Claim(row.previous_host, row.state_encrypted) if row is not None else None


def renew_leases(session: Session, host_id: str, client_ids: Iterable[str], ttl_s: float | None = None) -> set[str]:
    """Extend this host's leases; returns the clients it still holds (the others were taken)."""
    ids = sorted(client_ids)
    if not ids:
        return set()
    rows = session.execute(text("""
        UPDATE client_sessions SET lease_expires_at = now() + make_interval(secs => :ttl), heartbeat_at = now()
         WHERE host_id = :host_id AND client_id = ANY(:ids)
        RETURNING client_id"""), {"host_id": host_id, "ids": ids, "ttl": float(ttl_s or settings.SESSION_LEASE_TTL)})
    return {r.client_id for r in rows}


def release_lease(session: Session, client_id: str, host_id: str) -> bool:
    """Give up ``host_id``'s lease on ``client_id`` (a stop, a logout, a hand-over)."""
    result = session.execute(text("""
        UPDATE client_sessions SET host_id = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE client_id = :client_id AND host_id = :host_id"""), {"client_id": client_id, "host_id": host_id})
    return rowcount(result) > 0


def lease_owner(session: Session, client_id: str) -> str | None:
    """The host holding a live lease on ``client_id``, if any."""
    return session.scalar(text("""
        SELECT host_id FROM client_sessions
         WHERE client_id = :client_id AND host_id IS NOT NULL AND lease_expires_at > now()"""),
        {"client_id": client_id})


def host_queue(session: Session, client_id: str) -> str | None:
    """Where a web client's sends go: the queue of the live session host owning ``client_id``,
    or None (the message waits until the client is ready again)."""
    owner = lease_owner(session, client_id)
    return queue_for(owner) if owner else None


def orphaned_clients(session: Session, grace_s: float | None = None, limit: int = 100) -> list[str]:
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


def reap_dead_host_queues(r: Redis) -> int:
    """Hand the jobs waiting in dead hosts' own queues (``sessions.<host id>``, ready or delayed)
    to the shared ``sessions`` queue, and return how many. Nobody consumes a dead host's queue, so
    without this a stop or logout forwarded to a host just before it died would be lost; on the
    shared queue the host that takes it forwards it to the client's owner of the moment, and a
    ``sessions.send`` is claimed atomically there, so a job moved twice still acts once. Dead
    letters stay where they are, for ``python -m workers dlq``."""
    live = {b.get("queue") for b in live_heartbeats(r, HEARTBEAT_KIND)}
    broker = get_broker()
    moved = 0
    for key in list(r.scan_iter(match=f"dramatiq:{HOST_QUEUE_PREFIX}*.msgs", count=500)):
        name = (key.decode() if isinstance(key, bytes) else key)[len("dramatiq:"):-len(".msgs")]
        queue = name[:-len(".DQ")] if name.endswith(".DQ") else name
        if name.endswith(".XQ") or queue == SESSIONS_QUEUE or queue in live:
            continue
        for mid, raw in r.hgetall(key).items():
            old = dramatiq.Message.decode(raw)  # type: ignore[arg-type]  # redis-py types replies bytes | str: ours are bytes
            eta = old.options.get("eta")
            options = {k: v for k, v in old.options.items() if k not in ("eta", "redis_message_id")}
            delay = max(0, int(eta - time.time() * 1000)) if eta else 0
            broker.enqueue(old.copy(queue_name=SESSIONS_QUEUE, options=options), delay=delay or None)
            r.hdel(key, mid)
            r.lrem(f"dramatiq:{name}", 0, mid)  # type: ignore[arg-type]  # redis-py types the value str; bytes are as good
            moved += 1
    if moved:
        log.info("session hosts: moved %d job(s) from dead hosts' queues to %r", moved, SESSIONS_QUEUE)
    return moved
