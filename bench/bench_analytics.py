"""Benchmark of analytics: the read latency of the overview and the time series over a year of
rollups, the cost of the rollup job per 1,000 status changes, and the memory of a streamed export.

  (1) latency: ``GET /api/analytics/overview`` over 7, 30 and 365 days, each with both ends UTC
      midnights (daily rows only) and with ends one hour off midnight (the whole days' daily rows
      and the hours around them), and ``GET /api/analytics/timeseries`` by hour (31 days) and
      by day (365 days, ``tz=Europe/Paris``), each for the whole organisation (an admin API key),
      one client (``client_id``) and an agent restricted to a quarter of the clients (an agent's
      API key). The rollups hold ~10,000,000 messages of history made directly in SQL: one
      organisation with 20 clients x 6 campaigns ('' and 5) x 367 days x 24 hours of hourly rows
      (~9.9 messages each), the daily rows summed from them and the totals per client and per
      organisation (campaigns summed) as the rollup keeps them (failures by code and
      ``response_buckets`` included), beside 3 other organisations whose
      rows the queries must skip. Each request is timed at the client, 2 keep-alive connections in
      parallel; the anchor is ``GET /api/anchor/clients/<id>`` of bench/anchor_app.py (one indexed
      SELECT of a row, Flask alone) under the same gunicorn shape, measured in turn before or after
      each query with the same load. Goal: p99 < 50 ms.
  (2) rollup cost: a second organisation (10 clients, 50,000 contacts) holds 1,000,000 real
      messages of the last 30 days with their status history (the rollup's watermark past it);
      batches of 1,000 and 10,000 status changes are then written as the product writes them (a
      mix: 30% new sends, 25% delivered acks for the last 2 hours' messages, 25% read acks for the
      last day's (both windows widen when a batch needs more messages than they hold), 10% late
      read acks for messages 2 to 7 days old, 10% inbound messages on the chats of recent
      messages; picks are random and distinct, so a batch is a little under its nominal size),
      and the ``analytics.rollup`` job is sent to a real ``default`` pool process. Per batch: its
      run, then the next run with nothing new (the watermark's safety margin makes every run read
      the previous run's rows again: that second read is part of the cost of a change). Printed:
      server CPU (pool + Postgres + Redis) and wall time per 1,000 changes. No anchor does this
      work; the line beside it is the least any consumer of the same rows pays: one
      ``INSERT ... SELECT`` copying those history rows into a scratch table.
  (3) export: ``GET /api/analytics/export?what=messages`` over the range holding the 1,000,000
      messages of (2), read by the client in 1 MiB reads; the RSS of the api's gunicorn workers is
      sampled every 25 ms (goal: flat, under 50 MB above the worker's RSS at the start), with
      rows/s, bytes and server CPU per 1,000 rows; the anchor ``GET /api/anchor/export?rows=N``
      streams as many message-like CSV rows made up in Python (no database).

Every process involved runs as in production: the api (``wsgi:app``) and the anchor under the
api's gunicorn config (2 workers x 4 threads), one ``default`` pool process, Postgres and Redis.
CPU is that of the server side only (bench/common.py ``ServerMeter``); not this process, which is
the load (it also polls the watermark every 20 ms to see a run end: that query is counted).

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench_analytics``, is recreated on that server; give Redis a database or a server of its own),
else embedded servers in a temporary directory. With an external Postgres, "postgres" CPU is that
of the backends connected to the bench's database (other databases' users are left out; the
server's background processes, autovacuum and the checkpointer, are not counted either). Run:
``.venv/bin/python bench/bench_analytics.py`` (6 to 10 minutes, most of it making the data;
``--quick``: ~350,000 messages in rollups (2 clients x 2 campaigns), 100,000 real messages and
fewer requests and batches, about 1 to 2 minutes; ``--parts latency,rollup,export`` for some).
"""
from __future__ import annotations

import argparse
import http.client
import os
import signal
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Processes, ServerMeter, pct, wait_until  # noqa: E402

FULL = {"clients": 20, "campaigns": 5, "other_orgs": 3, "live_messages": 1_000_000, "contacts": 50_000,
        "batches": [1000] * 5 + [10_000] * 4, "requests": 200, "cap_s": 6.0}
QUICK = {"clients": 2, "campaigns": 1, "other_orgs": 3, "live_messages": 100_000, "contacts": 10_000,
         "batches": [1000] * 3 + [10_000], "requests": 40, "cap_s": 3.0}
HISTORY_DAYS = 367  # hourly rows from 366 days before today's UTC midnight to the current hour
LIVE_CLIENTS, LIVE_DAYS = 10, 30
CONNECTIONS = 2
MIN_PER_CONNECTION = 5
WARM_UP = 2  # requests per connection before the timed ones
GOALS = {"p99_ms": 50, "rss_mb": 50}
MiB = 1024 * 1024
SHARED = ("postgres", "redis")
READ_MIB = 1 << 20


def database_backends(url: str):
    """The pids of the backends connected to the bench's database on an external server (the
    meter's own connection left out), read at every meter reading."""
    import psycopg

    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    lock = threading.Lock()

    def pids() -> list[int]:
        with lock:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                                "AND pid <> pg_backend_pid()").fetchall()
        return [r[0] for r in rows]

    return pids


def sql(statement: str, **params):
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        result = session.execute(text(statement), params)
        return result.all() if result.returns_rows else result.rowcount


# ----------------------------------------------------------------------------- tenants and keys


