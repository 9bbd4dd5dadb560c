"""Enqueue-after-commit, backed by a transactional outbox table.

``enqueue(session, actor, *args)`` writes a ``job_outbox`` row in the caller's transaction and
remembers it on the session. When (and only when) that transaction commits, the job is sent to the
broker and its row deleted (in the background, batched). On rollback nothing is sent and the row
vanishes with the rest.

A job enqueued while a request (or another job) is handled carries its request id in the message
options (``request_id``), and with tracing on its trace context (``trace``), both kept in the row;
the worker logs the job under that id and continues that trace, so a request can be followed into
the jobs it caused, even those the sweeper sends (workers/middleware.py).

If the process dies between the commit and the send, the row stays behind: ``sweep()`` (run by
the scheduler) sends every row older than ``OUTBOX_SWEEP_AFTER`` seconds. A crash between send and
delete can therefore send a job twice, which is why actors are idempotent (ARCHITECTURE rule 6).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from datetime import datetime, timedelta

import dramatiq
from sqlalchemy import BigInteger, Integer, Text, delete, event, func, insert, select
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.columns import TS
from app.db import Base
from app.logs import job_origin
from app.queues import queue_of
from config import settings
from workers.broker import get_broker  # the configured broker, never dramatiq's implicit default

log = logging.getLogger(__name__)

_PENDING = "outbox_pending"


class JobOutbox(Base):
    """Jobs written in the caller's transaction and sent to the broker after commit (app/outbox.py)."""

    __tablename__ = "job_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    actor_name: Mapped[str] = mapped_column(Text)
    queue_name: Mapped[str] = mapped_column(Text)
    args: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    kwargs: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    options: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(TS)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")


def enqueue(session: Session, actor: dramatiq.Actor | str, *args, delay_ms: int | None = None,
            queue_name: str | None = None, **kwargs) -> None:
    """Send ``actor(*args, **kwargs)`` after ``session`` commits; ``delay_ms`` delays it further."""
    enqueue_many(session, actor, [args], delay_ms=delay_ms, queue_name=queue_name, kwargs=kwargs)


def enqueue_many(session: Session, actor: dramatiq.Actor | str, arg_lists: list, *, delay_ms: int | None = None,
                 queue_name: str | None = None, kwargs: dict | None = None,
                 delays_ms: list[int | None] | None = None) -> None:
    """Like ``enqueue`` for many argument tuples of one actor, with one INSERT. ``delays_ms`` gives
    each job its own delay (same length as ``arg_lists``) instead of ``delay_ms`` for all."""
    if not arg_lists:
        return
    actor_name, default_queue = _actor_route(actor, queue_name)
    now_ms = int(time.time() * 1000)
    if delays_ms is None:
        delays_ms = [delay_ms] * len(arg_lists)
    # the request (or the job) enqueueing it: its workers log under its request id, in its trace
    origin = job_origin()
    rows = [
        {"actor_name": actor_name, "queue_name": queue_name or default_queue, "args": list(a),
         "kwargs": kwargs or {}, "options": {**origin, "eta": now_ms + int(d)} if d and d > 0 else origin}
        for a, d in zip(arg_lists, delays_ms, strict=True)
    ]
    ids = session.scalars(insert(JobOutbox).returning(JobOutbox.id), rows).all()
    pending = session.info.setdefault(_PENDING, [])
    pending.extend({**row, "id": id_} for row, id_ in zip(rows, ids, strict=True))


def after_commit(session: Session, actor_name: str, arg_lists: list, *,
                 delays_ms: list[int | None] | None = None) -> None:
    """Send jobs once ``session`` commits, without a ``job_outbox`` row: for jobs whose work is
    already durable in rows of their own, which a sweeper of theirs sends again if the broker
    loses them (app/inbox). Nothing is sent on rollback."""
    if not arg_lists:
        return
    now_ms = int(time.time() * 1000)
    delays_ms = delays_ms or [None] * len(arg_lists)
    origin = job_origin()  # as enqueue_many's jobs
    session.info.setdefault(_PENDING, []).extend(
        {"id": None, "actor_name": actor_name, "queue_name": queue_of(actor_name), "args": list(a), "kwargs": {},
         "options": {**origin, "eta": now_ms + int(d)} if d and d > 0 else origin}
        for a, d in zip(arg_lists, delays_ms, strict=True))


def _actor_route(actor, queue_name: str | None = None) -> tuple[str, str]:
    """Name and queue of an actor: ``queue_name`` when given (a session host's own queue), else
    the actor's queue from ``app.queues`` (by name: the actor may live in a module this process
    does not import)."""
    name = actor if isinstance(actor, str) else actor.actor_name
    return name, queue_name or queue_of(name)


