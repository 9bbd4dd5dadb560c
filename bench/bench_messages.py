"""Benchmark of the message pipeline, in one run on this machine; prints a table of goals, each
beside the anchor it is judged against (measured in the same run, with the same meter and load).

  (a) single send: POST /api/clients/{id}/send-message with an API key under gunicorn (the api's
      own config, 2 workers x 4 threads), beside two anchors under the same gunicorn and load:
      a minimal Flask app doing 1 INSERT + 1 LPUSH per request, and the same with flask-smorest and
      a marshmallow schema (bench/anchor_app.py); then the send again with an Idempotency-Key;
  (b) batch intake: POST /api/messages/batch, 1000 per request;
  (c) end to end over the sim transport, every pool and the scheduler running: accepted -> sent ->
      delivered -> read, then the analytics rollup of those status changes (run when the last is
      read, inside the measurement), beside Dramatiq's own no-op job throughput on the same
      processes (measured once the leftovers of (a) and (b) are cancelled and rolled up);
  (w) webhooks: (c) again with one endpoint subscribed to every event, on a local receiver;
  (d) pacing: 50 clients with a backlog each: window/gap violations (from the recorded send times),
      share of the allowed rate used, and worker threads busy while the backlog waits (110 s).

CPU is that of the server side only (bench/common.py ``ServerMeter``): the api (gunicorn master and
workers), every pool process, the scheduler, Postgres and Redis; not this process, its HTTP client
threads or the webhook receiver, which are the load. Costs per unit are what compare across runs
on a busy machine; rates depend on what else runs.

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench``, is recreated on that server; use a Redis database of its own), else embedded servers
in a temporary directory. Run: ``.venv/bin/python bench/bench_messages.py`` (``make bench``):
``--quick`` makes (a)-(w) smaller, ``--readme`` rewrites the message-pipeline part of README.md with
the table, ``BENCH_ONLY=abcw`` runs some parts only (the default ``abcwd``; (d) alone takes two
minutes).

Size: one script per benchmark is how bench/ reads (``make bench`` runs each); the five parts share
its environment, servers and meter, and the table relates them, so they stay together.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import secrets
import signal
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    ROOT,
    Processes,
    ReceiverProcess,
    ServerMeter,
    named_postgres_pids,
    pct,
    postmaster_pids,
    redis_server_pid,
    wait_for_http,
    wait_until,
)

INTAKE_REQUESTS = 2000
INTAKE_CONNECTIONS = 8
GUNICORN_SHAPE = ["--workers", "2", "--threads", "4", "--keep-alive", "30"]
BATCHES, BATCH_SIZE = 10, 1000
E2E_MESSAGES = 3000
WEBHOOK_MESSAGES = 1500
NOOP_JOBS = 6000
POOL_PROCESSES, POOL_THREADS = 2, 8
SIM_FAST = {"deliver_after_ms": 50, "read_after_ms": 100, "read_rate": 1}
PACED_CLIENTS, PACED_BACKLOG = 50, 30
PACED_LIMITS = {"per_minute": 10, "per_hour": 1000, "per_day": 10000, "min_gap_ms": 100, "max_gap_ms": 300}
PACED_SECONDS = 110  # two per-minute windows (the second opens at 60 s), ends before the third

GOALS = {
    "send_cpu_vs_anchor": 1.5, "send_rate_vs_anchor": 0.70, "send_p99_ms": 50, "idempotency_cpu": 1.20,
    "batch_rate": 15_000, "batch_cpu_ms": 0.1, "e2e_cpu_ms": 3.0, "e2e_rate_vs_noop": 0.50,
    "webhook_cpu_ms": 1.5, "webhook_p99_ms": 500,
}


# ----------------------------------------------------------------------------- environment

def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def prepare_environment() -> dict:
    """Point this process (and its children) at Postgres/Redis and fixed secrets; before any app import."""
    keep = {}
    data_dir = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    server = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    keep["external"] = [name for name, url in (("Postgres", server), ("Redis", redis_url)) if url]
    if not server:
        from workers.embedded import start_postgres

        server, keep["postgres"] = start_postgres(data_dir, database="postgres")
    if not redis_url:
        from workers.embedded import start_redis

        redis_url, keep["redis"] = start_redis(data_dir)
    import psycopg
    from psycopg import sql

    name = os.environ.get("BENCH_DATABASE_NAME", "wa_bench")
    admin = _with_database(server.replace("postgresql+psycopg://", "postgresql://"), "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = _with_database(server, name)
    os.environ.update({
        "DATABASE_URL": database_url, "REDIS_URL": redis_url, "DATA_DIR": str(data_dir), "APP_ENV": "development",
        "LOG_LEVEL": "WARNING", "RATE_LIMIT_API": "100000000 per minute", "DB_POOL_SIZE": "20",
        "SECRET_KEY": secrets.token_urlsafe(48), "API_KEY_PEPPER": secrets.token_urlsafe(32),
        "APP_ENCRYPTION_KEYS": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "WORKER_HEARTBEAT_TTL": "5", "PYTHONUNBUFFERED": "1",
        "WEBHOOK_ALLOW_PRIVATE": "loopback",  # the receiver of (w) listens on 127.0.0.1
        # the analytics rollup runs when a flow has finished, inside its measurement (``rollup_now``),
        # not at a moment of the scheduler's that would fall in another part's
        "ANALYTICS_ROLLUP_EVERY": "86400",
    })
    from app.schema import apply_schema

    apply_schema(database_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    keep["data_dir"] = data_dir
    return keep


def server_meter(keep: dict) -> ServerMeter:
    """The meter with Postgres and Redis registered: the embedded servers exactly; external ones as
    every local process named postgres and the redis-server answering REDIS_URL."""
    from config import settings

    meter = ServerMeter()
    if "Postgres" in keep["external"]:
        meter.add("postgres", named_postgres_pids)
        meter.notes.append("Postgres is an external server: every process named postgres on this machine is "
                           "counted, other users of it too")
    else:
        meter.add("postgres", postmaster_pids(keep["data_dir"] / "postgres"))
    pid = redis_server_pid(settings.REDIS_URL)
    if pid is None:
        meter.notes.append("Redis runs on another machine: its CPU is not counted")
    else:
        meter.add("redis", pid)
        if "Redis" in keep["external"]:
            meter.notes.append("Redis is an external server: its redis-server is counted, other users of it too")
    return meter


def start_pool(pool: str, processes: int, threads: int):
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats

    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    proc = procs.start(f"pool-{pool}", ["-m", "workers", "run", "--pool", pool, "--processes", str(processes),
                                        "--threads", str(threads)])
    meter.add(f"pool:{pool}", proc.pid)
    wait_until(lambda: len([b for b in live_heartbeats(redis_client(), "pool")
                            if b["name"] == pool and b["pid"] not in before]) >= processes,
               90, f"the {pool} pool")
    return proc


def stop_server(group: str, proc) -> None:
    procs.stop(proc)
    meter.remove(group)


def start_gunicorn(group: str, app: str) -> tuple:
    """``app`` under the api's gunicorn config and shape, on a free port; (process, port) once it answers."""
    from workers.embedded import free_port

    port = free_port()
    proc = procs.start(group, ["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", app,
                               "--bind", f"127.0.0.1:{port}", *GUNICORN_SHAPE])
    meter.add(group, proc.pid)

    wait_for_http(port, f"gunicorn {app}")
    return proc, port


