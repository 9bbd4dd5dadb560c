"""Analytics read from the rollups only (never from ``messages``): the overview of a range, time
series by hour or by day in the caller's time zone, and the CSV exports.

A range ``[from, to)`` takes the hourly buckets whose hour starts in it (a bucket holds the messages
created in that hour, docs/analytics.md); when both ends are UTC midnights the daily rows are read
instead (same numbers, fewer rows). Agents see only the clients assigned to them.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.analytics.rollup import response_percentile
from app.campaigns.models import Campaign
from app.clients.models import Client
from app.clients.service import visible_client
from app.db import get_scoped, utcnow
from app.errors import ValidationError
from app.security.principal import Principal

METRICS = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out")
GRANULARITIES = ("hour", "day")
MAX_RANGE_DAYS = 400
MAX_HOURLY_RANGE_DAYS = 31
DEFAULT_RANGE = timedelta(days=7)
TOP_FAILURES = 10
SUMMED = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out", "response_seconds_sum",
           "response_count", "delivery_seconds_sum", "delivery_count", "read_seconds_sum", "read_count")


def checked_range(start: datetime | None, end: datetime | None, max_days: int) -> tuple[datetime, datetime]:
    end = end or utcnow()
    start = start or end - DEFAULT_RANGE
    if start > end:
        raise ValidationError("from is after to", details={"from": ["must not be after `to`"]})
    if end - start > timedelta(days=max_days):
        raise ValidationError(f"the range is longer than {max_days} days",
                              details={"to": [f"at most {max_days} days after `from`"]})
    return start, end


def scope(session: Session, principal: Principal, client_id: str | None, campaign_id: str | None) -> tuple[str, dict]:
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


def is_midnight(when: datetime) -> bool:
    return when.astimezone(UTC).time() == datetime.min.time()


def _source(start: datetime, end: datetime, params: dict) -> str:
    """The table and bucket condition of ``[start, end)``: daily rows for whole UTC days."""
    if is_midnight(start) and is_midnight(end):
        params.update(day_from=start.astimezone(UTC).date(), day_to=end.astimezone(UTC).date())
        return "analytics_daily WHERE bucket >= :day_from AND bucket < :day_to"
    params.update(start=start, end=end)
    return "analytics_hourly WHERE bucket >= :start AND bucket < :end"


def ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def _figures(row, buckets: dict) -> dict:
    """The counts of summed rollup columns ``row``, with the rates and times derived from them."""
    totals = {c: int(row[c]) for c in SUMMED if not c.endswith("_sum")}
    return {
        **{c: totals[c] for c in METRICS},
        "delivery_rate": ratio(totals["delivered"], totals["sent"]),
        "read_rate": ratio(totals["read"], totals["sent"]),
        "reply_rate": ratio(totals["replied"], totals["sent"]),
        "avg_response_seconds": ratio(float(row["response_seconds_sum"]), totals["response_count"], 1),
        "p90_response_seconds": response_percentile(buckets, 0.9),
        "avg_delivery_seconds": ratio(float(row["delivery_seconds_sum"]), totals["delivery_count"], 1),
        "avg_read_seconds": ratio(float(row["read_seconds_sum"]), totals["read_count"], 1),
    }


_SUMS = ", ".join(f"COALESCE(sum({c}), 0) AS {c}" for c in SUMMED)


def overview(session: Session, principal: Principal, *, start: datetime | None = None, end: datetime | None = None,
             client_id: str | None = None, campaign_id: str | None = None) -> dict:
    """The totals of a range, with rates, average times and the most frequent failure codes."""
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    where, params = scope(session, principal, client_id, campaign_id)
    source = _source(start, end, params)
    row = session.execute(text(f"SELECT {_SUMS} FROM {source} AND {where}"), params).one()._mapping
    failures = session.execute(text(f"""
        SELECT e.key AS code, sum(e.value::bigint) AS n
        FROM (SELECT failures FROM {source} AND {where}) r, jsonb_each_text(r.failures) e
        GROUP BY e.key ORDER BY n DESC, code LIMIT {TOP_FAILURES}"""), params)
    buckets: dict[str, int] = dict(session.execute(text(f"""
        SELECT e.key, sum(e.value::bigint) FROM (SELECT response_buckets FROM {source} AND {where}) r,
            jsonb_each_text(r.response_buckets) e GROUP BY e.key"""), params).all())
    return {"from": start, "to": end, **_figures(row, buckets),
            "top_failures": [{"code": r.code, "count": int(r.n)} for r in failures]}


def breakdown(session: Session, principal: Principal, *, by: str, start: datetime | None = None,
              end: datetime | None = None, client_id: str | None = None, campaign_id: str | None = None,
              limit: int = 100) -> dict:
    """The figures of a range per client or per campaign, most sent first (at most ``limit`` rows).
    Messages outside campaigns are one row of their own (``id`` null) in a campaign breakdown."""
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    where, params = scope(session, principal, client_id, campaign_id)
    source = _source(start, end, params)
    key = {"client": "client_id", "campaign": "campaign_id"}[by]
    params["limit"] = limit
    rows = session.execute(text(f"""
        SELECT {key} AS id, {_SUMS} FROM {source} AND {where}
        GROUP BY {key} ORDER BY sum(sent) DESC, sum(received) DESC, {key} LIMIT :limit"""), params).all()
    ids = [r.id for r in rows]
    params["ids"] = ids
    buckets: dict[str, dict] = {i: {} for i in ids}
    for r in session.execute(text(f"""
            SELECT t.{key} AS id, e.key AS lower, sum(e.value::bigint) AS n
            FROM (SELECT {key}, response_buckets FROM {source} AND {where} AND {key} = ANY(CAST(:ids AS text[]))) t,
                jsonb_each_text(t.response_buckets) e GROUP BY 1, 2"""), params):
        buckets[r.id][r.lower] = int(r.n)
    model = Client if by == "client" else Campaign
    names = dict(session.execute(select(model.id, model.name).where(
        model.organization_id == principal.organization_id, model.id.in_([i for i in ids if i]))).all())
    return {"by": by, "from": start, "to": end, "rows": [
        {"id": r.id or None, "name": names.get(r.id), **_figures(r._mapping, buckets[r.id])} for r in rows]}


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
    start, end = checked_range(start, end, MAX_HOURLY_RANGE_DAYS if granularity == "hour" else MAX_RANGE_DAYS)
    where, params = scope(session, principal, client_id, campaign_id)
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
