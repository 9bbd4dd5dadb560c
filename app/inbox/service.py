"""Transport reports, durable before they are acknowledged.

Every report a transport makes — a client status (``qr``, ``ready``, ...), an ack of a message it
sent, a message a contact wrote — is a ``transport_events`` row in Postgres before the transport
is answered: the Cloud API webhook commits it before its 200, the simulator's and WhatsApp Web's
reports are written before the call that made them returns. Reports are applied in batches
(app/inbox/apply.py): an ``inbox.apply_due`` job applies every report due by the time it runs,
with a few statements for the whole batch, and marks the rows applied. Reports are data, not
jobs: one wake-up job serves every report due within the same ``TICK_MS`` (after the commit, a
Redis ``SET NX`` per tick decides which transaction sends it), so a thousand acks a second cost
ten jobs, not a thousand.

The row is what survives: if the broker loses a wake-up (a Redis restart, a worker whose delayed
jobs were dropped), ``redispatch`` (periodic) sends one again for the rows overdue by
``INBOX_REDISPATCH_AFTER``; applying twice is harmless (the rows are locked and checked, and
every apply is idempotent). An ack that finds no message yet (it overtook the recording of its
send) is tried again with backoff, and given up as ``orphaned`` after ``ACK_PATIENCE``. Applied
rows are purged after ``KEEP_APPLIED``.

``InboxSink`` is the platform's EventSink. Given a session it writes into that transaction (the
webhook request, an API call that drives the simulator); otherwise each report is its own short
transaction, or, inside ``with sink.batch():``, all the reports of the block are written in one
(a sim start with its QR rotations; a send and the acks it schedules, with the ``sent`` record).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import dramatiq
from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from app import outbox
from app.clients.session_state import save_session_state
from app.db import job_session, json_rows, rowcount, utcnow
from app.inbox.models import TransportEvent
from app.kv import redis_client
from app.queues import queue_of
from app.transports.base import ClientInfo, InboundMessage
from config import settings
from workers.broker import get_broker, queue_head_ms

log = logging.getLogger(__name__)

#: applies one report (what the apply jobs of earlier versions ask for)
APPLY_ACTOR = "inbox.apply"
#: applies every report due by the time it runs (the wake-up job)
APPLY_DUE_ACTOR = "inbox.apply_due"
#: reports due within one tick of this many milliseconds share one wake-up job
TICK_MS = 100
_WAKE_KEY = "wa:inbox:wake:"
_WAKES = "inbox_wakes"
#: a tick this process knows has its job is not asked about again until this close to it
_WAKE_MARGIN_MS = 50


def insert_reports_sql(only_if: str = "TRUE") -> str:
    """One statement for any number of reports (one JSON parameter, ``json_rows``), with
    ``report_params``; a statement that records reports in passing (the send) embeds it, writing
    them only if ``only_if`` holds."""
    return f"""
    INSERT INTO transport_events (organization_id, client_id, kind, payload, due_at, dispatched_at, created_at)
    SELECT r.organization_id, r.client_id, r.kind, r.payload,
           CAST(:reports_at AS timestamptz) + r.delay_ms * interval '1 millisecond', :reports_at, :reports_at
      FROM jsonb_to_recordset(CAST(:reports AS jsonb))
           AS r(organization_id text, client_id text, kind text, payload jsonb, delay_ms bigint)
     WHERE {only_if}"""


_INSERT = text(insert_reports_sql())
#: how long an ack waits for its message to be recorded before it is given up (orphaned)
ACK_PATIENCE = timedelta(hours=1)
#: applied rows are kept this long (for inspection), then purged
KEEP_APPLIED = timedelta(days=1)


@dataclass(frozen=True)
class Report:
    organization_id: str
    client_id: str
    kind: str  # status | ack | inbound
    payload: dict
    delay_ms: int = 0


def record(session: Session, reports: list[Report]) -> None:
    """Write ``reports`` in the caller's transaction; their wake-up jobs go after commit."""
    if not reports:
        return
    session.execute(_INSERT, report_params(reports))
    wake_after_commit(session, [max(0, r.delay_ms) for r in reports])


