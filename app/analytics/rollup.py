"""The analytics rollups: ``analytics_hourly`` and ``analytics_daily`` from the messages.

What a bucket holds (docs/analytics.md says it for users): the messages *created* in that UTC hour on
that client and campaign ('' for none), each counted once in that bucket whatever time its acks
come — a read three days later changes the bucket of the message's own hour.

- ``sent``: outbound messages that reached the transport (``sent_at``, ``delivered_at`` or
  ``read_at`` set: a read ack that overtook the delivered one still means sent and delivered);
  ``delivered``: ``delivered_at`` or ``read_at`` set; ``read``: ``read_at`` set; ``failed``: status
  ``failed``, and ``failures`` ``{error code: count}`` of those ('unknown' without a code).
- ``received``: inbound messages. ``opted_out``: contacts who opted out by a keyword, counted by the
  one confirmation sent back to each (its idempotency key starts with ``opt-out:``).
- ``replied``: outbound messages after which the contact wrote on that client within
  ``ANALYTICS_REPLY_WINDOW`` seconds. ``response_seconds_sum / response_count``: for each inbound
  message, the time to our first outbound message to that contact on that client within the same
  window (unanswered ones are not counted); ``response_buckets`` counts those times by
  ``RESPONSE_BOUNDS`` (a histogram: the p90 of any range is read from the sum of its buckets').
- ``delivery_seconds_* / read_seconds_*``: ``sent_at`` -> ``delivered_at`` / ``read_at``.

How it is kept up to date: a bucket is never incremented. The job (``analytics.rollup``) reads the
``message_status_history`` rows it has not read yet, finds the buckets their messages touch (the
message's own hour, and the hours of that chat's messages within the reply window before it, whose
``replied`` / response may change) and recomputes those buckets from ``messages`` (delete + insert),
then the UTC days of them from the hourly rows. Recomputing makes every run idempotent: reading a
history row twice, out-of-order acks and late acks give the same numbers. Runs hold a
transaction-scoped advisory lock (a second concurrent run skips), and the watermark moves in the same
transaction as the buckets.

The watermark (``analytics_watermarks``) cannot simply be the largest id read: a transaction that
took a smaller id may commit later. So a run reads every row above ``safe_id``; it records the
largest id it saw (``seen_id``) and the snapshot's ``xmax`` after reading it (``seen_xmax``); a later
run whose snapshot ``xmin`` is past ``seen_xmax`` (every transaction that could hold a smaller id has
ended) moves ``safe_id`` up to ``seen_id``. Rows between the two are read again, which recomputing
makes harmless.

The backfill (``python -m app analytics-backfill``) recomputes every bucket of a range the same way,
one UTC day per transaction: it replaces what was there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.messages.tracking import OPT_OUT_KEY_PREFIX
from config import settings

log = logging.getLogger(__name__)

ROLLUP_ACTOR = "analytics.rollup"
WATERMARK = "status_history"
#: pg_advisory_xact_lock key of every rollup and backfill transaction ('anly')
LOCK_KEY = 0x616E6C79


#: the lower bounds (seconds) of the response-time histogram a bucket keeps (``response_buckets``:
#: {bound: count}); a percentile of a range is interpolated inside the bucket it falls in
RESPONSE_BOUNDS = (0, 5, 10, 15, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200,
                   10800, 14400, 21600, 28800, 43200, 64800, 86400, 172800, 345600, 604800)


def response_percentile(buckets: dict[str, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the response times counted in ``buckets`` ({lower bound: count}),
    interpolated linearly inside its bucket; None when there are none."""
    counts = sorted((float(lower), int(n)) for lower, n in buckets.items() if int(n) > 0)
    total = sum(n for _, n in counts)
    if not total:
        return None
    target, below = q * total, 0
    for lower, n in counts:
        if below + n >= target:
            upper = next((float(b) for b in RESPONSE_BOUNDS if b > lower), lower)
            return round(lower + (upper - lower) * (target - below) / n, 1)
        below += n
    return counts[-1][0]


@dataclass(frozen=True)
class RollupResult:
    ran: bool  # False: another run held the lock
    history_rows: int = 0
    hours: int = 0
    days: int = 0


