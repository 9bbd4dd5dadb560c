"""Applying transport reports: a client status to the client's status machine, an ack to its
message, an inbound message to the messages. Recording reports is app/inbox/service.py.

``apply_due`` (the ``inbox.apply_due`` job) applies every report due by now, in batches of
``BATCH``: the rows are locked (``SKIP LOCKED``: concurrent jobs share the work), the acks of a
batch are applied together (``tracking.apply_acks``: a few statements for all of them), statuses
and inbound messages one by one in their order, and every row is marked in one statement; one
commit per batch. A report that makes applying fail (a bug, not the database) must not hold up
the others: the batch is then applied again one report per transaction, and the failing one is
tried again later with backoff.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

from sqlalchemy import Row, text
from sqlalchemy.orm import Session

from app.clients.lifecycle import record_status
from app.db import OperationalErrors, job_session, utcnow
from app.inbox.service import ACK_PATIENCE, wake_after_commit, woken
from app.messages.inbound import receive_inbound
from app.messages.tracking import Ack, apply_acks, parse_time

log = logging.getLogger(__name__)

#: what applying one report did (its row's ``outcome``; ``done``: applied already, or by another job)
ApplyOutcome = Literal["applied", "ignored", "waiting", "orphaned", "done"]
#: reports applied per transaction
BATCH = 500

_COLUMNS = "id, client_id, kind, payload, attempts, created_at"
_DUE = text(f"""SELECT {_COLUMNS} FROM transport_events WHERE applied_at IS NULL AND due_at <= statement_timestamp()
                ORDER BY due_at, id LIMIT :limit FOR UPDATE SKIP LOCKED""")
_ONE = text(f"SELECT {_COLUMNS} FROM transport_events WHERE id = :id AND applied_at IS NULL FOR UPDATE SKIP LOCKED")
_MARK = text("""UPDATE transport_events AS t SET applied_at = now(), outcome = u.outcome
                  FROM unnest(CAST(:ids AS bigint[]), CAST(:outcomes AS text[])) AS u(id, outcome)
                 WHERE t.id = u.id""")
_LATER = text("""UPDATE transport_events AS t SET attempts = t.attempts + 1,
                        due_at = now() + u.delay_ms * interval '1 millisecond',
                        dispatched_at = now() + u.delay_ms * interval '1 millisecond'
                   FROM unnest(CAST(:ids AS bigint[]), CAST(:delays AS integer[])) AS u(id, delay_ms)
                  WHERE t.id = u.id""")


def apply_due(tick: int = 0, limit: int = BATCH) -> int:
    """``inbox.apply_due``: apply every report due by now, ``limit`` per transaction, until none is
    left; returns how many rows were handled."""
    if tick:
        woken(tick)
    done = 0
    while True:
        ids: list[int] = []
        try:
            with job_session() as session:
                rows = session.execute(_DUE, {"limit": limit}).all()
                ids = [row.id for row in rows]
                if rows:
                    _apply_rows(session, rows)
        except OperationalErrors:
            raise  # the database is away: the job is retried, the rows wait
        except Exception:
            if not ids:
                raise
            log.exception("inbox: a batch of %d report(s) failed; applying them one by one", len(ids))
            for event_id in ids:
                _apply_alone(event_id)
        done += len(ids)
        if len(ids) < limit:
            return done


def apply(event_id: int) -> ApplyOutcome:
    """``inbox.apply``: apply one report once. Returns applied / ignored / waiting / orphaned / done
    (already applied, or taken by a concurrent job)."""
    with job_session() as session:
        row = session.execute(_ONE, {"id": event_id}).first()
        if row is None:
            return "done"
        return _apply_rows(session, [row])[0]


def _apply_alone(event_id: int) -> None:
    """One report in a transaction of its own; one that fails is tried again later."""
    try:
        apply(event_id)
    except OperationalErrors:
        raise
    except Exception:
        log.exception("inbox: transport event %s could not be applied; it is tried again later", event_id)
        with job_session() as session:
            row = session.execute(_ONE, {"id": event_id}).first()
            if row is not None:
                _later(session, [(row.id, _backoff_ms(row.attempts))])


def _backoff_ms(attempts: int) -> int:
    return min(60_000, 250 * 2 ** min(attempts, 8))


def _apply_rows(session: Session, rows: Sequence[Row]) -> list[ApplyOutcome]:
    """Apply ``rows`` (locked, unapplied) in order in the caller's transaction and mark them."""
    outcomes: list[ApplyOutcome] = []
    acks: list[Row] = []

    def flush_acks() -> None:
        if acks:
            found = apply_acks(session, [Ack(r.client_id, r.payload["external_id"], r.payload["status"],
                                             r.payload.get("error"), parse_time(r.payload.get("at")),
                                             r.payload.get("message_id")) for r in acks])
            outcomes.extend("applied" if f is not None else "waiting" for f in found)
            acks.clear()

    for row in rows:
        if row.kind == "ack":
            acks.append(row)
            continue
        flush_acks()
        outcomes.append(_apply_one(session, row))
    flush_acks()
    now = utcnow()
    final: list[tuple[int, str]] = []
    waiting: list[tuple[int, int]] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome == "waiting" and now - row.created_at > ACK_PATIENCE:
            log.info("ack %s of client %s matches no message after %s; given up", row.payload.get("status"),
                     row.client_id, ACK_PATIENCE)
            outcome = "orphaned"
        if outcome == "waiting":
            waiting.append((row.id, _backoff_ms(row.attempts)))
        else:
            final.append((row.id, outcome))
    if final:
        session.execute(_MARK, {"ids": [i for i, _ in final], "outcomes": [o for _, o in final]})
    _later(session, waiting)
    by_id = dict(final) | {i: "waiting" for i, _ in waiting}
    return [by_id[row.id] for row in rows]  # type: ignore[misc]


def _later(session: Session, delays: list[tuple[int, int]]) -> None:
    """Try these rows again after their delay (an ack waiting for its message, a failed apply)."""
    if delays:
        session.execute(_LATER, {"ids": [i for i, _ in delays], "delays": [d for _, d in delays]})
        wake_after_commit(session, [d for _, d in delays])


def _apply_one(session: Session, row: Row) -> ApplyOutcome:
    payload = row.payload
    if row.kind == "status":
        done = record_status(session, row.client_id, payload["status"], payload.get("detail") or {})
        return "applied" if done is not None else "ignored"
    if row.kind == "inbound":
        return "applied" if receive_inbound(session, row.client_id, payload) is not None else "ignored"
    log.warning("transport event %s of unknown kind %r ignored", row.id, row.kind)
    return "ignored"