def _send(row: dict) -> None:
    options = dict(row.get("options") or {})
    eta = options.pop("eta", None)
    delay = max(0, eta - int(time.time() * 1000)) if eta else None
    message: dramatiq.Message = dramatiq.Message(
        queue_name=row["queue_name"], actor_name=row["actor_name"], args=tuple(row["args"]),
        kwargs=row["kwargs"] or {}, options=options,
    )
    get_broker().enqueue(message, delay=delay or None)


class _Dispatched:
    """Ids of rows whose jobs reached the broker, deleted by a daemon thread in one statement
    every ``FLUSH_EVERY`` seconds rather than by each transaction (which would cost every request
    and job three more round trips). Ids lost with the process only mean the sweeper sends those
    jobs again, which actors tolerate."""

    FLUSH_EVERY = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict = {}  # engine -> [id, ...]
        self._pid: int | None = None

    def add(self, engine, ids: list[int]) -> None:
        with self._lock:
            self._ids.setdefault(engine, []).extend(ids)
            if self._pid != os.getpid():  # first use in this process (or a forked child)
                self._pid = os.getpid()
                threading.Thread(target=self._run, name="outbox-dispatched", daemon=True).start()

    def flush(self) -> None:
        """Delete every id collected so far (also called at exit)."""
        with self._lock:
            batches, self._ids = self._ids, {}
        for engine, ids in batches.items():
            try:
                with engine.connect() as conn:
                    for i in range(0, len(ids), 5000):
                        conn.execute(delete(JobOutbox).where(JobOutbox.id.in_(ids[i:i + 5000])))
                    conn.commit()
            except Exception:  # the sweeper will resend; actors are idempotent
                log.warning("outbox: could not mark %d job(s) dispatched", len(ids), exc_info=True)

    def _run(self) -> None:
        while True:
            time.sleep(self.FLUSH_EVERY)
            self.flush()


_dispatched = _Dispatched()
atexit.register(_dispatched.flush)


def _forget_sent(session: Session, ids: list[int]) -> None:
    bind = session.get_bind()
    if not hasattr(bind, "connect"):
        return  # a session joined to an outer transaction (the tests'): rows stay, the tests read them
    _dispatched.add(bind, ids)


#: after the broker refused a job (Redis full or down), this process says so for this long
#: (``broker_refusing``): intake answers 503 instead of piling work up in the outbox
REFUSING_FOR_S = 5.0
_refusing_until = 0.0


def broker_refusing() -> bool:
    """Whether this process's last attempt to hand a job to the broker failed because Redis could
    not take it, less than ``REFUSING_FOR_S`` ago. What was committed then is safe in the outbox
    and goes out once Redis takes it again; new work should wait (back-pressure)."""
    return time.monotonic() < _refusing_until


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    global _refusing_until
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    sent = []
    for row in pending:
        try:
            _send(row)
            _refusing_until = 0.0
            if row["id"] is not None:
                sent.append(row["id"])
        except Exception as exc:
            from app.kv import unavailable

            if unavailable(exc):
                _refusing_until = time.monotonic() + REFUSING_FOR_S
            log.warning("outbox: send of %s failed; the sweeper will retry", row["actor_name"], exc_info=True)
    if sent:
        _forget_sent(session, sent)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)


def sweep(session: Session, older_than_s: int | None = None, limit: int = 1000) -> int:
    """Send jobs committed more than ``older_than_s`` seconds ago and never dispatched."""
    older_than_s = settings.OUTBOX_SWEEP_AFTER if older_than_s is None else older_than_s
    cutoff = select(JobOutbox).where(
        JobOutbox.dispatched_at.is_(None),
        JobOutbox.created_at <= _db_now(session) - timedelta(seconds=older_than_s),
    ).order_by(JobOutbox.id).limit(limit).with_for_update(skip_locked=True)
    rows = session.scalars(cutoff).all()
    sent = []
    for row in rows:
        try:
            _send({"queue_name": row.queue_name, "actor_name": row.actor_name, "args": row.args,
                   "kwargs": row.kwargs, "options": row.options})
            sent.append(row.id)
        except Exception:
            row.attempts += 1
            log.warning("outbox sweep: send of %s failed", row.actor_name, exc_info=True)
    if sent:
        session.execute(delete(JobOutbox).where(JobOutbox.id.in_(sent)))
        log.info("outbox sweep: re-sent %d job(s) committed but never dispatched", len(sent))
    return len(sent)


def _db_now(session: Session) -> datetime:
    from sqlalchemy import func

    return session.scalar(select(func.now()))