_TOUCHED = text("""
    WITH h AS (SELECT DISTINCT message_id FROM message_status_history WHERE id > :after),
    m AS (SELECT msg.client_id, msg.contact_id, msg.created_at FROM h JOIN messages msg ON msg.id = h.message_id)
    SELECT DISTINCT client_id, date_trunc('hour', created_at, 'UTC') AS hour FROM (
        SELECT client_id, created_at FROM m
        UNION ALL
        SELECT o.client_id, o.created_at
        FROM m JOIN messages o ON o.client_id = m.client_id AND o.contact_id = m.contact_id
            AND o.created_at >= m.created_at - make_interval(secs => :window) AND o.created_at <= m.created_at
        WHERE m.contact_id IS NOT NULL
    ) x
""")

_DELETE_HOURS = text("""
    DELETE FROM analytics_hourly a
    USING unnest(CAST(:clients AS text[]), CAST(:hours AS timestamptz[])) AS t(client_id, hour)
    WHERE a.client_id = t.client_id AND a.bucket = t.hour
""")

_INSERT_HOURS = text("""
    WITH t AS (SELECT * FROM unnest(CAST(:clients AS text[]), CAST(:hours AS timestamptz[])) AS t(client_id, hour)),
    m AS (
        SELECT msg.organization_id, msg.client_id, COALESCE(msg.campaign_id, '') AS campaign_id, t.hour,
               msg.direction, msg.status, msg.error_code, msg.idempotency_key, msg.contact_id, msg.created_at,
               msg.sent_at, msg.delivered_at, msg.read_at
        FROM t CROSS JOIN LATERAL (  -- a client's hour, through messages_client_created_idx
            SELECT * FROM messages msg WHERE msg.client_id = t.client_id
                AND msg.created_at >= t.hour AND msg.created_at < t.hour + interval '1 hour') msg
    ),
    x AS (
        SELECT m.*,
            m.direction = 'outbound' AND m.contact_id IS NOT NULL AND EXISTS (
                SELECT 1 FROM messages i
                WHERE i.client_id = m.client_id AND i.contact_id = m.contact_id AND i.direction = 'inbound'
                  AND i.created_at > m.created_at AND i.created_at <= m.created_at + make_interval(secs => :window)
            ) AS replied,
            CASE WHEN m.direction = 'inbound' AND m.contact_id IS NOT NULL THEN (
                SELECT min(o.created_at) FROM messages o
                WHERE o.client_id = m.client_id AND o.contact_id = m.contact_id AND o.direction = 'outbound'
                  AND o.created_at > m.created_at AND o.created_at <= m.created_at + make_interval(secs => :window)
            ) END AS answered_at
        FROM m
    ),
    f AS (
        SELECT client_id, campaign_id, hour, jsonb_object_agg(code, n) AS failures
        FROM (SELECT client_id, campaign_id, hour, COALESCE(error_code, 'unknown') AS code, count(*) AS n
              FROM x WHERE direction = 'outbound' AND status = 'failed' GROUP BY 1, 2, 3, 4) y
        GROUP BY 1, 2, 3
    ),
    r AS (
        SELECT client_id, campaign_id, hour, jsonb_object_agg(lower, n) AS buckets
        FROM (SELECT client_id, campaign_id, hour,
                     ((CAST(:bounds AS float8[]))[width_bucket(extract(epoch FROM answered_at - created_at)::float8,
                                                               CAST(:bounds AS float8[]))])::bigint::text AS lower,
                     count(*) AS n
              FROM x WHERE answered_at IS NOT NULL GROUP BY 1, 2, 3, 4) y
        GROUP BY 1, 2, 3
    )
    INSERT INTO analytics_hourly (
        organization_id, client_id, campaign_id, bucket, sent, delivered, read, failed, failures, received, replied,
        opted_out, response_seconds_sum, response_count, response_buckets, delivery_seconds_sum, delivery_count,
        read_seconds_sum, read_count, updated_at)
    SELECT x.organization_id, x.client_id, x.campaign_id, x.hour,
        count(*) FILTER (WHERE x.direction = 'outbound'
                         AND (x.sent_at IS NOT NULL OR x.delivered_at IS NOT NULL OR x.read_at IS NOT NULL)),
        count(*) FILTER (WHERE x.direction = 'outbound' AND (x.delivered_at IS NOT NULL OR x.read_at IS NOT NULL)),
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.read_at IS NOT NULL),
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.status = 'failed'),
        COALESCE(f.failures, '{}'::jsonb),
        count(*) FILTER (WHERE x.direction = 'inbound'),
        count(*) FILTER (WHERE x.replied),
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.idempotency_key LIKE :opt_out),
        COALESCE(sum(extract(epoch FROM x.answered_at - x.created_at)), 0),
        count(x.answered_at),
        COALESCE(r.buckets, '{}'::jsonb),
        COALESCE(sum(extract(epoch FROM x.delivered_at - x.sent_at))
                 FILTER (WHERE x.direction = 'outbound' AND x.delivered_at >= x.sent_at), 0),
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.delivered_at >= x.sent_at),
        COALESCE(sum(extract(epoch FROM x.read_at - x.sent_at))
                 FILTER (WHERE x.direction = 'outbound' AND x.read_at >= x.sent_at), 0),
        count(*) FILTER (WHERE x.direction = 'outbound' AND x.read_at >= x.sent_at),
        now()
    FROM x LEFT JOIN f ON f.client_id = x.client_id AND f.campaign_id = x.campaign_id AND f.hour = x.hour
        LEFT JOIN r ON r.client_id = x.client_id AND r.campaign_id = x.campaign_id AND r.hour = x.hour
    GROUP BY x.organization_id, x.client_id, x.campaign_id, x.hour, f.failures, r.buckets
""")