def make_tenant(name: str, clients: int, campaigns: int, agent_clients: int = 0) -> dict:
    """An organisation, its clients and campaigns, an admin API key and (``agent_clients`` > 0) an
    agent user assigned to that many clients with an agent API key of its own."""
    from sqlalchemy import text

    from app.apikeys.service import create_api_key
    from app.db import job_session, new_id
    from app.security.principal import SystemPrincipal
    from bench.bench_messages import make_clients, make_org_and_key

    org_id, key = make_org_and_key(name)
    client_ids = make_clients(org_id, clients, pacing=False, name=f"{name} client ")
    out = {"org": org_id, "key": key, "clients": client_ids, "campaigns": [], "agent_key": None}
    with job_session() as session:
        for i in range(campaigns):
            cid = new_id("cmp")
            session.execute(text("INSERT INTO campaigns (id, organization_id, name, status) "
                                 "VALUES (:id, :org, :name, 'completed')"), {"id": cid, "org": org_id,
                                                                            "name": f"campaign {i}"})
            out["campaigns"].append(cid)
        if agent_clients:
            uid = new_id("usr")
            session.execute(text("INSERT INTO users (id, organization_id, email, password_hash, name, role) "
                                 "VALUES (:id, :org, :email, 'x', 'Agent', 'agent')"),
                            {"id": uid, "org": org_id, "email": f"agent-{uid}@bench.invalid"})
            out["agent_clients"] = client_ids[:agent_clients]
            for c in out["agent_clients"]:
                session.execute(text("INSERT INTO user_clients (user_id, client_id, organization_id) "
                                     "VALUES (:u, :c, :org)"), {"u": uid, "c": c, "org": org_id})
            row, agent_key = create_api_key(session, SystemPrincipal(org_id), name="agent bench", role="agent")
            row.created_by = uid
            out["agent_key"] = agent_key
    return out


# ----------------------------------------------------------------------------- (1) the rollups


def fill_rollups(orgs: list[dict], first: datetime, last: datetime) -> dict:
    """Hourly rows for every client x campaign ('' and the org's campaigns) x hour of [first, last],
    made up (~9.9 messages a row), then the daily rows as their sums. Returns counts."""
    extra_cols = ", response_buckets"
    extra_vals = ", jsonb_build_object('0', rc / 2, '60', rc / 4, '300', rc - rc / 2 - rc / 4)"
    for o in orgs:
        sql(f"""
            INSERT INTO analytics_hourly (organization_id, client_id, campaign_id, bucket, sent, delivered, read,
                failed, failures, received, replied, opted_out, response_seconds_sum, response_count,
                delivery_seconds_sum, delivery_count, read_seconds_sum, read_count{extra_cols})
            SELECT :org, client_id, campaign_id, bucket, sent, delivered, rd, failed,
                CASE WHEN failed = 0 THEN '{{}}'::jsonb
                     ELSE jsonb_build_object(CASE WHEN r3 < 0.7 THEN '131026' ELSE '131049' END, failed) END,
                received, LEAST(rd, rc), (r3 < 0.01)::int, rc * (60 + r2 * 600), rc,
                delivered * (1 + r1 * 3), delivered, rd * (300 + r2 * 3000), rd{extra_vals}
            FROM (
                SELECT client_id, campaign_id, bucket, sent, failed, received, r1, r2, r3,
                       sent - (r1 < 0.1)::int AS delivered,
                       floor((sent - (r1 < 0.1)::int) * (0.5 + 0.4 * r2))::int AS rd,
                       floor(received * 0.8)::int AS rc
                FROM (
                    SELECT c.client_id, k.campaign_id, h.bucket, 3 + floor(random() * 8)::int AS sent,
                           floor(random() * 1.6)::int AS failed, 1 + floor(random() * 5)::int AS received,
                           random() AS r1, random() AS r2, random() AS r3
                    FROM unnest(CAST(:clients AS text[])) c(client_id)
                    CROSS JOIN unnest(CAST(:campaigns AS text[])) k(campaign_id)
                    CROSS JOIN generate_series(CAST(:first AS timestamptz), :last, interval '1 hour') h(bucket)
                ) raw
            ) v""", org=o["org"], clients=o["clients"], campaigns=["", *o["campaigns"]], first=first, last=last)
    jsonb = ["failures", "response_buckets"]
    sums = ("sent", "delivered", "read", "failed", "received", "replied", "opted_out", "response_seconds_sum",
            "response_count", "delivery_seconds_sum", "delivery_count", "read_seconds_sum", "read_count")
    joins = "".join(f"""
        LEFT JOIN (SELECT client_id, campaign_id, day, jsonb_object_agg(code, n) AS j FROM (
                       SELECT client_id, campaign_id, (bucket AT TIME ZONE 'UTC')::date AS day, e.key AS code,
                              sum(e.value::bigint) AS n
                       FROM analytics_hourly, jsonb_each_text({col}) e GROUP BY 1, 2, 3, 4) y
                   GROUP BY 1, 2, 3) j{i} USING (client_id, campaign_id, day)""" for i, col in enumerate(jsonb))
    sql(f"""
        INSERT INTO analytics_daily (organization_id, client_id, campaign_id, bucket, {", ".join(sums)},
                                     {", ".join(jsonb)})
        SELECT s.organization_id, client_id, campaign_id, day, {", ".join(f"s.{c}" for c in sums)},
               {", ".join(f"COALESCE(j{i}.j, '{{}}'::jsonb)" for i in range(len(jsonb)))}
        FROM (SELECT organization_id, client_id, campaign_id, (bucket AT TIME ZONE 'UTC')::date AS day,
                     {", ".join(f"sum({c}) AS {c}" for c in sums)}
              FROM analytics_hourly GROUP BY 1, 2, 3, 4) s {joins}""")
    from app.analytics.rollup import SUMMED_COLUMNS, fold_sql  # the totals, as the rollup keeps them

    counts = ", ".join((*SUMMED_COLUMNS, "failures", "response_buckets"))
    for client in ("client_id", "''"):
        for grain in ("hourly", "daily"):
            sql(fold_sql(f"analytics_totals_{grain}", ("organization_id", "client_id", "bucket"), "",
                         f"SELECT organization_id, {client} AS client_id, bucket, {counts} FROM analytics_{grain}"))
    (hourly, messages), = sql("SELECT count(*), sum(sent + failed + received) FROM analytics_hourly "
                              "WHERE organization_id = :org", org=orgs[0]["org"])
    (daily,), = sql("SELECT count(*) FROM analytics_daily WHERE organization_id = :org", org=orgs[0]["org"])
    (all_hourly, all_daily), = sql("SELECT (SELECT count(*) FROM analytics_hourly), "
                                   "(SELECT count(*) FROM analytics_daily)")
    (h_sent, d_sent), = sql("SELECT (SELECT sum(sent) FROM analytics_hourly), (SELECT sum(sent) FROM analytics_daily)")
    if h_sent != d_sent:
        raise SystemExit(f"bench: the daily rows do not add up to the hourly ones ({d_sent} != {h_sent})")
    return {"hourly": hourly, "daily": daily, "messages": int(messages), "all_hourly": all_hourly,
            "all_daily": all_daily}


