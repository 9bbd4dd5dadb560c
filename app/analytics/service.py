"""Analytics read from the rollups only (never from ``messages``): the overview of a range, time
series by hour or by day in the caller's time zone, and breakdowns per client or campaign.

A range ``[from, to)`` takes the buckets whose hour starts in it (a bucket holds the messages created
in that hour, docs/analytics.md), read as the daily rows of its whole UTC days and the hourly rows
of the hours around them; without a campaign the totals (campaigns summed) are read. Agents see only
the clients assigned to them. The CSV exports are app/analytics/exports.py.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.analytics.rollup import SUMMED_COLUMNS as SUMMED
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


def checked_range(start: datetime | None, end: datetime | None, max_days: int) -> tuple[datetime, datetime]:
    end = end or utcnow()
    start = start or end - DEFAULT_RANGE
    if start > end:
        raise ValidationError("from is after to", details={"from": ["must not be after `to`"]})
    if end - start > timedelta(days=max_days):
        raise ValidationError(f"the range is longer than {max_days} days",
                              details={"to": [f"at most {max_days} days after `from`"]})
    return start, end


@dataclass(frozen=True)
class Scope:
    """Which rollup rows a query reads: the WHERE (with ``params``) and the hourly and daily tables.
    Without a campaign the totals (campaigns summed) serve: one row per client, or per organisation
    (``client_id`` ''), per hour or day; with one, the rollups themselves."""

    where: str
    params: dict
    hourly: str
    daily: str


def scope(session: Session, principal: Principal, client_id: str | None, campaign_id: str | None, *,
          per_client: bool = False, per_campaign: bool = False) -> Scope:
    """The rollup rows the principal may see of a client (or their clients) and a campaign (or all):
    404 for a client or campaign of another tenant, or not assigned to an agent. ``per_client`` /
    ``per_campaign``: rows that keep the client / campaign apart (a breakdown, an export)."""
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
    if campaign_id or per_campaign:
        return Scope(" AND ".join(where), params, "analytics_hourly", "analytics_daily")
    if not client_id and principal.client_ids is None:
        where.append("client_id <> ''" if per_client else "client_id = ''")
    return Scope(" AND ".join(where), params, "analytics_totals_hourly", "analytics_totals_daily")


def _few_rows(session: Session) -> None:
    """Reads of a few hundred rollup rows: a parallel plan (which the planner picks, counting a
    hundred rows per jsonb_each) costs more in starting workers than the whole query."""
    session.execute(text("SET LOCAL max_parallel_workers_per_gather = 0"))


def is_midnight(when: datetime) -> bool:
    return when.astimezone(UTC).time() == datetime.min.time()


_ROW_COLUMNS = ", ".join((*SUMMED, "failures", "response_buckets"))


def rows_of(start: datetime, end: datetime, at: Scope, key: str | None = None) -> str:
    """A subquery (``r``) of the rollup rows of ``[start, end)``: the daily rows of the whole UTC days
    in it, the hourly rows of the hours before and after them (only hourly rows when the range holds
    no whole day), with ``key`` (client_id, campaign_id) when asked. Each part is an index range."""
    columns = f"{key}, {_ROW_COLUMNS}" if key else _ROW_COLUMNS
    first = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    first = first if first == start else first + timedelta(days=1)
    last = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if first >= last:
        first = last = end
    parts = []
    for name, lo, hi in (("h1", start, first), ("h2", last, end)):
        if lo < hi:
            at.params.update({f"{name}s": lo, f"{name}e": hi})
            parts.append(f"SELECT {columns} FROM {at.hourly} WHERE bucket >= :{name}s AND bucket < :{name}e"
                         f" AND {at.where}")
    if first < last:
        at.params.update(d1=first.date(), d2=last.date())
        parts.append(f"SELECT {columns} FROM {at.daily} WHERE bucket >= :d1 AND bucket < :d2 AND {at.where}")
    return "(" + (" UNION ALL ".join(parts) or f"SELECT {columns} FROM {at.hourly} WHERE false") + ") r"


def ratio(part: float, whole: float, digits: int = 4) -> float | None:
    return round(part / whole, digits) if whole else None


def figures(row, buckets: dict) -> dict:
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
    at = scope(session, principal, client_id, campaign_id)
    _few_rows(session)
    rows = rows_of(start, end, at)
    row = session.execute(text(f"SELECT {_SUMS} FROM {rows}"), at.params).one()._mapping
    failures = session.execute(text(f"""
        SELECT e.key AS code, sum(e.value::bigint) AS n FROM {rows}, jsonb_each_text(r.failures) e
        GROUP BY e.key ORDER BY n DESC, code LIMIT {TOP_FAILURES}"""), at.params)
    buckets: dict[str, int] = dict(session.execute(text(f"""
        SELECT e.key, sum(e.value::bigint) FROM {rows}, jsonb_each_text(r.response_buckets) e GROUP BY e.key"""),
        at.params).all())
    return {"from": start, "to": end, **figures(row, buckets),
            "top_failures": [{"code": r.code, "count": int(r.n)} for r in failures]}


def breakdown(session: Session, principal: Principal, *, by: str, start: datetime | None = None,
              end: datetime | None = None, client_id: str | None = None, campaign_id: str | None = None,
              limit: int = 100) -> dict:
    """The figures of a range per client or per campaign, most sent first (at most ``limit`` rows).
    Messages outside campaigns are one row of their own (``id`` null) in a campaign breakdown."""
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    key = {"client": "client_id", "campaign": "campaign_id"}[by]
    at = scope(session, principal, client_id, campaign_id, per_client=by == "client", per_campaign=by == "campaign")
    at.params["limit"] = limit
    _few_rows(session)
    found = session.execute(text(f"""
        SELECT {key} AS id, {_SUMS} FROM {rows_of(start, end, at, key)}
        GROUP BY {key} ORDER BY sum(sent) DESC, sum(received) DESC, {key} LIMIT :limit"""), at.params).all()
    ids = [r.id for r in found]
    at.params["ids"] = ids
    buckets: dict[str, dict] = {i: {} for i in ids}
    for r in session.execute(text(f"""
            SELECT r.{key} AS id, e.key AS lower, sum(e.value::bigint) AS n
            FROM {rows_of(start, end, at, key)}, jsonb_each_text(r.response_buckets) e
            WHERE r.{key} = ANY(CAST(:ids AS text[])) GROUP BY 1, 2"""), at.params):
        buckets[r.id][r.lower] = int(r.n)
    model = Client if by == "client" else Campaign
    names = dict(session.execute(select(model.id, model.name).where(
        model.organization_id == principal.organization_id, model.id.in_([i for i in ids if i]))).all())
    return {"by": by, "from": start, "to": end, "rows": [
        {"id": r.id or None, "name": names.get(r.id), **figures(r._mapping, buckets[r.id])} for r in found]}


def _zone(tz: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(tz or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError("unknown time zone", details={"tz": [f"not an IANA time zone: {tz!r}"]}) from None


def timeseries(session: Session, principal: Principal, *, metric: str, granularity: str = "day",
               start: datetime | None = None, end: datetime | None = None, client_id: str | None = None,
               campaign_id: str | None = None, tz: str | None = None) -> dict:
    """One metric per hour (UTC hours) or per day of the time zone ``tz``, from the rollups; every
    hour / day of the range is a point (zero when nothing happened)."""
    if metric not in METRICS:
        raise ValidationError("unknown metric", details={"metric": [f"one of {', '.join(METRICS)}"]})
    zone = _zone(tz)
    start, end = checked_range(start, end, MAX_HOURLY_RANGE_DAYS if granularity == "hour" else MAX_RANGE_DAYS)
    at = scope(session, principal, client_id, campaign_id)
    _few_rows(session)
    if granularity == "day":
        points = _days_of_zone(session, at, metric, zone, start, end)
    else:
        first = start.replace(minute=0, second=0, microsecond=0)
        rows = session.execute(text(f"""
            SELECT bucket AS at, sum({metric}) AS value FROM {at.hourly}
            WHERE bucket >= :start AND bucket < :end AND {at.where} GROUP BY bucket"""),
            {**at.params, "start": first, "end": end})
        values = {r.at.astimezone(UTC): int(r.value) for r in rows}
        points = []
        hour = first
        while hour < end:
            points.append({"at": hour, "value": values.get(hour, 0)})
            hour += timedelta(hours=1)
    return {"metric": metric, "granularity": granularity, "tz": zone.key, "points": points}


@functools.lru_cache(maxsize=256)
def _corrections(tz: str, first: date, last: date) -> tuple[str, str, str]:
    """The hours that make the UTC days ``first`` .. ``last`` the days of ``tz`` of the same dates:
    each hour that starts on another day of the zone than its UTC day is taken off its UTC day and
    added to its zone's day (when those are among the days). As three comma-separated lists (hour,
    day, sign): psycopg dumps a list of a thousand datetimes slower than Postgres parses the text.
    Pure, so kept: a dashboard asks for the same days again and again."""
    zone = ZoneInfo(tz)
    inside = {first + timedelta(days=n) for n in range((last - first).days + 1)}
    hours, on, signs = [], [], []
    for n in range(-1, (last - first).days + 2):  # the UTC days around them too
        utc_day = first + timedelta(days=n)
        base = datetime.combine(utc_day, datetime.min.time(), UTC)
        for steps in (range(24), range(23, -1, -1)):  # the day's first hours, then its last ones
            for k in steps:
                hour = base + timedelta(hours=k)
                local = hour.astimezone(zone).date()
                if local == utc_day:
                    break
                for when, sign in ((utc_day, -1), (local, 1)):
                    if when in inside:
                        hours.append(hour.isoformat())
                        on.append(when.isoformat())
                        signs.append(str(sign))
    return ",".join(hours), ",".join(on), ",".join(signs)


def _days_of_zone(session: Session, at: Scope, metric: str, zone: ZoneInfo, start: datetime,
                  end: datetime) -> list[dict]:
    """The days of ``zone`` from the one holding ``start`` until ``end``, each the hours that start on
    it. A whole day D is read as the UTC day D's daily row, minus its hours that start on another day
    of the zone, plus the hours of neighbouring UTC days that start on D: a handful of hourly rows per
    day (none in UTC) instead of 24. A last day that ends after ``end`` is read from its hours."""
    days = []
    day = start.astimezone(zone).date()
    while (midnight := datetime.combine(day, datetime.min.time(), zone)) < end:
        days.append((day, midnight))
        day += timedelta(days=1)
    whole = [d for d, _ in days if datetime.combine(d + timedelta(days=1), datetime.min.time(), zone) <= end]
    params = dict(at.params)
    parts = []
    if whole:
        hours, on, signs = _corrections(zone.key, whole[0], whole[-1])
        params.update(d1=whole[0], d2=whole[-1] + timedelta(days=1), ch=hours, cd=on, cs=signs)
        parts.append(f"SELECT bucket AS day, {metric} AS value FROM {at.daily} "
                     f"WHERE bucket >= :d1 AND bucket < :d2 AND {at.where}")
        if hours:
            parts.append(f"""
                SELECT c.day, c.sign * h.value
                FROM unnest(CAST(string_to_array(:ch, ',') AS timestamptz[]), CAST(string_to_array(:cd, ',') AS date[]),
                            CAST(string_to_array(:cs, ',') AS int[])) AS c(hour, day, sign)
                JOIN (SELECT u.hour, sum(x.{metric}) AS value  -- one index probe per hour (OFFSET 0: not a join)
                      FROM (SELECT DISTINCT unnest(CAST(string_to_array(:ch, ',') AS timestamptz[])) AS hour) u
                      CROSS JOIN LATERAL (SELECT {metric} FROM {at.hourly}
                                          WHERE bucket = u.hour AND {at.where} OFFSET 0) x
                      GROUP BY u.hour) h ON h.hour = c.hour""")
    if days and (not whole or days[-1][0] != whole[-1]):
        params.update(pday=days[-1][0], pstart=days[-1][1].astimezone(UTC), pend=end)
        parts.append(f"SELECT CAST(:pday AS date), {metric} FROM {at.hourly} "
                     f"WHERE bucket >= :pstart AND bucket < :pend AND {at.where}")
    by_day: dict = {}
    if parts:
        for r in session.execute(text(f"SELECT day, sum(value) AS value FROM ({' UNION ALL '.join(parts)}) x "
                                      "GROUP BY day"), params):
            by_day[r.day] = int(r.value)
    return [{"at": midnight, "value": by_day.get(d, 0)} for d, midnight in days]
