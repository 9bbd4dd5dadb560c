"""The CSV exports of analytics: the daily rollups (one row per UTC day and client) or the raw
messages of a range, read through a server-side cursor in batches so memory stays flat however many
rows there are. ``GET /api/analytics/export`` streams them; ``analytics.export`` jobs write them to a
file (app/analytics/export_jobs.py). docs/analytics.md lists the columns."""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.analytics.service import MAX_RANGE_DAYS, SUMMED, checked_range, figures, is_midnight, scope
from app.db import new_session
from app.errors import ValidationError
from app.security.principal import Principal

#: the columns of the rollup export, in order (docs/analytics.md explains each)
ROLLUP_COLUMNS = ("day", "client_id", "client_name", "sent", "delivered", "read", "failed", "received", "replied",
                  "opted_out", "delivery_rate", "read_rate", "reply_rate", "avg_response_seconds",
                  "p90_response_seconds", "avg_delivery_seconds", "avg_read_seconds", "failures")
#: the columns of the messages export, in order
MESSAGE_COLUMNS = ("id", "created_at", "client_id", "campaign_id", "direction", "type", "to", "from", "status",
                   "error_code", "sent_at", "delivered_at", "read_at", "failed_at")
EXPORT_BATCH = 1000


def _days(start: datetime | None, end: datetime | None) -> tuple[date, date]:
    """Export ranges are whole UTC days: [day of from, day of to) — to's day is included unless to is midnight."""
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    last = end.astimezone(UTC).date() + (timedelta(0) if is_midnight(end) else timedelta(days=1))
    return start.astimezone(UTC).date(), last


def export_rollups(session: Session, principal: Principal, *, start: datetime | None = None,
                   end: datetime | None = None, client_id: str | None = None) -> Iterator[tuple]:
    """Rows of the daily totals, one per UTC day x client (campaigns summed), the header first."""
    first, last = _days(start, end)
    at = scope(session, principal, client_id, None, per_client=True)
    where = " AND ".join(f"d.{w}" for w in at.where.split(" AND "))
    params = {**at.params, "day_from": first, "day_to": last}
    stmt = text(f"""
        SELECT d.bucket AS day, d.client_id, c.name AS client_name, {", ".join(f"d.{c}" for c in SUMMED)},
               d.failures, d.response_buckets
        FROM {at.daily} d JOIN clients c ON c.id = d.client_id
        WHERE d.bucket >= :day_from AND d.bucket < :day_to AND {where}
        ORDER BY d.bucket, d.client_id""")
    return _rollup_rows(stmt, params)


def _stream(stmt, params: dict) -> Iterator:
    """The rows of ``stmt`` through a server-side cursor, in batches of EXPORT_BATCH, from a read-only
    session of its own: the response is streamed after the request's session has ended."""
    session = new_session()
    try:
        yield from session.execute(stmt, params, execution_options={"yield_per": EXPORT_BATCH})
    finally:
        session.rollback()
        session.close()


def _rollup_rows(stmt, params: dict) -> Iterator[tuple]:
    yield ROLLUP_COLUMNS
    for r in _stream(stmt, params):
        numbers = figures(r._mapping, r.response_buckets)
        yield (r.day.isoformat(), r.client_id, r.client_name, *(numbers[c] for c in ROLLUP_COLUMNS[3:-1]),
               json.dumps(r.failures, sort_keys=True, separators=(",", ":")))


def export_messages(session: Session, principal: Principal, *, start: datetime | None = None,
                    end: datetime | None = None, client_id: str | None = None) -> Iterator[tuple]:
    """The raw messages created in the range (header first), oldest first, read through a
    server-side cursor in batches so memory stays flat however many there are. No message text."""
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    at = scope(session, principal, client_id, None, per_campaign=True)  # the plain tenant and client condition
    where, params = at.where, {**at.params, "start": start, "end": end}
    stmt = text(f"""
        SELECT id, created_at, client_id, campaign_id, direction, type, to_phone, from_phone, status, error_code,
               sent_at, delivered_at, read_at, failed_at
        FROM messages WHERE created_at >= :start AND created_at < :end AND {where}
        ORDER BY created_at, id""")
    return _message_rows(stmt, params)


def _message_rows(stmt, params: dict) -> Iterator[tuple]:
    yield MESSAGE_COLUMNS
    for r in _stream(stmt, params):
        yield tuple(v.isoformat() if isinstance(v, datetime) else v for v in r)


def csv_lines(rows: Iterator[tuple]) -> Iterator[str]:
    """The rows as CSV text, one line at a time (None is an empty cell)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for row in rows:
        writer.writerow(row)
        yield out.getvalue()
        out.seek(0)
        out.truncate()


def export(session: Session, principal: Principal, *, what: str = "rollups", format: str = "csv",
           start: datetime | None = None, end: datetime | None = None, client_id: str | None = None) -> Iterator[str]:
    """``GET /api/analytics/export``: the CSV lines of the rollups or of the messages (checked now:
    a bad range or client is an error before anything is streamed)."""
    if format != "csv":
        raise ValidationError("unknown format", details={"format": ["csv is the one format"]})
    rows = (export_messages if what == "messages" else export_rollups)(
        session, principal, start=start, end=end, client_id=client_id)
    return csv_lines(rows)
