"""Analytics read from the rollups only (never from ``messages``): the overview of a range, time
series by hour or by day in the caller's time zone, and the CSV exports.

A range ``[from, to)`` takes the hourly buckets whose hour starts in it (a bucket holds the messages
created in that hour, docs/analytics.md); when both ends are UTC midnights the daily rows are read
instead (same numbers, fewer rows). Agents see only the clients assigned to them.
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.campaigns.models import Campaign
from app.clients.service import visible_client
from app.db import get_scoped, new_session, utcnow
from app.errors import ValidationError
from app.security.principal import Principal

METRICS = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out")
GRANULARITIES = ("hour", "day")
MAX_RANGE_DAYS = 400
MAX_HOURLY_RANGE_DAYS = 31
DEFAULT_RANGE = timedelta(days=7)
TOP_FAILURES = 10
_SUMMED = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out", "response_seconds_sum",
           "response_count", "delivery_seconds_sum", "delivery_count", "read_seconds_sum", "read_count")


def _range(start: datetime | None, end: datetime | None, max_days: int) -> tuple[datetime, datetime]:
    end = end or utcnow()
    start = start or end - DEFAULT_RANGE
    if start > end:
        raise ValidationError("from is after to", details={"from": ["must not be after `to`"]})
    if end - start > timedelta(days=max_days):
        raise ValidationError(f"the range is longer than {max_days} days",
                              details={"to": [f"at most {max_days} days after `from`"]})
    return start, end


def _scope(session: Session, principal: Principal, client_id: str | None, campaign_id: str | None) -> tuple[str, dict]:
    """The WHERE of the rollup rows the principal may see, and its parameters."""
    where = ["organization_id = :org"]
    params: dict = {"org": principal.organization_id}
    if client_id:
        visible_client(session, principal, client_id)  # 404 for another tenant's or an unassigned client
        where.append("client_id = :client")
        params["client"] = client_id
    elif principal.client_ids is not None:
        where.append("client_id = ANY(CAST(:clients AS text[]))")
        params["clients"] = sorted(principal.client_ids)
    if campaign_id:
        get_scoped(session, Campaign, principal.organization_id, campaign_id)
        where.append("campaign_id = :campaign")
        params["campaign"] = campaign_id
    return " AND ".join(where), params


def _is_midnight(when: datetime) -> bool:
    return when.astimezone(UTC).time() == datetime.min.time()


def _source(start: datetime, end: datetime, params: dict) -> str:
    """The table and bucket condition of ``[start, end)``: daily rows for whole UTC days."""
    if _is_midnight(start) and _is_midnight(end):
        params.update(day_from=start.astimezone(UTC).date(), day_to=end.astimezone(UTC).date())
        return "analytics_daily WHERE bucket >= :day_from AND bucket < :day_to"
    params.update(start=start, end=end)
    return "analytics_hourly WHERE bucket >= :start AND bucket < :end"


def _ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def overview(session: Session, principal: Principal, *, start: datetime | None = None, end: datetime | None = None,
             client_id: str | None = None, campaign_id: str | None = None) -> dict:
    """The totals of a range, with rates, average times and the most frequent failure codes."""
    start, end = _range(start, end, MAX_RANGE_DAYS)
    where, params = _scope(session, principal, client_id, campaign_id)
    source = _source(start, end, params)
    sums = ", ".join(f"COALESCE(sum({c}), 0) AS {c}" for c in _SUMMED)
    row = session.execute(text(f"SELECT {sums} FROM {source} AND {where}"), params).one()._mapping
    failures = session.execute(text(f"""
        SELECT e.key AS code, sum(e.value::bigint) AS n
        FROM (SELECT failures FROM {source} AND {where}) r, jsonb_each_text(r.failures) e
        GROUP BY e.key ORDER BY n DESC, code LIMIT {TOP_FAILURES}"""), params)
    totals = {c: int(row[c]) for c in _SUMMED if not c.endswith("_sum")}
    return {
        "from": start, "to": end,
        **{c: totals[c] for c in METRICS},
        "delivery_rate": _ratio(totals["delivered"], totals["sent"]),
        "read_rate": _ratio(totals["read"], totals["sent"]),
        "reply_rate": _ratio(totals["replied"], totals["sent"]),
        "avg_response_seconds": _ratio(float(row["response_seconds_sum"]), totals["response_count"], 1),
        "avg_delivery_seconds": _ratio(float(row["delivery_seconds_sum"]), totals["delivery_count"], 1),
        "avg_read_seconds": _ratio(float(row["read_seconds_sum"]), totals["read_count"], 1),
        "top_failures": [{"code": r.code, "count": int(r.n)} for r in failures],
    }


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError("unknown time zone", details={"tz": [f"not an IANA time zone: {tz!r}"]}) from None


def timeseries(session: Session, principal: Principal, *, metric: str, granularity: str = "day",
               start: datetime | None = None, end: datetime | None = None, client_id: str | None = None,
               campaign_id: str | None = None, tz: str | None = None) -> dict:
    """One metric per hour (UTC hours) or per day of the time zone ``tz``, from the hourly rollups;
    every hour / day of the range is a point (zero when nothing happened)."""
    if metric not in METRICS:
        raise ValidationError("unknown metric", details={"metric": [f"one of {', '.join(METRICS)}"]})
    zone = _zone(tz)
    start, end = _range(start, end, MAX_HOURLY_RANGE_DAYS if granularity == "hour" else MAX_RANGE_DAYS)
    where, params = _scope(session, principal, client_id, campaign_id)
    params.update(start=start.replace(minute=0, second=0, microsecond=0), end=end, tz=zone.key)
    if granularity == "hour":
        rows = session.execute(text(f"""
            SELECT bucket AS at, sum({metric}) AS value FROM analytics_hourly
            WHERE bucket >= :start AND bucket < :end AND {where} GROUP BY bucket"""), params)
        values = {r.at.astimezone(UTC): int(r.value) for r in rows}
        points = []
        at = params["start"]
        while at < end:
            points.append({"at": at, "value": values.get(at, 0)})
            at += timedelta(hours=1)
    else:
        first = start.astimezone(zone).date()
        params["start"] = datetime.combine(first, datetime.min.time(), zone).astimezone(UTC)
        rows = session.execute(text(f"""
            SELECT (bucket AT TIME ZONE :tz)::date AS day, sum({metric}) AS value FROM analytics_hourly
            WHERE bucket >= :start AND bucket < :end AND {where} GROUP BY 1"""), params)
        by_day = {r.day: int(r.value) for r in rows}
        points = []
        day = first
        while (midnight := datetime.combine(day, datetime.min.time(), zone)) < end:
            points.append({"at": midnight, "value": by_day.get(day, 0)})
            day += timedelta(days=1)
    return {"metric": metric, "granularity": granularity, "tz": zone.key, "points": points}


# ------------------------------------------------------------------------------- exports

#: the columns of the rollup export, in order (docs/analytics.md explains each)
ROLLUP_COLUMNS = ("day", "client_id", "client_name", "sent", "delivered", "read", "failed", "received", "replied",
                  "opted_out", "delivery_rate", "read_rate", "reply_rate", "avg_response_seconds",
                  "avg_delivery_seconds", "avg_read_seconds", "failures")
#: the columns of the messages export, in order
MESSAGE_COLUMNS = ("id", "created_at", "client_id", "campaign_id", "direction", "type", "to", "from", "status",
                   "error_code", "sent_at", "delivered_at", "read_at", "failed_at")
EXPORT_BATCH = 1000


def _days(start: datetime | None, end: datetime | None) -> tuple[date, date]:
    """Export ranges are whole UTC days: [day of from, day of to) — to's day is included unless to is midnight."""
    start, end = _range(start, end, MAX_RANGE_DAYS)
    last = end.astimezone(UTC).date() + (timedelta(0) if _is_midnight(end) else timedelta(days=1))
    return start.astimezone(UTC).date(), last


