"""Engine, sessions, the declarative Base, public ids and tenant-scoped lookups.

One session per request (opened lazily, committed once by the request wrapper) and one per job
(``job_session``). ``get_scoped`` is the single way to load a tenant-owned row by id: another
organisation's id is indistinguishable from a missing one.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol, TypeVar, cast

import sqlalchemy
from sqlalchemy import Select, event, select
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, sessionmaker

from app.errors import NotFound
from config import settings

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)  # 10 bits -> two characters
_LOW80 = (1 << 80) - 1


_last_id = 0
_id_lock = threading.Lock()
_random = bytearray()  # os.urandom drawn ahead, 10 bytes per id; emptied in a forked child
_high = (-1, "")  # the last (value >> 80, its 10 characters): ids of one millisecond share it


def _reset_after_fork() -> None:
    global _random, _last_id
    _random, _last_id = bytearray(), 0


os.register_at_fork(after_in_child=_reset_after_fork)


def _random_bits(nbytes: int) -> int:
    """``8 * nbytes`` random bits from the operating system's CSPRNG (drawn 1280 bytes at a time:
    one system call per 128 ids rather than one each). Call with ``_id_lock`` held."""
    global _random
    if len(_random) < nbytes:
        _random = bytearray(os.urandom(1280))
    value = int.from_bytes(_random[-nbytes:], "big")
    del _random[-nbytes:]
    return value


def new_id(prefix: str) -> str:
    """A public id: ``prefix_`` + 26 Crockford base32 chars (48-bit ms time + 80 random bits).

    Ids sort by creation time (columns use ``COLLATE "C"``), so "newest first" is ``ORDER BY id
    DESC`` and a cursor is simply the last id seen. Within a process they also sort in the order
    they were made when several fall in one millisecond (a batch, rows made one after another): the
    next then steps up from the previous by a random amount. (Encoded by table, two characters per
    10 bits, the time part once per millisecond: a batch of a thousand messages makes three
    thousand ids.)
    """
    global _last_id, _high
    ms = int(time.time() * 1000)
    with _id_lock:
        value = (ms << 80) | _random_bits(10)
        if value <= _last_id:  # the same millisecond as the previous id (or the clock went back)
            value = _last_id + 1 + _random_bits(5)
        _last_id = value
        high, low = value >> 80, value & _LOW80
        if high != _high[0]:
            p = _PAIRS
            _high = (high, p[high >> 40 & 1023] + p[high >> 30 & 1023] + p[high >> 20 & 1023]
                     + p[high >> 10 & 1023] + p[high & 1023])
        head = _high[1]
    # 130 bits are 26 characters: 10 for the time (50 bits, the top 2 zero) and 16 for the low 80
    p = _PAIRS
    lo, mid = low & 0xFFFFFFFFFF, low >> 40
    return (f"{prefix}_{head}{p[mid >> 30 & 1023]}{p[mid >> 20 & 1023]}{p[mid >> 10 & 1023]}{p[mid & 1023]}"
            f"{p[lo >> 30 & 1023]}{p[lo >> 20 & 1023]}{p[lo >> 10 & 1023]}{p[lo & 1023]}")


def json_rows(rows: Any) -> str:
    """Rows as one JSON parameter, for a statement that reads them with ``jsonb_to_recordset``
    (one parameter for any number of rows: the driver quotes array parameters element by
    element); times exact to the microsecond with their offset."""
    return json.dumps(rows, default=_iso, separators=(",", ":"))


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Base of every model; models live in ``app/<domain>/models.py``."""


def sqlalchemy_url(url: str) -> str:
    """Use the psycopg 3 driver whatever scheme the operator wrote."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


#: A pooled connection unused for longer than this is pinged before it is handed out (a database
#: restart, or an idle connection dropped by a firewall, is caught there and a fresh connection
#: used instead). One in steady use is not: that saves a round trip per transaction, which is most
#: of a short job's cost. A connection that broke within this window fails its first statement;
#: SQLAlchemy then invalidates the pool, and the job's retry (or the client's) gets a new one.
PING_AFTER_IDLE_S = 5.0


def ping_when_idle(engine: Engine, idle_s: float = PING_AFTER_IDLE_S) -> None:
    """SQLAlchemy's ``pool_pre_ping``, but only for connections idle more than ``idle_s``."""

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection, record) -> None:
        if dbapi_connection is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, proxy) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since <= idle_s:
            return  # new, or in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool discards it and checks out another
            raise DisconnectionError(f"a pooled connection idle for {time.monotonic() - since:.0f} s is dead") from exc