def vacuum(*tables: str) -> None:
    """VACUUM ANALYZE outside a transaction (as autovacuum would have, on tables this old)."""
    from app.db import get_engine

    with get_engine().connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        from sqlalchemy import text

        for t in tables:
            conn.execute(text(f"VACUUM ANALYZE {t}"))


# ----------------------------------------------------------------------------- (2) the live messages


def fill_live(live: dict, n: int, contacts: int, start: datetime, end: datetime) -> None:
    """``n`` messages created evenly over [start, end) on ``live``'s clients: chats of 4 messages in
    a row (out, out, in, out) on one contact (each contact on one client); outbound ones read 55%,
    delivered 25%, sent 15%, failed 5%; 10% of them from a campaign. Their status history (sent,
    then the last status; received for inbound), and the rollup's watermark past it all."""
    org, clients, campaigns = live["org"], live["clients"], live["campaigns"]
    sql("""INSERT INTO contacts (id, organization_id, phone, name)
           SELECT 'ctc_L' || lpad(j::text, 8, '0'), :org, '+1555' || lpad(j::text, 7, '0'), 'Contact ' || j
           FROM generate_series(0, :n - 1) j""", org=org, n=contacts)
    step = (end - start).total_seconds() / n
    chunk = 250_000
    for lo in range(0, n, chunk):
        sql("""
            INSERT INTO messages (id, organization_id, client_id, direction, contact_id, to_phone, from_phone, type,
                text, status, error_code, external_id, campaign_id, created_at, updated_at, queued_at, sent_at,
                delivered_at, read_at, failed_at)
            SELECT 'msg_L' || lpad(i::text, 9, '0'), :org, (CAST(:clients AS text[]))[1 + ct % :nc],
                CASE WHEN inbound THEN 'inbound' ELSE 'outbound' END, 'ctc_L' || lpad(ct::text, 8, '0'),
                CASE WHEN inbound THEN '+1415555' || lpad((ct % :nc)::text, 4, '0')
                     ELSE '+1555' || lpad(ct::text, 7, '0') END,
                CASE WHEN inbound THEN '+1555' || lpad(ct::text, 7, '0')
                     ELSE '+1415555' || lpad((ct % :nc)::text, 4, '0') END,
                'text', 'Hello, this is message ' || i || ' of the analytics bench',
                CASE WHEN inbound THEN 'received' WHEN r < 0.55 THEN 'read' WHEN r < 0.80 THEN 'delivered'
                     WHEN r < 0.95 THEN 'sent' ELSE 'failed' END,
                CASE WHEN NOT inbound AND r >= 0.95 THEN (CASE WHEN r < 0.98 THEN '131026' ELSE '131049' END) END,
                'wamid.L' || i,
                CASE WHEN NOT inbound AND r2 < 0.1 THEN (CAST(:campaigns AS text[]))[1 + i % :ncmp] END,
                at, at, at,
                CASE WHEN NOT inbound AND r < 0.95 THEN at + interval '1 second' END,
                CASE WHEN NOT inbound AND r < 0.80 THEN at + interval '3 seconds' END,
                CASE WHEN NOT inbound AND r < 0.55 THEN at + make_interval(secs => 30 + r2 * 3600) END,
                CASE WHEN NOT inbound AND r >= 0.95 THEN at + interval '2 seconds' END
            FROM (SELECT i, (i::bigint / 4 * 7919) % :contacts AS ct, i % 4 = 2 AS inbound, random() AS r,
                         random() AS r2,
                         CAST(:start AS timestamptz) + make_interval(secs => i * :step) AS at
                  FROM generate_series(:lo, :hi - 1) i) g""",
            org=org, clients=clients, nc=len(clients), campaigns=campaigns, ncmp=len(campaigns),
            contacts=contacts, start=start, step=step, lo=lo, hi=min(n, lo + chunk))
    sql("""INSERT INTO message_status_history (organization_id, message_id, status, at)
           SELECT organization_id, id, CASE WHEN direction = 'inbound' THEN 'received' ELSE 'sent' END,
                  COALESCE(sent_at, created_at)
           FROM messages WHERE organization_id = :org AND (direction = 'inbound' OR sent_at IS NOT NULL)
           ORDER BY created_at""", org=org)
    sql("""INSERT INTO message_status_history (organization_id, message_id, status, at)
           SELECT organization_id, id, status, COALESCE(read_at, delivered_at, failed_at)
           FROM messages WHERE organization_id = :org AND status IN ('delivered', 'read', 'failed')
           ORDER BY created_at""", org=org)
    sql("""INSERT INTO analytics_watermarks (name, safe_id, seen_id, seen_xmax)
           SELECT 'status_history', max(id), max(id), 0 FROM message_status_history""")
    live.update(n=n, start=start, end=end, step=step, contacts=contacts)