#: the numbers of a rollup row that a coarser row (or a query) sums; the two jsonb counts are merged key by key
SUMMED_COLUMNS = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out", "response_seconds_sum",
                   "response_count", "delivery_seconds_sum", "delivery_count", "read_seconds_sum", "read_count")


def fold_sql(target: str, keys: tuple[str, ...], ctes: str, source: str) -> str:
    """``INSERT INTO target`` one row per ``keys`` of the rollup rows ``source`` selects (the keys and
    every count column): the counts summed, ``failures`` and ``response_buckets`` merged key by key."""
    k = ", ".join(keys)
    merged = {
        col: f"""{col[0]} AS (SELECT {k}, jsonb_object_agg(j, n) AS {col} FROM (
                SELECT {k}, e.key AS j, sum(e.value::bigint) AS n FROM s, jsonb_each_text(s.{col}) e
                GROUP BY {k}, e.key) y GROUP BY {k})"""
        for col in ("failures", "response_buckets")}
    sums = ", ".join(f"sum(s.{c})" for c in SUMMED_COLUMNS)
    return f"""
        WITH {ctes}{", " if ctes else ""}s AS MATERIALIZED ({source}),
            {merged["failures"]}, {merged["response_buckets"]}
        INSERT INTO {target} ({k}, {", ".join(SUMMED_COLUMNS)}, failures, response_buckets, updated_at)
        SELECT {", ".join(f"s.{c}" for c in keys)}, {sums}, COALESCE(f.failures, '{{}}'::jsonb),
            COALESCE(r.response_buckets, '{{}}'::jsonb), now()
        FROM s LEFT JOIN f USING ({k}) LEFT JOIN r USING ({k})
        GROUP BY {", ".join(f"s.{c}" for c in keys)}, f.failures, r.response_buckets"""


_COUNTS = ", ".join(f"a.{c}" for c in (*SUMMED_COLUMNS, "failures", "response_buckets"))
_DAY_OF = "a.bucket >= t.day::timestamp AT TIME ZONE 'UTC' AND a.bucket < (t.day + 1)::timestamp AT TIME ZONE 'UTC'"

_DELETE_DAYS = text("""
    DELETE FROM analytics_daily a
    USING unnest(CAST(:clients AS text[]), CAST(:days AS date[])) AS t(client_id, day)
    WHERE a.client_id = t.client_id AND a.bucket = t.day
""")