def report_params(reports: list[Report]) -> dict:
    """The parameters of ``insert_reports_sql`` for ``reports``."""
    return {"reports": json_rows([{"organization_id": r.organization_id, "client_id": r.client_id, "kind": r.kind,
                                   "payload": r.payload, "delay_ms": max(0, r.delay_ms)} for r in reports]),
            "reports_at": utcnow()}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ticks(delays_ms: list[int]) -> set[int]:
    now_ms = _now_ms()
    return {-(-(now_ms + max(0, d)) // TICK_MS) * TICK_MS for d in delays_ms}


def wake_after_commit(session: Session, delays_ms: list[int]) -> None:
    """Have ``inbox.apply_due`` run once ``delays_ms`` (from now) have passed, after ``session``
    commits: at the end of each one's tick, one job per tick whichever transaction asks first."""
    session.info.setdefault(_WAKES, set()).update(_ticks(delays_ms))


def wake(reports: list[Report]) -> None:
    """``wake_after_commit`` for reports a statement of its own committed (``insert_reports_sql``)."""
    if reports:
        _wake_quietly(_ticks([r.delay_ms for r in reports]))


@sa_event.listens_for(Session, "after_commit")
def _send_wakes(session: Session) -> None:
    ticks = session.info.pop(_WAKES, None)
    if ticks:
        _wake_quietly(ticks)


def _wake_quietly(ticks: set[int]) -> None:
    try:
        send_wakes(sorted(ticks))
    except Exception:  # the rows are durable: redispatch wakes them once they are overdue
        log.warning("inbox: could not send %d wake-up job(s); the sweeper will", len(ticks), exc_info=True)


@sa_event.listens_for(Session, "after_rollback")
def _forget_wakes(session: Session) -> None:
    session.info.pop(_WAKES, None)


def send_wakes(ticks: list[int]) -> int:
    """One ``inbox.apply_due`` job per tick (epoch ms) that has none yet; returns how many were sent.

    The tick's key lives until its job starts (it deletes it) or, if the job is lost, a minute
    past the tick: a transaction that commits after the job started sends another. A tick this
    process has seen taken is not asked about again while it is more than ``_WAKE_MARGIN_MS``
    away: its job cannot start before the tick (a delay is "at least"), so what commits before
    then is still ahead of its query. That spares a Redis round trip per send."""
    now_ms = _now_ms()
    ask = [t for t in ticks if not (t in _taken and now_ms < t - _WAKE_MARGIN_MS)]
    if not ask:
        return 0
    pipe = redis_client().pipeline(transaction=False)
    for tick in ask:
        pipe.set(f"{_WAKE_KEY}{tick}", 1, nx=True, px=max(1, tick - now_ms) + 60_000)
    answers = pipe.execute()
    broker = get_broker()
    sent = 0
    for tick, first in zip(ask, answers, strict=True):
        if first:
            delay = tick - now_ms
            broker.enqueue(dramatiq.Message(queue_name=queue_of(APPLY_DUE_ACTOR), actor_name=APPLY_DUE_ACTOR,
                                            args=(tick,), kwargs={}, options={}),
                           delay=delay if delay > 0 else None)
            sent += 1
        _taken.add(tick)
    if len(_taken) > 1000:
        _taken.difference_update([t for t in list(_taken) if t < now_ms])  # list(): a copy taken at once (threads)
    return sent


#: ticks this process has seen taken (``send_wakes``)
_taken: set[int] = set()


def forget_taken_wakes() -> None:
    """Forget which ticks this process saw taken (Redis was emptied: its keys are gone)."""
    _taken.clear()


def woken(tick: int) -> None:
    """The wake-up job of ``tick`` started: later reports of that tick need a job of their own."""
    _taken.discard(tick)
    redis_client().delete(f"{_WAKE_KEY}{tick}")


# ----------------------------------------------------------------------------- the sink


class InboxSink:
    """The platform's EventSink (see the module docstring)."""

    def __init__(self, session: Session | None = None) -> None:
        self.session = session
        self._local = threading.local()

    @contextmanager
    def batch(self) -> Iterator[list[Report]]:
        """Collect the reports made in this thread inside the block, and write those still in the
        yielded list at its end, in one transaction. The caller may take them out of the list
        first and ``record`` them in a transaction of its own (a send's receipts with its ``sent``)."""
        outer = getattr(self._local, "reports", None)
        if outer is not None:  # nested: the outer block writes
            yield outer
            return
        collected: list[Report] = []
        self._local.reports = collected
        try:
            yield collected
        finally:
            self._local.reports = None
        if collected:
            self._write(list(collected))

    def status(self, client: ClientInfo, status: str, detail: dict | None = None, *, delay_ms: int = 0) -> None:
        self._report(client, "status", {"status": status, "detail": detail or {}}, delay_ms)

    def ack(self, client: ClientInfo, external_id: str, status: str, *, error: dict | None = None,
            at: datetime | None = None, delay_ms: int = 0, message_id: str | None = None) -> None:
        self._report(client, "ack", {"external_id": external_id, "status": status, "error": error,
                                     "at": at.isoformat() if at else None, "message_id": message_id}, delay_ms)

    def inbound(self, client: ClientInfo, message: InboundMessage, *, delay_ms: int = 0) -> None:
        payload = asdict(message)
        if message.timestamp:
            payload["timestamp"] = message.timestamp.isoformat()
        self._report(client, "inbound", payload, delay_ms)

    def session_state(self, client: ClientInfo, state: bytes) -> None:
        """Login state is stored at once (it is the latest that counts; nothing to replay)."""
        if self.session is not None:
            save_session_state(self.session, client.id, state)
            return
        with job_session() as session:
            save_session_state(session, client.id, state)

    def _report(self, client: ClientInfo, kind: str, payload: dict, delay_ms: int) -> None:
        report = Report(client.organization_id, client.id, kind, payload, int(delay_ms or 0))
        collected = getattr(self._local, "reports", None)
        if collected is not None:
            collected.append(report)
        else:
            self._write([report])

    def _write(self, reports: list[Report]) -> None:
        if self.session is not None:
            record(self.session, reports)
            return
        with job_session() as session:
            record(session, reports)


# ----------------------------------------------------------------------------- sweeping


def redispatch(session: Session, *, overdue: timedelta | None = None, limit: int = 5000) -> int:
    """Wake the applier again for rows that should have been applied by now (the broker lost
    their wake-up, or its worker dropped it): overdue by ``INBOX_REDISPATCH_AFTER``. A duplicate
    only finds the rows applied."""
    if overdue is None:
        overdue = timedelta(seconds=settings.INBOX_REDISPATCH_AFTER)
    # a backlog is not a loss: only jobs sent before the one now at the head of the queue have had
    # their turn (a queue is first in, first out)
    head = datetime.fromtimestamp(queue_head_ms(queue_of(APPLY_ACTOR)) / 1000, UTC) - overdue
    ids = list(session.scalars(
        select(TransportEvent.id).where(TransportEvent.applied_at.is_(None),
                                        TransportEvent.due_at <= func.least(func.now() - overdue, head),
                                        or_(TransportEvent.dispatched_at.is_(None),
                                            TransportEvent.dispatched_at <= func.least(func.now() - overdue, head)))
        .order_by(TransportEvent.due_at).limit(limit).with_for_update(skip_locked=True)))
    if not ids:
        return 0
    # the next re-send waits as long again as the row has waited so far: a long backlog the head of
    # the queue cannot see (delayed jobs held by busy workers) costs a few duplicates, not a storm
    session.execute(update(TransportEvent).where(TransportEvent.id.in_(ids))
                    .values(dispatched_at=func.now() + (func.now() - TransportEvent.created_at)),
                    execution_options={"synchronize_session": False})
    outbox.after_commit(session, APPLY_DUE_ACTOR, [(0,)])
    log.warning("inbox: woke the applier again for %d transport report(s) the broker did not deliver", len(ids))
    return len(ids)


def purge(session: Session, *, older_than: timedelta = KEEP_APPLIED, limit: int = 10_000) -> int:
    """Delete rows applied more than ``older_than`` ago (at most ``limit``)."""
    old = (select(TransportEvent.id).where(TransportEvent.applied_at < func.now() - older_than)
           .limit(limit).scalar_subquery())
    return rowcount(session.execute(delete(TransportEvent).where(TransportEvent.id.in_(old)))) or 0


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TransportEvent).where(TransportEvent.applied_at.is_(None)))