def write_changes(live: dict, batch: int, tag: str) -> tuple[int, int]:
    """``batch`` status changes as the product writes them (see the docstring's mix), in one
    transaction. Returns the (first, last) ids of the history rows written."""
    now = datetime.now(UTC)
    n, step = live["n"], live["step"]

    def index_at(when: datetime) -> int:
        return max(0, min(n, int((when - live["start"]).total_seconds() / step)))

    k_send, k_deliv, k_read, k_late = int(batch * 0.30), int(batch * 0.25), int(batch * 0.25), int(batch * 0.10)

    def newest(hours: float, k: int) -> tuple[int, int]:
        """The newest messages of the last ``hours``, or more of them when that holds too few
        outbound ones to pick ``k`` distinct (picks are random: twice as many)."""
        return max(0, min(index_at(now - timedelta(hours=hours)), n - int(k * 2 / 0.75))), n

    recent = newest(2, k_deliv)
    day = newest(24, k_read)
    late = (index_at(now - timedelta(days=7)), index_at(now - timedelta(days=2)))
    k_in = batch - k_send - k_deliv - k_read - k_late
    (before,), = sql("SELECT COALESCE(max(id), 0) FROM message_status_history")
    from sqlalchemy import text

    from app.db import job_session

    picks = """SELECT DISTINCT ON (i) 'msg_L' || lpad(i::text, 9, '0') AS id FROM (
                   SELECT (:lo + floor(random() * (:hi - :lo)))::bigint AS i FROM generate_series(1, :k * 3)) s
               WHERE i % 4 <> 2 LIMIT :k"""
    with job_session() as s:
        org, clients, nc = live["org"], live["clients"], len(live["clients"])
        s.execute(text("""
            WITH new AS (
                INSERT INTO messages (id, organization_id, client_id, direction, contact_id, to_phone, from_phone,
                    text, status, external_id, created_at, updated_at, queued_at, sent_at)
                SELECT 'msg_N' || :tag || '_' || j, :org, (CAST(:clients AS text[]))[1 + ct % :nc], 'outbound',
                       'ctc_L' || lpad(ct::text, 8, '0'), '+1555' || lpad(ct::text, 7, '0'),
                       '+1415555' || lpad((ct % :nc)::text, 4, '0'), 'a new send', 'sent', 'wamid.N' || :tag || j,
                       at, now(), at, at + interval '1 second'
                FROM (SELECT j, floor(random() * :contacts)::int AS ct, now() - random() * interval '50 seconds' AS at
                      FROM generate_series(1, :k) j) g
                RETURNING id, sent_at)
            INSERT INTO message_status_history (organization_id, message_id, status, at)
            SELECT :org, id, 'sent', sent_at FROM new"""),
            {"tag": tag, "org": org, "clients": clients, "nc": nc, "contacts": live["contacts"], "k": k_send})
        for (lo, hi), k, status in ((recent, k_deliv, "delivered"), (day, k_read, "read"), (late, k_late, "read")):
            column = "delivered_at" if status == "delivered" else "read_at"
            s.execute(text(f"""
                WITH p AS ({picks}),
                u AS (UPDATE messages m
                      SET status = CASE WHEN m.status IN ('failed', 'read') THEN m.status ELSE :status END,
                             {column} = now(), updated_at = now()
                      FROM p WHERE m.id = p.id RETURNING m.id)
                INSERT INTO message_status_history (organization_id, message_id, status, at)
                SELECT :org, id, :status, now() FROM u"""), {"lo": lo, "hi": hi, "k": k, "status": status, "org": org})
        s.execute(text(f"""
            WITH p AS ({picks}),
            new AS (
                INSERT INTO messages (id, organization_id, client_id, direction, contact_id, to_phone, from_phone,
                    text, status, external_id, created_at, updated_at)
                SELECT 'msg_I' || :tag || '_' || m.id, :org, m.client_id, 'inbound', m.contact_id, m.from_phone,
                       m.to_phone, 'thanks!', 'received', 'wamid.I' || :tag || m.id, now(), now()
                FROM p JOIN messages m ON m.id = p.id
                RETURNING id, created_at)
            INSERT INTO message_status_history (organization_id, message_id, status, at)
            SELECT :org, id, 'received', created_at FROM new"""),
            {"lo": recent[0], "hi": recent[1], "k": k_in, "tag": tag, "org": org})
    (after,), = sql("SELECT max(id) FROM message_status_history")
    return before, after


def watermark_mark() -> tuple:
    rows = sql("SELECT updated_at, safe_id, seen_id FROM analytics_watermarks WHERE name = 'status_history'")
    return tuple(rows[0])