def export_rollups(session: Session, principal: Principal, *, start: datetime | None = None,
                   end: datetime | None = None, client_id: str | None = None) -> Iterator[tuple]:
    """Rows of the daily rollups, one per UTC day x client (campaigns summed), the header first."""
    first, last = _days(start, end)
    where, params = _scope(session, principal, client_id, None)
    where = " AND ".join(f"d.{w}" for w in where.split(" AND "))
    params.update(day_from=first, day_to=last)
    sums = ", ".join(f"sum(d.{c}) AS {c}" for c in _SUMMED)
    stmt = text(f"""
        SELECT d.bucket AS day, d.client_id, c.name AS client_name, {sums},
               (SELECT COALESCE(jsonb_object_agg(code, n), '{{}}'::jsonb) FROM (
                    SELECT e.key AS code, sum(e.value::bigint) AS n
                    FROM analytics_daily x, jsonb_each_text(x.failures) e
                    WHERE x.client_id = d.client_id AND x.bucket = d.bucket GROUP BY e.key) y) AS failures
        FROM analytics_daily d JOIN clients c ON c.id = d.client_id
        WHERE d.bucket >= :day_from AND d.bucket < :day_to AND {where}
        GROUP BY d.bucket, d.client_id, c.name ORDER BY d.bucket, d.client_id""")
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
        sent = int(r.sent)
        yield (r.day.isoformat(), r.client_id, r.client_name, sent, int(r.delivered), int(r.read), int(r.failed),
               int(r.received), int(r.replied), int(r.opted_out), _ratio(int(r.delivered), sent),
               _ratio(int(r.read), sent), _ratio(int(r.replied), sent),
               _ratio(float(r.response_seconds_sum), int(r.response_count), 1),
               _ratio(float(r.delivery_seconds_sum), int(r.delivery_count), 1),
               _ratio(float(r.read_seconds_sum), int(r.read_count), 1),
               json.dumps(r.failures, sort_keys=True, separators=(",", ":")))


def export_messages(session: Session, principal: Principal, *, start: datetime | None = None,
                    end: datetime | None = None, client_id: str | None = None) -> Iterator[tuple]:
    """The raw messages created in the range (header first), oldest first, read through a
    server-side cursor in batches so memory stays flat however many there are. No message text."""
    start, end = _range(start, end, MAX_RANGE_DAYS)
    where, params = _scope(session, principal, client_id, None)
    params.update(start=start, end=end)
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