_INSERT_DAYS = text(fold_sql(
    "analytics_daily", ("organization_id", "client_id", "campaign_id", "bucket"),
    "t AS (SELECT * FROM unnest(CAST(:clients AS text[]), CAST(:days AS date[])) AS t(client_id, day))",
    f"""SELECT a.organization_id, a.client_id, a.campaign_id, t.day AS bucket, {_COUNTS}
        FROM t CROSS JOIN LATERAL (
            SELECT * FROM analytics_hourly a WHERE a.client_id = t.client_id AND {_DAY_OF}) a"""))

def _total_keys(unit: str, sql_type: str, name: str) -> str:
    """CTEs ``p`` and ``{name}``: the totals' keys of the recomputed (client, ``unit``) pairs passed as
    ``:clients`` and ``:{unit}s`` — each client's, and its organisation's ('')."""
    return f"""
    p AS (SELECT DISTINCT c.organization_id, x.client_id, x.{unit}
          FROM unnest(CAST(:clients AS text[]), CAST(:{unit}s AS {sql_type}[])) AS x(client_id, {unit})
          JOIN clients c ON c.id = x.client_id),
    {name} AS (SELECT organization_id, client_id, {unit} FROM p UNION SELECT organization_id, '', {unit} FROM p)"""


def _delete_totals(table: str, keys: str, name: str, unit: str):
    return text(f"""
        WITH {keys}
        DELETE FROM {table} a USING {name}
        WHERE a.organization_id = {name}.organization_id AND a.client_id = {name}.client_id
          AND a.bucket = {name}.{unit}""")


_TOTAL_KEYS = _total_keys("hour", "timestamptz", "k")
_DELETE_TOTAL_HOURS = _delete_totals("analytics_totals_hourly", _TOTAL_KEYS, "k", "hour")

_INSERT_TOTAL_HOURS = text(fold_sql(
    "analytics_totals_hourly", ("organization_id", "client_id", "bucket"), _TOTAL_KEYS.strip(),
    f"""SELECT k.organization_id, k.client_id, k.hour AS bucket, {_COUNTS}
        FROM k CROSS JOIN LATERAL (SELECT * FROM analytics_hourly a WHERE k.client_id <> ''
                                   AND a.client_id = k.client_id AND a.bucket = k.hour) a
        UNION ALL
        SELECT k.organization_id, k.client_id, k.hour AS bucket, {_COUNTS}
        FROM k CROSS JOIN LATERAL (SELECT * FROM analytics_hourly a WHERE k.client_id = ''
                                   AND a.organization_id = k.organization_id AND a.bucket = k.hour) a"""))

_TOTAL_DAY_KEYS = _total_keys("day", "date", "t")
_DELETE_TOTAL_DAYS = _delete_totals("analytics_totals_daily", _TOTAL_DAY_KEYS, "t", "day")

_INSERT_TOTAL_DAYS = text(fold_sql(
    "analytics_totals_daily", ("organization_id", "client_id", "bucket"), _TOTAL_DAY_KEYS.strip(),
    f"""SELECT t.organization_id, t.client_id, t.day AS bucket, {_COUNTS}
        FROM t CROSS JOIN LATERAL (SELECT * FROM analytics_totals_hourly a WHERE a.organization_id = t.organization_id
                                   AND a.client_id = t.client_id AND {_DAY_OF}) a"""))


def recompute(session: Session, pairs: set[tuple[str, datetime]]) -> tuple[int, int]:
    """Recompute the hourly buckets of ``pairs`` (client id, UTC hour start) from the messages, the
    daily buckets of their days from the hourly ones, and the totals (per client and per organisation,
    campaigns summed) of those hours and days (replacing them all). Returns (hours, days)."""
    if not pairs:
        return 0, 0
    ordered = sorted(pairs)
    params = {"clients": [c for c, _ in ordered], "hours": [h for _, h in ordered],
              "window": float(settings.ANALYTICS_REPLY_WINDOW), "opt_out": OPT_OUT_KEY_PREFIX + "%",
              "bounds": [float(b) for b in RESPONSE_BOUNDS]}
    session.execute(_DELETE_HOURS, params)
    session.execute(_INSERT_HOURS, params)
    days = sorted({(c, h.astimezone(UTC).date()) for c, h in ordered})
    day_params = {"clients": [c for c, _ in days], "days": [d for _, d in days]}
    session.execute(_DELETE_DAYS, day_params)
    session.execute(_INSERT_DAYS, day_params)
    session.execute(_DELETE_TOTAL_HOURS, params)
    session.execute(_INSERT_TOTAL_HOURS, params)
    session.execute(_DELETE_TOTAL_DAYS, day_params)
    session.execute(_INSERT_TOTAL_DAYS, day_params)
    return len(ordered), len(days)