def run_rollup_job(log: Path) -> float:
    """Sends ``analytics.rollup`` to the pool and waits until its run moved the watermark."""
    from jobs.analytics import rollup

    before = watermark_mark()
    rollup.send()

    def done():
        if watermark_mark() != before:
            return True
        if "Traceback" in log.read_text(errors="replace")[-20000:]:
            raise SystemExit(f"bench: the rollup job failed, see {log}")
        return False

    started = time.perf_counter()
    wait_until(done, 600, "the rollup job", interval=0.02)
    return time.perf_counter() - started


def bench_rollup(live: dict, meter: ServerMeter, log: Path, batches: list[int]) -> list[dict]:
    sql("CREATE TABLE IF NOT EXISTS bench_anchor_history (LIKE message_status_history)")
    out = []
    run_rollup_job(log)  # a first run settles the watermark (and warms the pool up)
    run_rollup_job(log)
    for b, size in enumerate(batches):
        first, last = write_changes(live, size, f"{b:03d}")
        changes = last - first
        _, own = meter.measure(lambda: run_rollup_job(log))
        hours = sql("SELECT count(*) FROM analytics_hourly WHERE organization_id = :org AND updated_at = :at",
                    org=live["org"], at=watermark_mark()[0])[0][0]
        _, again = meter.measure(lambda: run_rollup_job(log))
        _, anchor = meter.measure(lambda a=first, b=last: sql(
            "INSERT INTO bench_anchor_history SELECT * FROM message_status_history WHERE id > :a AND id <= :b",
            a=a, b=b))
        row = {"size": size, "changes": changes, "own": own, "again": again, "anchor": anchor, "hours": hours}
        out.append(row)
        print(f"bench:   batch {b + 1}/{len(batches)}: {changes} changes, run {own.wall * 1000:.0f} ms / "
              f"{server(own) * 1000:.0f} ms CPU ({hours} hourly rows rewritten), next run "
              f"{again.wall * 1000:.0f} ms / {server(again) * 1000:.0f} ms CPU", flush=True)
    return out


def server(reading, own: str = "pool:") -> float:
    """The reading's CPU of ``own`` and of Postgres and Redis (the other servers idle beside it)."""
    return reading.of(own, *SHARED)


# ----------------------------------------------------------------------------- HTTP


