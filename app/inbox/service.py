"""Transport reports, durable before they are acknowledged.

Every report a transport makes — a client status (``qr``, ``ready``, ...), an ack of a message it
sent, a message a contact wrote — is a ``transport_events`` row in Postgres before the transport
is answered: the Cloud API webhook commits it before its 200, the simulator's and WhatsApp Web's
reports are written before the call that made them returns. An ``inbox.apply`` job, sent after
the commit and delayed to the report's ``due_at``, applies it (app/inbox/apply.py) and marks the
row applied.

The row is what survives: if the broker loses the job (a Redis restart, a worker whose delayed
jobs were dropped), ``redispatch`` (periodic) sends it again once it is overdue by
``INBOX_REDISPATCH_AFTER``; applying twice is
harmless (the row is locked and checked, and every apply is idempotent). An ack that finds no
message yet (it overtook the recording of its send) is tried again with backoff, and given up as
``orphaned`` after ``ACK_PATIENCE``. Applied rows are purged after ``KEEP_APPLIED``.

``InboxSink`` is the platform's EventSink. Given a session it writes into that transaction (the
webhook request, an API call that drives the simulator); otherwise each report is its own short
transaction, or, inside ``with sink.batch():``, all the reports of the block are written in one
(a sim start with its QR rotations; a send and the acks it schedules, with the ``sent`` record).
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from app import outbox
from app.clients.session_state import save_session_state
from app.db import job_session, rowcount, utcnow
from app.inbox.models import TransportEvent
from app.queues import queue_of
from app.transports.base import ClientInfo, InboundMessage
from config import settings

log = logging.getLogger(__name__)

APPLY_ACTOR = "inbox.apply"
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


def record(session: Session, reports: list[Report]) -> list[int]:
    """Write ``reports`` in the caller's transaction; their ``inbox.apply`` jobs go after commit."""
    if not reports:
        return []
    now = utcnow()
    rows = [{"organization_id": r.organization_id, "client_id": r.client_id, "kind": r.kind, "payload": r.payload,
             "due_at": now + timedelta(milliseconds=max(0, r.delay_ms)), "dispatched_at": now, "created_at": now}
            for r in reports]
    ids = list(session.scalars(insert(TransportEvent).returning(TransportEvent.id), rows))
    outbox.after_commit(session, APPLY_ACTOR, [(i,) for i in ids], delays_ms=[r.delay_ms for r in reports])
    return ids


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
    """Send again the ``inbox.apply`` jobs of rows that should have been applied by now (the
    broker lost them, or their worker dropped them): overdue by ``INBOX_REDISPATCH_AFTER``. A
    duplicate only finds the row applied."""
    from workers.broker import queue_head_ms

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
    outbox.after_commit(session, APPLY_ACTOR, [(i,) for i in ids])
    log.warning("inbox: sent again %d transport report(s) the broker did not deliver", len(ids))
    return len(ids)


def purge(session: Session, *, older_than: timedelta = KEEP_APPLIED, limit: int = 10_000) -> int:
    """Delete rows applied more than ``older_than`` ago (at most ``limit``)."""
    old = (select(TransportEvent.id).where(TransportEvent.applied_at < func.now() - older_than)
           .limit(limit).scalar_subquery())
    return rowcount(session.execute(delete(TransportEvent).where(TransportEvent.id.in_(old)))) or 0


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TransportEvent).where(TransportEvent.applied_at.is_(None)))