# ----------------------------------------------------------------------------- data

def make_org_and_key(name: str = "Bench"):
    from app.apikeys.service import create_api_key
    from app.db import job_session
    from app.security.principal import SystemPrincipal
    from app.team.models import Organization

    with job_session() as session:
        org = Organization(name=name)
        session.add(org)
        session.flush()
        _, key = create_api_key(session, SystemPrincipal(org.id), name="bench", role="admin")
        return org.id, key


def make_clients(org_id: str, n: int, *, pacing: bool, limits: dict | None = None, name: str = "c",
                 config: dict | None = None) -> list[str]:
    from app.clients.models import Client
    from app.db import job_session

    config = {"deliver_after_ms": 300, "read_after_ms": 1500, **(config or {})}
    if not pacing:
        config["pacing"] = False
    with job_session() as session:
        rows = [Client(organization_id=org_id, name=f"{name}{i}", transport="sim", status="ready",
                       phone=f"+1415555{i:04d}", config=dict(config), **(limits or {})) for i in range(n)]
        session.add_all(rows)
        session.flush()
        return [r.id for r in rows]


def count(sql: str, **params):
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        return session.scalar(text(sql), params)


# ----------------------------------------------------------------------------- HTTP

class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def post(self, conn, path: str, body, headers: dict | None = None) -> tuple[int, dict, float]:
        data = json.dumps(body)
        started = time.perf_counter()
        conn.request("POST", path, body=data,
                     headers={"X-API-Key": self.key, "Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload or b"{}"), time.perf_counter() - started


def run_parallel(target: Api, workers: int, per_worker: int, make_request) -> list[float]:
    """``make_request(conn, worker, i)`` per request on one keep-alive connection per worker; latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list = []

    def worker(w: int):
        conn = target.connection()
        mine = []
        for i in range(per_worker):
            status, body, took = make_request(conn, w, i)
            if status != 202:
                errors.append((status, body))
                return
            mine.append(took)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: a request failed: {errors[0]}")
    return latencies


def per_unit(reading, n: int) -> float:
    """Server CPU milliseconds per unit."""
    return reading.cpu * 1000 / max(n, 1)


# ----------------------------------------------------------------------------- (a) single send

def single_send_load(target: Api, clients: list[str], idempotent: bool, tag: str) -> dict:
    """The same load for the api and the anchors: INTAKE_REQUESTS sends over INTAKE_CONNECTIONS
    keep-alive connections, after a warm-up of every process and connection."""

    def one(conn, w, i, phase="m"):
        headers = {"Idempotency-Key": uuid.uuid4().hex} if idempotent else None
        return target.post(conn, f"/api/clients/{clients[(w + i) % len(clients)]}/send-message",
                           {"to": f"+1415{w:02d}{i:05d}", "message": f"hello {tag}{phase} {i}"}, headers)

    run_parallel(target, INTAKE_CONNECTIONS, 30, lambda c, w, i: one(c, w, i, "w"))
    per = INTAKE_REQUESTS // INTAKE_CONNECTIONS
    latencies, reading = meter.measure(lambda: run_parallel(target, INTAKE_CONNECTIONS, per, one))
    n = len(latencies)
    return {"rate": n / reading.wall, "p50": pct(latencies, 50) * 1000, "p99": pct(latencies, 99) * 1000,
            "n": n, "cpu_ms": per_unit(reading, n), "reading": reading}


def bench_single_send(org_id: str) -> dict:
    from bench import anchor_app

    anchor_app.create_table()
    clients = make_clients(org_id, 10, pacing=True, name="intake")
    results = {}
    for label, app in (("plain", "bench.anchor_app:plain"), ("api", None), ("idempotent", None),
                       ("smorest", "bench.anchor_app:smorest")):
        print(f"bench:   {label} ...", flush=True)
        if app is None:
            results[label] = single_send_load(api, clients, label == "idempotent", label)
        else:
            proc, port = start_gunicorn("anchor", app)
            try:
                results[label] = single_send_load(Api(port, api.key), clients, False, label)
            finally:
                stop_server("anchor", proc)
        show(results[label])
    return results


# ----------------------------------------------------------------------------- (b) batch intake

def bench_batch(org_id: str) -> dict:
    cli = make_clients(org_id, 1, pacing=True, name="batch")[0]

    def one(conn, w, i):
        items = [{"to": f"+1416{w}{i:02d}{j:04d}", "text": f"batch {i}/{j}"} for j in range(BATCH_SIZE)]
        status, body, took = api.post(conn, "/api/messages/batch", {"client_id": cli, "messages": items})
        if status == 202 and any("error" in m for m in body["messages"]):
            return 500, body["messages"][:3], took
        return status, body, took

    run_parallel(api, 1, 1, lambda c, w, i: one(c, 9, i))  # warm-up
    latencies, reading = meter.measure(lambda: run_parallel(api, 2, BATCHES // 2, one))
    n = len(latencies) * BATCH_SIZE
    return {"rate": n / reading.wall, "p50": pct(latencies, 50) * 1000, "p99": pct(latencies, 99) * 1000,
            "n": n, "cpu_ms": per_unit(reading, n), "reading": reading}


# ----------------------------------------------------------------------------- (c) end to end, (w) webhooks

def drain_time(queue: str, timeout: float = 300) -> None:
    """Returns once ``queue`` has nothing ready, delayed or in flight. The workers' ack sets (jobs
    in flight) are named from the broker's heartbeats once: a SCAN per poll would be Redis work of
    the benchmark's own making, counted as the server's."""
    from app.kv import redis_client

    r = redis_client()
    workers = [w.decode() for w in r.zrange("dramatiq:__heartbeats__", 0, -1)]
    acks = [f"dramatiq:__acks__.{w}.{q}" for w in workers for q in (queue, f"{queue}.DQ")]

    def empty():
        pipe = r.pipeline(transaction=False)
        for key in (f"dramatiq:{queue}", f"dramatiq:{queue}.DQ"):
            pipe.llen(key)
        for key in acks:
            pipe.scard(key)
        return not any(pipe.execute())

    wait_until(empty, timeout, f"{queue} to drain", interval=0.02)


def enqueue_noop_jobs(n: int) -> None:
    """``n`` no-op jobs on the default queue at once (one MULTI/EXEC, as the broker's own enqueue
    script writes them), so a running pool cannot start on them before the last is in."""
    import dramatiq

    from app.kv import redis_client

    ids, bodies = [], {}
    for i in range(n):
        rid = str(uuid.uuid4())
        message = dramatiq.Message(queue_name="default", actor_name="system.noop", args=(i,), kwargs={},
                                   options={"redis_message_id": rid})
        ids.append(rid)
        bodies[rid] = message.encode()
    pipe = redis_client().pipeline(transaction=True)
    pipe.hset("dramatiq:default.msgs", mapping=bodies)
    pipe.rpush("dramatiq:default", *ids)
    pipe.execute()


def start_every_pool() -> dict:
    """Every pool of app/queues.py and the scheduler, as in production; returns their processes
    once every one beats."""
    from app.kv import redis_client
    from app.queues import POOLS
    from app.system.heartbeats import live_heartbeats

    started = {}
    for name, pool in POOLS.items():
        threads = POOL_THREADS if name in ("messages", "default") else pool.threads
        started[f"pool:{name}"] = start_pool(name, POOL_PROCESSES, threads)
    scheduler = procs.start("scheduler", ["-m", "workers", "scheduler"])
    meter.add("scheduler", scheduler.pid)
    wait_until(lambda: any(b["pid"] == scheduler.pid for b in live_heartbeats(redis_client(), "scheduler")),
               60, "the scheduler")
    started["scheduler"] = scheduler
    time.sleep(3)  # the scheduler's first round of periodic jobs, the pools' first idle polls
    drain_time("default")
    return started


def drop_intake_leftovers() -> None:
    """(a) and (b) run without pools and leave thousands of paced messages waiting for their slots,
    with their jobs in the broker: they are cancelled and their jobs dropped before the pools start,
    so that no later part is measured doing the earlier parts' work."""
    from sqlalchemy import text

    from app.db import job_session
    from app.kv import redis_client
    from app.messages.planning import PARKED_KEY

    with job_session() as session:
        session.execute(text("UPDATE messages SET status = 'cancelled', cancelled_at = now() WHERE status = 'queued'"))
    r = redis_client()
    r.delete(PARKED_KEY, *r.keys("dramatiq:messages*"))


def settle_postgres() -> None:
    """VACUUM ANALYZE and a checkpoint after (a) and (b)'s writes, so that the autovacuum and the
    checkpoint they would cause do not fall inside a later part's measurement."""
    import psycopg

    from config import settings

    with psycopg.connect(settings.DATABASE_URL.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")
        conn.execute("CHECKPOINT")


def rollup_now() -> None:
    """One ``analytics.rollup`` run by the default pool, waited for: the analytics of every status
    change so far, part of what a message costs."""
    from app import outbox
    from app.analytics.rollup import ROLLUP_ACTOR
    from app.db import job_session

    with job_session() as session:
        outbox.enqueue(session, ROLLUP_ACTOR)  # in the broker once committed
    drain_time("default")


def bench_noop() -> dict:
    """Dramatiq's own ceiling on these processes: no-op jobs through the default pool."""
    enqueue_noop_jobs(NOOP_JOBS)
    _, reading = meter.measure(lambda: drain_time("default"))
    return {"rate": NOOP_JOBS / reading.wall, "n": NOOP_JOBS, "cpu_ms": per_unit(reading, NOOP_JOBS),
            "reading": reading}


def flow(target: Api, org_id: str, n: int, receiver: ReceiverProcess | None = None) -> dict:
    """``n`` messages from accepted (batch API) to read, and with ``receiver`` every webhook event
    of the organisation received: the server CPU of the whole of it, per message."""
    cli = make_clients(org_id, 1, pacing=False, name=f"e2e-{org_id[-4:]}", config=SIM_FAST)[0]

    def run():
        conn = target.connection()
        for start in range(0, n, BATCH_SIZE):
            items = [{"to": f"+1417{start + j:07d}", "text": f"e2e {start + j}"}
                     for j in range(min(BATCH_SIZE, n - start))]
            status, body, _ = target.post(conn, "/api/messages/batch", {"client_id": cli, "messages": items})
            assert status == 202, body
        wait_until(lambda: count("SELECT count(*) FROM messages WHERE client_id = :c AND status <> 'read'",
                                 c=cli) == 0, 900, "every end-to-end message to be read", interval=0.25)
        rollup_now()
        if receiver is not None:
            events = count("SELECT count(*) FROM webhook_events WHERE organization_id = :o", o=org_id)
            receiver.wait_for(events, timeout=900)
            return events
        return 0

    events, reading = meter.measure(run)
    seconds = float(count("SELECT extract(epoch FROM max(read_at) - min(queued_at)) FROM messages "
                          "WHERE client_id = :c", c=cli))
    result = {"rate": n / seconds, "n": n, "cpu_ms": per_unit(reading, n), "reading": reading, "seconds": seconds}
    if receiver is not None:
        latencies = [lat for _, lat in receiver.ask("take")]
        span = float(count("SELECT extract(epoch FROM max(created_at) - min(created_at)) FROM webhook_events "
                           "WHERE organization_id = :o", o=org_id))
        result["webhooks"] = {
            "rate": events / span if span else float("inf"), "n": len(latencies), "events": events,
            "p50": pct(latencies, 50) * 1000, "p99": pct(latencies, 99) * 1000,
            "cpu_ms": reading.of("pool:webhooks") * 1000 / max(len(latencies), 1),
            "all_cpu_ms": per_unit(reading, len(latencies)), "reading": reading}
    return result


def bench_webhooks(receiver: ReceiverProcess) -> dict:
    from app.db import job_session
    from app.security.principal import SystemPrincipal
    from app.webhooks import service

    org_id, key = make_org_and_key("Bench webhooks")
    with job_session() as session:
        service.create_webhook(session, SystemPrincipal(org_id), url=f"http://127.0.0.1:{receiver.port}/e",
                               events=["*"])
    receiver.ask("take")
    return flow(Api(api.port, key), org_id, WEBHOOK_MESSAGES, receiver)


# ----------------------------------------------------------------------------- (d) pacing

def greedy_allowed(limits: dict, seconds: float) -> int:
    """The most sends the limits allow in ``seconds`` from the first one (earliest-possible schedule)."""
    windows = [(60_000, limits["per_minute"]), (3_600_000, limits["per_hour"]), (86_400_000, limits["per_day"])]
    times: list[int] = []
    t = 0
    while True:
        if times:
            t = times[-1] + limits["min_gap_ms"]
            for size, limit in windows:
                if len(times) >= limit:
                    t = max(t, times[-limit] + size)
        if t >= seconds * 1000:
            return len(times)
        times.append(t)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def acked_in_flight(queue: str) -> int:
    from app.kv import redis_client

    r = redis_client()
    return sum(r.scard(k) for k in r.scan_iter(f"dramatiq:__acks__.*.{queue}"))


def bench_pacing(org_id: str, pool) -> dict:
    import psutil
    from sqlalchemy import text

    from app.db import job_session
    from app.kv import redis_client
    from app.messages.planning import PARKED_KEY

    # the whole product now: acks on the default pool, and the scheduler's feeder that hands parked
    # messages (slots more than MESSAGE_PARK_AFTER ahead) to the broker. This part measures itself:
    # the earlier parts' paced backlogs (days of slots) are cancelled and their jobs removed, with the
    # messages pool stopped, and their acks drained; then a fresh messages pool starts.
    if pool is not None:
        procs.stop(pool)
    count("WITH c AS (UPDATE messages SET status = 'cancelled', cancelled_at = now(), updated_at = now() "
          "WHERE status = 'queued' RETURNING 1) SELECT count(*) FROM c")
    r = redis_client()
    stale = [k for pattern in ("dramatiq:messages*", "dramatiq:__acks__.*.messages*", "wa:pace:*")
             for k in r.scan_iter(pattern)]
    r.delete(PARKED_KEY, *stale)
    start_pool("default", 1, 8)
    drain_time("default")
    procs.start("scheduler", ["-m", "workers", "scheduler"])
    pool = start_pool("messages", POOL_PROCESSES, POOL_THREADS)
    clients = make_clients(org_id, PACED_CLIENTS, pacing=True, limits=PACED_LIMITS, name="paced")
    conn = api.connection()
    plans = []
    for n, cli in enumerate(clients):
        items = [{"to": f"+1418{n:03d}{j:04d}", "text": f"paced {j}"} for j in range(PACED_BACKLOG)]
        status, body, _ = api.post(conn, "/api/messages/batch", {"client_id": cli, "messages": items})
        assert status == 202, body
        plans.append(sorted(_epoch(m["scheduled_for"]) for m in body["messages"]))
    accepted_at = time.time()
    tree = [psutil.Process(pool.pid), *psutil.Process(pool.pid).children(recursive=True)]

    def cpu() -> float:
        return sum(p.cpu_times().user + p.cpu_times().system for p in tree)

    # the quiet stretch: every client has used its first minute and waits for the window to reopen
    per_minute = PACED_LIMITS["per_minute"]
    quiet_from = max(plan[per_minute - 1] for plan in plans) + 3
    quiet_to = min(plan[per_minute] for plan in plans) - 2
    samples, marks = [], []
    end = accepted_at + PACED_SECONDS + 3
    while time.time() < end:
        now = time.time()
        if quiet_from <= now <= quiet_to:
            if not marks:
                marks.append((cpu(), now))
            samples.append((acked_in_flight("messages"), acked_in_flight("messages.DQ")))
        elif now > quiet_to and len(marks) == 1:
            marks.append((cpu(), now))
        time.sleep(0.5)
    with job_session() as session:
        rows = session.execute(text(
            "SELECT client_id, array_agg((extract(epoch FROM sending_at) * 1000)::bigint ORDER BY sending_at), "
            "min(extract(epoch FROM scheduled_for) * 1000)::bigint FROM messages WHERE client_id = ANY(:ids) "
            "AND sending_at IS NOT NULL GROUP BY client_id"), {"ids": clients}).all()
        firsts = dict(session.execute(text(
            "SELECT client_id, min(extract(epoch FROM queued_at) * 1000)::bigint FROM messages "
            "WHERE client_id = ANY(:ids) GROUP BY client_id"), {"ids": clients}).all())
    violations, used, allowed = 0, 0, 0
    per_client_allowed = greedy_allowed(PACED_LIMITS, PACED_SECONDS)
    for client_id, times, _ in rows:
        times = sorted(times)
        violations += sum(1 for a, b in zip(times, times[1:], strict=False) if b - a < PACED_LIMITS["min_gap_ms"])
        for size, limit in ((60_000, PACED_LIMITS["per_minute"]), (3_600_000, PACED_LIMITS["per_hour"]),
                            (86_400_000, PACED_LIMITS["per_day"])):
            violations += sum(1 for i in range(len(times) - limit) if times[i + limit] - times[i] < size)
        start = firsts[client_id]
        used += sum(1 for t in times if start <= t < start + PACED_SECONDS * 1000)
        allowed += per_client_allowed
    allowed += (PACED_CLIENTS - len(rows)) * per_client_allowed
    busy = statistics.mean(s[0] for s in samples) if samples else float("nan")
    waiting = statistics.mean(s[1] for s in samples) if samples else float("nan")
    cpu_share = (marks[1][0] - marks[0][0]) / (marks[1][1] - marks[0][1]) if len(marks) == 2 else float("nan")
    return {"violations": violations, "used": used, "allowed": allowed, "busy": busy, "waiting": waiting,
            "cpu": cpu_share}


# ----------------------------------------------------------------------------- the table

def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def goal_rows(single, batch, noop, e2e, hooks, paced) -> list[tuple]:
    """(goal, measured, anchor, ratio, target, met?) for every part that ran."""
    g = GOALS
    rows = []
    if single:
        api_run, plain, smorest, idem = single["api"], single["plain"], single["smorest"], single["idempotent"]
        shape = f"gunicorn 2x4, {INTAKE_CONNECTIONS} connections, {api_run['n']} requests"
        ratio = api_run["cpu_ms"] / plain["cpu_ms"]
        rows.append((f"(a) single send ({shape}): server CPU per accepted send",
                     f"{api_run['cpu_ms']:.2f} ms", f"{plain['cpu_ms']:.2f} ms (Flask, 1 INSERT + 1 LPUSH)",
                     f"{ratio:.2f}x", f"<= {g['send_cpu_vs_anchor']}x", verdict(ratio <= g["send_cpu_vs_anchor"])))
        rows.append(("(a) single send: server CPU per send, beside the flask-smorest anchor",
                     f"{api_run['cpu_ms']:.2f} ms", f"{smorest['cpu_ms']:.2f} ms (flask-smorest + schema)",
                     f"{api_run['cpu_ms'] / smorest['cpu_ms']:.2f}x", "(reference)", "-"))
        ratio = api_run["rate"] / plain["rate"]
        rows.append(("(a) single send: accepted sends/s, same load", f"{api_run['rate']:.0f}/s",
                     f"{plain['rate']:.0f} requests/s", f"{100 * ratio:.0f}%",
                     f">= {100 * g['send_rate_vs_anchor']:.0f}%", verdict(ratio >= g["send_rate_vs_anchor"])))
        rows.append(("(a) single send: p99 latency at that load", f"{api_run['p99']:.1f} ms",
                     f"{plain['p99']:.1f} ms", f"{api_run['p99'] / plain['p99']:.1f}x",
                     f"< {g['send_p99_ms']} ms", verdict(api_run["p99"] < g["send_p99_ms"])))
        ratio = idem["cpu_ms"] / api_run["cpu_ms"]
        rows.append(("(a) single send with a unique Idempotency-Key: server CPU per send",
                     f"{idem['cpu_ms']:.2f} ms", f"{api_run['cpu_ms']:.2f} ms (without)", f"{ratio:.2f}x",
                     f"<= {g['idempotency_cpu']:.2f}x", verdict(ratio <= g["idempotency_cpu"])))
    if batch:
        rows.append((f"(b) batch intake ({BATCHES} x {BATCH_SIZE}, 2 connections): messages/s",
                     f"{batch['rate']:,.0f}/s", "-", "-", f">= {g['batch_rate']:,}/s",
                     verdict(batch["rate"] >= g["batch_rate"])))
        rows.append(("(b) batch intake: server CPU per message", f"{batch['cpu_ms']:.3f} ms", "-", "-",
                     f"<= {g['batch_cpu_ms']} ms", verdict(batch["cpu_ms"] <= g["batch_cpu_ms"])))
    if e2e:
        rows.append((f"(c) end to end, accepted -> read, sim, every pool + scheduler ({e2e['n']} messages): "
                     "server CPU per message", f"{e2e['cpu_ms']:.2f} ms", "-", "-", f"<= {g['e2e_cpu_ms']} ms",
                     verdict(e2e["cpu_ms"] <= g["e2e_cpu_ms"])))
        ratio = e2e["rate"] / noop["rate"]
        rows.append(("(c) end to end: messages/s (first queued -> last read)", f"{e2e['rate']:.0f}/s",
                     f"{noop['rate']:.0f} no-op jobs/s", f"{100 * ratio:.0f}%",
                     f">= {100 * g['e2e_rate_vs_noop']:.0f}%", verdict(ratio >= g["e2e_rate_vs_noop"])))
    if hooks:
        w = hooks["webhooks"]
        rows.append((f"(w) webhooks, 1 endpoint on every event ({w['n']} deliveries): webhooks pool CPU "
                     "per delivery", f"{w['cpu_ms']:.2f} ms", "-", "-", f"<= {g['webhook_cpu_ms']} ms",
                     verdict(w["cpu_ms"] <= g["webhook_cpu_ms"])))
        rows.append((f"(w) webhooks: p99 event created -> received, at the pipeline's own {w['rate']:.0f} events/s",
                     f"{w['p99']:.0f} ms", "-", "-", f"< {g['webhook_p99_ms']} ms",
                     verdict(w["p99"] < g["webhook_p99_ms"])))
    if paced:
        share = paced["used"] / paced["allowed"]
        rows += [
            (f"(d) pacing, {PACED_CLIENTS} clients x {PACED_BACKLOG} backlog, {PACED_LIMITS['per_minute']}/min, "
             f"gap {PACED_LIMITS['min_gap_ms']}-{PACED_LIMITS['max_gap_ms']} ms, {PACED_SECONDS} s: window or gap "
             "violations", f"{paced['violations']}", "-", "-", "0", verdict(paced["violations"] == 0)),
            ("(d) share of the allowed rate used (sends / most the limits allow)",
             f"{100 * share:.1f}% ({paced['used']}/{paced['allowed']})", "-", "-", ">= 95%", verdict(share >= 0.95)),
            ("(d) while the backlog waits: jobs held by worker threads / messages delayed in the broker, "
             "messages pool CPU", f"{paced['busy']:.2f} / {paced['waiting']:.0f}, {100 * paced['cpu']:.1f}% of a core",
             "-", "-", "~0 threads", verdict(paced["busy"] < 0.5)),
        ]
    return rows


def split(reading, n: int) -> str:
    """Server CPU per unit by process group, largest first."""
    parts = sorted(reading.groups.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{name} {seconds * 1000 / max(n, 1):.2f}" for name, seconds in parts if seconds > 0.0005)


def raw_rows(single, batch, noop, e2e, hooks) -> list[tuple]:
    """(run, rate, p50, p99, server CPU per unit, CPU per unit by process group) per measured run."""
    def ms(value):
        return f"{value:.1f} ms" if value is not None else "-"

    rows = []
    for label, run in ((single or {}).items()):
        name = {"api": "send-message, API key", "idempotent": "send-message, API key + Idempotency-Key",
                "plain": "anchor: Flask, 1 INSERT + 1 LPUSH",
                "smorest": "anchor: flask-smorest + schema, 1 INSERT + 1 LPUSH"}[label]
        rows.append((f"(a) {name}", f"{run['rate']:.0f} req/s", ms(run["p50"]), ms(run["p99"]),
                     f"{run['cpu_ms']:.2f} ms/request", split(run["reading"], run["n"])))
    if batch:
        rows.append(("(b) batch of 1000 (latency per request)", f"{batch['rate']:,.0f} msg/s", ms(batch["p50"]),
                     ms(batch["p99"]), f"{batch['cpu_ms']:.3f} ms/message", split(batch["reading"], batch["n"])))
    if noop:
        rows.append((f"(c) Dramatiq no-op jobs ({noop['n']}), every pool running", f"{noop['rate']:.0f} jobs/s",
                     "-", "-", f"{noop['cpu_ms']:.2f} ms/job", split(noop["reading"], noop["n"])))
    if e2e:
        rows.append((f"(c) end to end, {e2e['n']} messages, no webhook endpoint", f"{e2e['rate']:.0f} msg/s", "-",
                     "-", f"{e2e['cpu_ms']:.2f} ms/message", split(e2e["reading"], e2e["n"])))
    if hooks:
        w = hooks["webhooks"]
        rows.append((f"(w) end to end, {hooks['n']} messages, 1 endpoint on '*'", f"{hooks['rate']:.0f} msg/s", "-",
                     "-", f"{hooks['cpu_ms']:.2f} ms/message", split(hooks["reading"], hooks["n"])))
        rows.append((f"(w) its webhook deliveries ({w['n']} of {w['events']} events)",
                     f"{w['rate']:.0f} events/s", ms(w["p50"]), ms(w["p99"]),
                     f"{w['cpu_ms']:.2f} ms/delivery (webhooks pool), {w['all_cpu_ms']:.2f} all in", "-"))
    return rows


def markdown(header: list[str], rows: list[tuple]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "| " + " | ".join(f"{h:<{w}}" for h, w in zip(header, widths, strict=True)) + " |"
    out = [line, "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(f"{c!s:<{w}}" for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return out


def report(results: dict, loads: tuple[float, float], notes: list[str]) -> list[str]:
    """The section of README.md for this benchmark, as lines."""
    single, batch, noop, e2e, hooks, paced = (results.get(k) for k in ("a", "b", "noop", "c", "w", "d"))
    pools = (f"{POOL_PROCESSES} processes per pool (messages and default x {POOL_THREADS} threads, "
             "webhooks and sessions their own threads) and the scheduler")
    about = (
        f"Measured {date.today().isoformat()}: {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
        f"1-minute load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end. \"Server CPU\" is "
        "every server process: the api (gunicorn master and workers), the pools and the scheduler, Postgres "
        "and Redis; the load generator (the benchmark, its HTTP threads, the webhook receiver) is not. "
        "Each anchor is measured in the same run with the same meter and load. End to end: "
        f"{pools}; sim clients with pacing off, read_rate 1, delivered after "
        f"{SIM_FAST['deliver_after_ms']} ms, read after {SIM_FAST['read_after_ms']} ms (such clients send in "
        "batches, `MESSAGE_SEND_BATCH`); once the last message is read, the analytics rollup of its status "
        "changes runs, inside the measurement."
        + "".join(f" {note}." for note in notes)
        + " The benchmark's own polling (a count query every 0.25 s until the last message is read) is "
        "server work too, and counted. `bench/bench_messages.py --readme` rewrites this part.")
    text = [
        "### Message pipeline — `bench/bench_messages.py`",
        "",
        *textwrap.wrap(about, 100, break_on_hyphens=False),
        "",
        *markdown(["goal", "measured", "anchor", "ratio", "target", "met?"],
                  goal_rows(single, batch, noop, e2e, hooks, paced)),
    ]
    raw = raw_rows(single, batch, noop, e2e, hooks)
    if raw:
        text += ["", "Raw figures (server CPU per unit, then the same split by process group, ms):", "",
                 *markdown(["run", "rate", "p50", "p99", "server CPU", "by process"], raw)]
    return text


def rewrite_readme(section: list[str]) -> None:
    """Replaces the message-pipeline part of README.md (its heading up to the next heading inside
    the bench markers) with ``section``."""
    path = ROOT / "README.md"
    readme = path.read_text()
    begin, end = readme.index("<!-- bench:begin -->"), readme.index("<!-- bench:end -->")
    match = re.search(r"^### Message pipeline.*?(?=^### |\Z)", readme[begin:end], flags=re.S | re.M)
    if match is None:
        raise SystemExit("bench: README.md has no '### Message pipeline' part between its bench markers")
    start, stop = begin + match.start(), begin + match.end()
    path.write_text(readme[:start] + "\n".join(section) + "\n\n" + readme[stop:])
    print(f"bench: {path} rewritten", flush=True)


# ----------------------------------------------------------------------------- main

def show(result: dict) -> None:
    brief = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()
             if k not in ("reading", "webhooks")}
    print(f"bench:     {brief}", flush=True)


def stop_stack(keep: dict, processes: Processes) -> None:
    """Stop every process a bench started, and the embedded Redis if it started one."""
    processes.stop_all()
    if keep.get("redis") is not None:
        from workers.embedded import stop_redis

        stop_redis(keep["redis"], 5)
        keep["redis"] = None


def _cleanup(keep: dict) -> None:
    stop_stack(keep, procs)


def main() -> None:
    global api, procs, meter, INTAKE_REQUESTS, BATCHES, E2E_MESSAGES, WEBHOOK_MESSAGES, NOOP_JOBS
    args = sys.argv[1:]
    if "--quick" in args:  # smaller (a)-(w) for a loaded machine; (d) needs its two minutes
        INTAKE_REQUESTS, BATCHES, E2E_MESSAGES, WEBHOOK_MESSAGES, NOOP_JOBS = 800, 4, 1000, 500, 3000
    parts = os.environ.get("BENCH_ONLY", "") or "abcwd"
    load_at_start = os.getloadavg()[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    receiver = ReceiverProcess() if "w" in parts else None  # forked before any connection exists
    keep = prepare_environment()
    procs = Processes(keep["data_dir"])
    meter = server_meter(keep)
    import atexit

    atexit.register(_cleanup, keep)
    if receiver is not None:
        atexit.register(receiver.stop)
    import jobs  # noqa: F401  (every actor, for the no-op jobs' encoder and the outbox)
    from app.db import get_engine

    get_engine()
    org_id, key = make_org_and_key()
    _, port = start_gunicorn("api", "wsgi:app")
    api = Api(port, key)
    results: dict = {}
    try:
        if "a" in parts:
            print("bench: (a) single send, anchors, with an Idempotency-Key ...", flush=True)
            results["a"] = bench_single_send(org_id)
        if "b" in parts:
            print("bench: (b) batch intake ...", flush=True)
            show(results.setdefault("b", bench_batch(org_id)))
        if "c" in parts or "w" in parts:
            print("bench: (c) every pool and the scheduler, warming up ...", flush=True)
            drop_intake_leftovers()
            running = start_every_pool()
            rollup_now()  # the analytics of (a) and (b), before anything is measured
            settle_postgres()
            if "c" in parts:
                print("bench: (c) Dramatiq no-op jobs ...", flush=True)
                show(results.setdefault("noop", bench_noop()))
                print("bench: (c) end to end over sim ...", flush=True)
                show(results.setdefault("c", flow(api, org_id, E2E_MESSAGES)))
            if "w" in parts:
                print("bench: (w) end to end with a webhook endpoint ...", flush=True)
                show(results.setdefault("w", bench_webhooks(receiver)))
                show(results["w"]["webhooks"])
            for group, proc in running.items():
                stop_server(group, proc)
        if "d" in parts:
            print(f"bench: (d) pacing, {PACED_CLIENTS} clients, {PACED_SECONDS} s ...", flush=True)
            show(results.setdefault("d", bench_pacing(org_id, None)))
    finally:
        _cleanup(keep)

    section = report(results, (load_at_start, os.getloadavg()[0]), meter.notes)
    print()
    print("\n".join(section))
    if "--readme" in args:
        rewrite_readme(section)


if __name__ == "__main__":
    main()