class Client:
    def __init__(self, port: int, key: str | None):
        self.port, self.key = port, key

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)

    def get(self, conn, path: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        conn.request("GET", path, headers={"X-API-Key": self.key} if self.key else {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - started


def timed(client: Client, path: str, n: int, cap_s: float) -> list[float]:
    """``n`` GETs of ``path`` over CONNECTIONS keep-alive connections (WARM_UP each first, not timed), or
    as many as fit in ``cap_s`` seconds (at least MIN_PER_CONNECTION a connection); the latencies."""
    latencies: list[float] = []
    errors: list = []
    lock = threading.Lock()

    def worker() -> None:
        conn = client.connection()
        for _ in range(WARM_UP):
            client.get(conn, path)
        deadline = time.monotonic() + cap_s
        mine = []
        for i in range(n // CONNECTIONS):
            status, body, took = client.get(conn, path)
            if status != 200:
                errors.append((status, body[:300]))
                return
            mine.append(took)
            if i >= MIN_PER_CONNECTION - 1 and time.monotonic() > deadline:
                break
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: GET {path} failed: {errors[0]}")
    return latencies


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def queries(midnight: datetime) -> list[tuple[str, str, dict]]:
    """(name, path, params) of the measured reads; scope params are added per scope."""
    hour = timedelta(hours=1)
    out = []
    for days in (7, 30, 365):
        start = midnight - timedelta(days=days)
        out.append((f"overview {days} d, daily rows", "/api/analytics/overview",
                    {"from": iso(start), "to": iso(midnight)}))
        out.append((f"overview {days} d, hourly rows", "/api/analytics/overview",
                    {"from": iso(start + hour), "to": iso(midnight + hour)}))
    out.append(("timeseries hour, 31 d", "/api/analytics/timeseries",
                {"metric": "sent", "granularity": "hour", "from": iso(midnight - timedelta(days=31)),
                 "to": iso(midnight)}))
    out.append(("timeseries day, 365 d, Europe/Paris", "/api/analytics/timeseries",
                {"metric": "read", "granularity": "day", "tz": "Europe/Paris",
                 "from": iso(midnight - timedelta(days=365)), "to": iso(midnight)}))
    return out


def check_answers(api: Client, agent: Client, big: dict, midnight: datetime) -> None:
    """The overview's numbers are the organisation's (and the agent's clients') rows, no one else's."""
    import json

    start = midnight - timedelta(days=7)
    conn = api.connection()
    for path_kind, lo, hi in (("daily", start, midnight), ("hourly", start + timedelta(hours=1),
                                                            midnight + timedelta(hours=1))):
        status, body, _ = api.get(conn, "/api/analytics/overview?" + urlencode({"from": iso(lo), "to": iso(hi)}))
        if status != 200:
            raise SystemExit(f"bench: overview answered {status}: {body[:300]!r}")
        got = json.loads(body)["sent"]
        if path_kind == "daily":
            want = sql("SELECT sum(sent) FROM analytics_daily WHERE organization_id = :o AND bucket >= :a "
                       "AND bucket < :b", o=big["org"], a=lo.date(), b=hi.date())[0][0]
        else:
            want = sql("SELECT sum(sent) FROM analytics_hourly WHERE organization_id = :o AND bucket >= :a "
                       "AND bucket < :b", o=big["org"], a=lo, b=hi)[0][0]
        if got != want:
            raise SystemExit(f"bench: the {path_kind} overview says sent={got}, the rows {want}")
    status, body, _ = agent.get(agent.connection(), "/api/analytics/overview?" + urlencode(
        {"from": iso(start), "to": iso(midnight)}))
    want = sql("SELECT sum(sent) FROM analytics_daily WHERE client_id = ANY(:c) AND bucket >= :a AND bucket < :b",
               c=big["agent_clients"], a=start.date(), b=midnight.date())[0][0]
    if status != 200 or json.loads(body)["sent"] != want:
        raise SystemExit(f"bench: the agent's overview ({status}: {body[:200]!r}) is not its clients' {want}")


def bench_latency(api_port: int, anchor_port: int, big: dict, meter: ServerMeter, n: int, cap_s: float) -> list:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    admin, agent = Client(api_port, big["key"]), Client(api_port, big["agent_key"])
    anchor = Client(anchor_port, None)
    check_answers(admin, agent, big, midnight)
    anchor_path = f"/api/anchor/clients/{big['clients'][0]}"
    scopes = [("org", admin, {}), ("one client", admin, {"client_id": big["clients"][0]}),
              (f"agent ({len(big['agent_clients'])} clients)", agent, {})]
    rows = []
    k = 0
    for name, path, params in queries(midnight):
        for scope, client, extra in scopes:
            full = f"{path}?{urlencode({**params, **extra})}"
            measured = {}
            order = [("anchor", anchor, anchor_path), ("api", client, full)]
            for who, target, p in (order if k % 2 == 0 else order[::-1]):
                lat, reading = meter.measure(lambda target=target, p=p: timed(target, p, n, cap_s))
                measured[who] = (lat, server(reading, who))
            k += 1
            (lat, cpu), (alat, acpu) = measured["api"], measured["anchor"]
            row = {"query": name, "scope": scope, "n": len(lat), "p50": pct(lat, 50) * 1000, "p99": pct(lat, 99) * 1000,
                   "a_n": len(alat), "a_p50": pct(alat, 50) * 1000, "a_p99": pct(alat, 99) * 1000,
                   "cpu": cpu * 1000 / (len(lat) + WARM_UP * CONNECTIONS),
                   "a_cpu": acpu * 1000 / (len(alat) + WARM_UP * CONNECTIONS)}
            rows.append(row)
            print(f"bench:   {name} / {scope}: p50 {row['p50']:.1f} ms, p99 {row['p99']:.1f} ms (n={row['n']}); "
                  f"anchor p99 {row['a_p99']:.1f} ms", flush=True)
    return rows


# ----------------------------------------------------------------------------- (3) the export


def stream(client: Client, path: str) -> dict:
    conn = client.connection()
    started = time.perf_counter()
    conn.request("GET", path, headers={"X-API-Key": client.key} if client.key else {})
    resp = conn.getresponse()
    if resp.status != 200:
        raise SystemExit(f"bench: GET {path} answered {resp.status}: {resp.read()[:300]!r}")
    first = None
    size = lines = 0
    while chunk := resp.read1(READ_MIB):
        if first is None:
            first = time.perf_counter() - started
        size += len(chunk)
        lines += chunk.count(b"\n")
    conn.close()
    return {"bytes": size, "rows": lines - 1, "seconds": time.perf_counter() - started, "first_byte": first}


def bench_export(api, anchor, live: dict, meter: ServerMeter) -> dict:
    from bench.bench_media_upload import WorkerRss

    path = "/api/analytics/export?" + urlencode({"what": "messages", "from": iso(live["start"]),
                                                 "to": iso(live["end"])})
    api_client, anchor_client = Client(api.port, live["key"]), Client(anchor.port, None)
    warm = "/api/analytics/export?" + urlencode({"what": "messages", "from": iso(live["start"]),
                                                 "to": iso(live["start"] + timedelta(hours=2))})
    for _ in range(CONNECTIONS * 2):  # every worker imports, connects and streams once first
        stream(api_client, warm)
        stream(anchor_client, "/api/anchor/export?rows=2000")
    time.sleep(1)
    out = {}
    for who, target, client, p in (("anchor", anchor, anchor_client, f"/api/anchor/export?rows={live['n']}"),
                                   ("api", api, api_client, path)):
        print(f"bench: streaming {live['n']} rows from the {who} ...", flush=True)
        with WorkerRss(target.master_pid) as rss:
            got, reading = meter.measure(lambda client=client, p=p: stream(client, p))
        got.update(rss=rss.rise(), profile=rss.profile(), cpu=server(reading, who), samples=len(rss.trace),
                   groups={g: v for g, v in reading.groups.items() if g.startswith((who, *SHARED))})
        if got["rows"] != live["n"]:
            raise SystemExit(f"bench: the {who}'s export had {got['rows']} rows, not {live['n']}")
        out[who] = got
    return out


# ----------------------------------------------------------------------------- the tables


def print_table(title: str, table: list[tuple]) -> None:
    widths = [max(len(str(row[c])) for row in table) for c in range(len(table[0]))]
    print()
    print(title)
    for k, row in enumerate(table):
        print("| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def report(r: dict, load: tuple[float, float], notes: list[str]) -> None:
    print()
    print(f"Analytics benchmark (gunicorn 2 workers x 4 threads; load average {load[0]:.1f} -> {load[1]:.1f}, "
          f"other work running on this 2-vCPU machine: latencies vary with it, CPU per unit less)")
    verdicts = []
    if "data" in r:
        d = r["data"]
        print(f"- rollups: {d['messages']:,} messages of history in {d['hourly']:,} hourly and {d['daily']:,} daily "
              f"rows of the measured organisation ({d['all_hourly']:,} / {d['all_daily']:,} rows in all, "
              f"{d['orgs']} organisations)")
    if "live" in r:
        print(f"- live organisation: {r['live']:,} messages over {LIVE_DAYS} days with their status history")
    if "latency" in r:
        table = [("query", "scope", "p50 ms", "p99 ms", "n", "anchor p50", "anchor p99", "p99 ratio",
                  "CPU ms/req", "anchor CPU", "goal", "met?")]
        for x in r["latency"]:
            met = x["p99"] < GOALS["p99_ms"]
            verdicts.append(met)
            table.append((x["query"], x["scope"], f"{x['p50']:.1f}", f"{x['p99']:.1f}", x["n"], f"{x['a_p50']:.1f}",
                          f"{x['a_p99']:.1f}", f"{x['p99'] / x['a_p99']:.1f}x", f"{x['cpu']:.1f}",
                          f"{x['a_cpu']:.1f}", f"p99 < {GOALS['p99_ms']} ms", "met" if met else "MISSED"))
        print_table(f"(1) read latency, {CONNECTIONS} connections; anchor: GET /api/anchor/clients/<id> "
                    "(one indexed SELECT); CPU: api (or anchor) + Postgres + Redis per request", table)
        print("- n: requests timed (a slow query stops after ~the time cap, at least "
              f"{MIN_PER_CONNECTION * CONNECTIONS}); with n < 100 the p99 is the slowest of them")
    if "rollup" in r:
        table = [("batch", "runs", "changes", "run: wall ms / 1k", "run: CPU ms / 1k", "next run: CPU ms / 1k",
                  "CPU ms / 1k, both", "by process (both runs), ms / 1k",
                  "anchor INSERT..SELECT CPU ms / 1k (all batches)",
                  "ratio")]
        for size in sorted({x["size"] for x in r["rollup"]}):
            rows = [x for x in r["rollup"] if x["size"] == size]

            def med(f, rows=rows):
                return statistics.median(f(x) * 1000 / (x["changes"] / 1000) for x in rows)

            both = med(lambda x: server(x["own"]) + server(x["again"]))
            # summed over the batches: one batch's copy is below the meter's 10 ms resolution
            anchor = sum(x["anchor"].of(*SHARED) for x in rows) * 1e6 / sum(x["changes"] for x in rows)
            groups: dict[str, float] = {}
            for x in rows:
                for reading in (x["own"], x["again"]):
                    for g, v in reading.groups.items():
                        if g.startswith(("pool:", *SHARED)):
                            groups[g] = groups.get(g, 0.0) + v * 1000 / (x["changes"] / 1000) / len(rows)
            table.append((f"{size:,} changes", len(rows), f"{statistics.median(x['changes'] for x in rows):,.0f}",
                          f"{med(lambda x: x['own'].wall):.0f}", f"{med(lambda x: server(x['own'])):.0f}",
                          f"{med(lambda x: server(x['again'])):.0f}", f"{both:.0f}",
                          ", ".join(f"{g} {v:.0f}" for g, v in sorted(groups.items(), key=lambda kv: -kv[1])),
                          f"{anchor:.2f}", f"{both / anchor:.0f}x" if anchor else "-"))
        print_table("(2) the analytics.rollup job per 1,000 status changes (medians over the batches; CPU: the "
                    "default pool process + Postgres + Redis)", table)
    if "export" in r:
        e, a = r["export"]["api"], r["export"]["anchor"]
        met = e["rss"][0] < GOALS["rss_mb"] * MiB
        verdicts.append(met)
        table = [("measure", "ours (export?what=messages)", "anchor (CSV made up in Python)", "ratio", "goal",
                  "met?"),
                 ("rows, bytes", f"{e['rows']:,} rows, {e['bytes'] / 1e6:.0f} MB", f"{a['rows']:,} rows, "
                  f"{a['bytes'] / 1e6:.0f} MB", "", "", ""),
                 ("wall, rows/s", f"{e['seconds']:.1f} s, {e['rows'] / e['seconds']:,.0f}/s",
                  f"{a['seconds']:.1f} s, {a['rows'] / a['seconds']:,.0f}/s", f"{e['seconds'] / a['seconds']:.1f}x",
                  "", ""),
                 ("first byte after", f"{e['first_byte'] * 1000:.0f} ms", f"{a['first_byte'] * 1000:.0f} ms", "", "",
                  ""),
                 ("api worker RSS above its start, peak", f"+{e['rss'][0] / MiB:.1f} MB ({e['rss'][1] / MiB:.0f} -> "
                  f"{e['rss'][2] / MiB:.0f} MB)", f"+{a['rss'][0] / MiB:.1f} MB", "",
                  f"< {GOALS['rss_mb']} MB, flat", "met" if met else "MISSED"),
                 ("that RSS over the stream (MB above start)", " ".join(f"{v:.0f}" for v in e["profile"]),
                  " ".join(f"{v:.0f}" for v in a["profile"]), "", "flat", ""),
                 ("server CPU per 1,000 rows", f"{e['cpu'] * 1e6 / e['rows']:.1f} ms",
                  f"{a['cpu'] * 1e6 / a['rows']:.1f} ms", f"{e['cpu'] / a['cpu']:.1f}x", "", ""),
                 ("by process, s", ", ".join(f"{g} {v:.1f}" for g, v in sorted(e["groups"].items(),
                                                                               key=lambda kv: -kv[1])),
                  ", ".join(f"{g} {v:.1f}" for g, v in sorted(a["groups"].items(), key=lambda kv: -kv[1])),
                  "", "", "")]
        print_table(f"(3) streamed export of {e['rows']:,} messages (RSS sampled every 25 ms, "
                    f"{e['samples']} samples)", table)
    for note in notes:
        print(f"- {note}")
    if "latency" in r:
        missed = [f"{x['query']} / {x['scope']}" for x in r["latency"] if x["p99"] >= GOALS["p99_ms"]]
        print("result: latency goal " + ("met by every query" if not missed else
                                         f"MISSED by {len(missed)} of {len(r['latency'])}: " + "; ".join(missed)))
    if "export" in r:
        print(f"result: export memory goal {'met' if verdicts[-1] else 'MISSED'}")


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, fewer requests and batches")
    parser.add_argument("--parts", default="latency,rollup,export", help="some of latency,rollup,export")
    args = parser.parse_args()
    size = QUICK if args.quick else FULL
    parts = set(args.parts.split(","))

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("BENCH_DATABASE_NAME", "wa_bench_analytics")
    os.environ["ANALYTICS_ROLLUP_EVERY"] = "86400"  # the bench sends every run itself
    from bench.bench_messages import prepare_environment, server_meter, stop_stack

    load_at_start = os.getloadavg()[0]
    keep = prepare_environment()
    procs = Processes(keep["data_dir"])
    meter: ServerMeter = server_meter(keep)
    if "Postgres" in keep["external"]:
        meter.add("postgres", database_backends(os.environ["DATABASE_URL"]))
        meter.notes[:] = [n for n in meter.notes if not n.startswith("Postgres")]
        meter.notes.append("Postgres is an external server: the CPU of the backends connected to the bench's "
                           "database is counted (not the server's background processes)")
    import atexit

    atexit.register(stop_stack, keep, procs)
    try:
        result = run(procs, meter, size, parts, keep["data_dir"])
    finally:
        stop_stack(keep, procs)
    report(result, (load_at_start, os.getloadavg()[0]), meter.notes)


def run(procs: Processes, meter: ServerMeter, size: dict, parts: set[str], data_dir: Path) -> dict:
    import jobs  # noqa: F401  (every actor, for the rollup's send)
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats
    from bench.anchor_app import create_table
    from bench.bench_media_upload import start_gunicorn

    result: dict = {}
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    started = time.perf_counter()
    print("bench: making the tenants ...", flush=True)
    agent_clients = max(1, size["clients"] // 4)
    big = make_tenant("Analytics bench", size["clients"], size["campaigns"], agent_clients)
    others = [make_tenant(f"Other org {i}", 3, 1) for i in range(size["other_orgs"])]
    live = make_tenant("Live org", LIVE_CLIENTS, 2)
    create_table()
    if "latency" in parts:
        print(f"bench: filling {HISTORY_DAYS} days of hourly rollups for {size['clients']} clients x "
              f"{size['campaigns'] + 1} campaigns ...", flush=True)
        first = midnight - timedelta(days=HISTORY_DAYS - 1)
        last = now.replace(minute=0, second=0, microsecond=0)
        result["data"] = {**fill_rollups([big, *others], first, last),
                          "orgs": 1 + len(others)}
        vacuum("analytics_hourly", "analytics_daily", "analytics_totals_hourly", "analytics_totals_daily")
        print(f"bench:   {result['data']['messages']:,} messages in rollups "
              f"({time.perf_counter() - started:.0f} s so far)", flush=True)
    if parts & {"rollup", "export"}:
        print(f"bench: writing {size['live_messages']:,} messages and their status history ...", flush=True)
        end = now - timedelta(minutes=10)
        fill_live(live, size["live_messages"], size["contacts"], end - timedelta(days=LIVE_DAYS), end)
        vacuum("messages", "message_status_history", "contacts")
        result["live"] = size["live_messages"]
        print(f"bench:   done ({time.perf_counter() - started:.0f} s so far)", flush=True)

    print("bench: starting the api, the anchor and a default pool ...", flush=True)
    api = start_gunicorn(procs, meter, "api", "api", "wsgi:app", big["key"])
    anchor = start_gunicorn(procs, meter, "anchor", "anchor", "bench.anchor_app:plain", "")
    if "rollup" in parts:
        before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
        pool = procs.start("pool-default", ["-m", "workers", "run", "--pool", "default", "--processes", "1"])
        meter.add("pool:default", pool.pid)
        wait_until(lambda: any(b["name"] == "default" and b["pid"] not in before
                               for b in live_heartbeats(redis_client(), "pool")), 90, "the default pool")

    if "latency" in parts:
        print("bench: (1) read latency ...", flush=True)
        result["latency"] = bench_latency(api.port, anchor.port, big, meter, size["requests"], size["cap_s"])
    if "export" in parts:
        print("bench: (3) export ...", flush=True)
        result["export"] = bench_export(api, anchor, live, meter)
    if "rollup" in parts:
        print(f"bench: (2) rollup, {len(size['batches'])} batches ...", flush=True)
        result["rollup"] = bench_rollup(live, meter, data_dir / "pool-default.log", size["batches"])
    print(f"bench: done in {time.perf_counter() - started:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