def _snapshot(session: Session, which: str) -> int:
    return int(session.execute(text(f"SELECT pg_snapshot_{which}(pg_current_snapshot())::text::bigint")).scalar_one())


def _no_jit(session: Session) -> None:
    """The recompute statements look costly to the planner (correlated subqueries over messages), so
    it JIT-compiles them, which costs more than it saves: with JIT off a run of 1,000 scattered
    changes took 2.2 s instead of 3.8 s (bench/bench_analytics.py)."""
    session.execute(text("SET LOCAL jit = off"))


def run_rollup(session: Session) -> RollupResult:
    """One incremental run (``analytics.rollup``): fold the status history rows not read yet into the
    buckets of their messages. Skips (``ran=False``) when another run holds the lock. The caller commits."""
    if not session.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_KEY}).scalar_one():
        return RollupResult(ran=False)
    _no_jit(session)
    xmin = _snapshot(session, "xmin")  # before reading: every transaction below it has ended
    session.execute(text("INSERT INTO analytics_watermarks (name) VALUES (:n) ON CONFLICT (name) DO NOTHING"),
                    {"n": WATERMARK})
    mark = session.execute(text("SELECT safe_id, seen_id, seen_xmax FROM analytics_watermarks WHERE name = :n"),
                           {"n": WATERMARK}).one()
    after = mark.safe_id
    read, largest = session.execute(text("SELECT count(*), max(id) FROM message_status_history WHERE id > :after"),
                                    {"after": after}).one()
    pairs = {(r.client_id, r.hour) for r in session.execute(
        _TOUCHED, {"after": after, "window": float(settings.ANALYTICS_REPLY_WINDOW)})}
    xmax = _snapshot(session, "xmax")  # after reading: any transaction holding an id we saw is below it
    hours, days = recompute(session, pairs)
    safe = mark.seen_id if xmin >= mark.seen_xmax else after
    seen = max(largest or 0, mark.seen_id, safe)
    session.execute(text("""UPDATE analytics_watermarks SET safe_id = :safe, seen_id = :seen, seen_xmax = :xmax,
                            updated_at = now() WHERE name = :n"""),
                    {"safe": safe, "seen": seen, "xmax": xmax, "n": WATERMARK})
    return RollupResult(ran=True, history_rows=int(read), hours=hours, days=days)


def backfill_day(session: Session, day: date, organization_id: str | None = None) -> tuple[int, int]:
    """Recompute every bucket of one UTC day from the messages (replacing what was there), under the
    rollup's lock (waiting for a running rollup). The caller commits. Returns (hours, days)."""
    session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": LOCK_KEY})
    _no_jit(session)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    params = {"start": start, "end": start + timedelta(days=1), "day": day, "org": organization_id}
    rows = session.execute(text("""
        SELECT client_id, date_trunc('hour', created_at, 'UTC') AS hour FROM messages
        WHERE created_at >= :start AND created_at < :end AND (CAST(:org AS text) IS NULL OR organization_id = :org)
        UNION
        SELECT client_id, bucket FROM analytics_hourly
        WHERE bucket >= :start AND bucket < :end AND (CAST(:org AS text) IS NULL OR organization_id = :org)
        UNION
        SELECT client_id, bucket::timestamp AT TIME ZONE 'UTC' FROM analytics_daily
        WHERE bucket = :day AND (CAST(:org AS text) IS NULL OR organization_id = :org)
    """), params)
    return recompute(session, {(r.client_id, r.hour) for r in rows})


def days_between(start: date, end: date) -> list[date]:
    """The UTC days from ``start`` to ``end``, both included."""
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]