_engine: Engine | None = None
_engine_pid: int | None = None
_lock = threading.Lock()
SessionFactory = sessionmaker(expire_on_commit=False, autoflush=True)


def get_engine() -> Engine:
    """The process's engine, created on first use (and anew after a fork)."""
    global _engine, _engine_pid
    with _lock:
        if _engine is None or _engine_pid != os.getpid():
            if not settings.DATABASE_URL:
                raise RuntimeError("DATABASE_URL is not set")
            # looked up at call time: tracing wraps it, so a forked worker's engine is traced too
            _engine = sqlalchemy.create_engine(
                sqlalchemy_url(settings.DATABASE_URL),
                pool_size=settings.DB_POOL_SIZE,
                max_overflow=settings.DB_POOL_SIZE,
                pool_recycle=1800,
                connect_args={"connect_timeout": 5},
            )
            ping_when_idle(_engine)
            _engine_pid = os.getpid()
            SessionFactory.configure(bind=_engine)
        return _engine


def set_engine(engine: Engine | None) -> None:
    """Point the process at another engine (tests, CLI)."""
    global _engine, _engine_pid
    with _lock:
        if _engine is not None and engine is not _engine:
            _engine.dispose()
        _engine, _engine_pid = engine, (os.getpid() if engine is not None else None)
        SessionFactory.configure(bind=engine)


def new_session() -> Session:
    if SessionFactory.kw.get("bind") is None or _engine_pid != os.getpid():
        get_engine()
    return SessionFactory()


@contextmanager
def job_session() -> Iterator[Session]:
    """One transaction per job: commit on success, roll back on error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def one_statement() -> Iterator[Any]:  # a Connection or a Session: either executes statements
    """Where a statement that is a transaction by itself runs (a webhook's claim, a send's record).

    A connection of the engine in autocommit: one round trip, no BEGIN and COMMIT around it. When
    sessions are bound to an outer connection instead (the tests' transaction), a job session
    joining it."""
    get_engine()  # (re)binds the session factory in a forked worker
    bind = SessionFactory.kw.get("bind")
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn
    else:
        with job_session() as session:
            yield session


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE or DELETE matched. ``Session.execute`` is typed to return a ``Result``,
    which has no ``rowcount``; for such a statement it is a ``CursorResult``, which has."""
    return cast(CursorResult[Any], result).rowcount


class TenantOwned(Protocol):
    """A model whose rows belong to one organisation (and may be soft-deleted: ``deleted_at``)."""
    id: ClassVar[Mapped[str]]
    organization_id: ClassVar[Mapped[str]]


M = TypeVar("M", bound=TenantOwned)


def get_scoped(session: Session, model: type[M], organization_id: str, object_id: str, *,
               for_update: bool = False) -> M:
    """Load a tenant-owned row by id within ``organization_id`` or raise NotFound."""
    stmt = select(model).where(model.id == object_id, model.organization_id == organization_id)
    if (deleted_at := getattr(model, "deleted_at", None)) is not None:
        stmt = stmt.where(deleted_at.is_(None))
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first() if isinstance(object_id, str) else None
    if row is None:
        raise NotFound(f"{model.__name__.lower()} not found")
    return row


def scoped_select(model: type[M], organization_id: str) -> Select[M]:
    """``select(model)`` already restricted to one organisation (and not soft-deleted)."""
    stmt = select(model).where(model.organization_id == organization_id)
    if (deleted_at := getattr(model, "deleted_at", None)) is not None:
        stmt = stmt.where(deleted_at.is_(None))
    return stmt


def _operational_errors() -> tuple:
    """Exceptions that mean "a dependency is down" (-> 503), not "our bug" (-> 500)."""
    import redis.exceptions
    import sqlalchemy.exc

    return (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


OperationalErrors = _operational_errors()


def request_session() -> Session:
    """The current request's session, opened on first use."""
    from flask import g

    if "db" not in g:
        g.db = new_session()
    return g.db


def end_request_session(commit: bool) -> None:
    """Commit (or roll back) and close the request's session, if one was opened."""
    from flask import g

    session = g.pop("db", None)
    if session is None:
        return
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    finally:
        session.close()
