"""Benchmark of the message pipeline, in one run on this machine; prints a table.

  (a) single-send intake: POST /api/clients/{id}/send-message with an API key against gunicorn on
      loopback: accepted sends/s, p50 / p99 latency;
  (b) batch intake: POST /api/messages/batch (1000 per request), messages/s;
  (c) end to end, accepted -> sent over the sim transport with pacing off, messages/s, beside
      Dramatiq's own no-op job throughput with the same processes and threads (the ceiling);
  (d) pacing: 50 clients with a backlog each: window/gap violations (from the recorded send times),
      share of the allowed rate used, and worker threads busy while the backlog waits.

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench``, is recreated on that server; use a Redis database of its own), else embedded servers
in a temporary directory. Run: ``.venv/bin/python bench/bench_messages.py`` (``make bench``), about four
minutes on an idle machine; ``--quick`` makes (a)-(c) smaller; ``BENCH_ONLY=ad`` runs some parts only.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

INTAKE_REQUESTS = 3000
INTAKE_CONNECTIONS = 8
BATCHES, BATCH_SIZE = 10, 1000
E2E_MESSAGES = 4000
NOOP_JOBS = 6000
POOL_PROCESSES, POOL_THREADS = 2, 8
PACED_CLIENTS, PACED_BACKLOG = 50, 30
PACED_LIMITS = {"per_minute": 10, "per_hour": 1000, "per_day": 10000, "min_gap_ms": 100, "max_gap_ms": 300}
PACED_SECONDS = 110  # two per-minute windows (the second opens at 60 s), ends before the third


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
    })
    from app.schema import apply_schema

    apply_schema(database_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    keep["data_dir"] = data_dir
    return keep


class Processes:
    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=dict(os.environ), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"bench: timed out waiting for {what}")


def start_pool(procs: Processes, pool: str, processes: int, threads: int) -> subprocess.Popen:
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats

    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    proc = procs.start(f"pool-{pool}", ["-m", "workers", "run", "--pool", pool, "--processes", str(processes),
                                        "--threads", str(threads)])
    wait_until(lambda: len([b for b in live_heartbeats(redis_client(), "pool")
                            if b["name"] == pool and b["pid"] not in before]) >= processes,
               60, f"the {pool} pool")
    return proc


# ----------------------------------------------------------------------------- data

def make_org_and_key():
    from app.apikeys.service import create_api_key
    from app.db import job_session
    from app.security.principal import SystemPrincipal
    from app.team.models import Organization

    with job_session() as session:
        org = Organization(name="Bench")
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


def count(sql: str, **params) -> int:
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        return session.scalar(text(sql), params)


# ----------------------------------------------------------------------------- HTTP

class Api:
    def __init__(self, port: int, key: str):
        self.port, self.key = port, key

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def post(self, conn, path: str, body) -> tuple[int, dict, float]:
        data = json.dumps(body)
        started = time.perf_counter()
        conn.request("POST", path, body=data, headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        return resp.status, json.loads(payload or b"{}"), time.perf_counter() - started


def run_parallel(workers: int, per_worker: int, make_request) -> list[float]:
    """``make_request(conn, worker, i)`` per request on one keep-alive connection per worker; latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list = []

    def worker(w: int):
        conn = api.connection()
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


class CpuMeter:
    """CPU seconds used by this benchmark's own processes (this process, everything it started, and
    the embedded Postgres and Redis): with other work on the machine, wall-clock rates understate
    what the pipeline can do, and CPU per message says what it costs."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir

    def _roots(self) -> list:
        import psutil

        roots = [psutil.Process()]
        pidfile = self.data_dir / "postgres" / "postmaster.pid"
        if pidfile.exists():
            try:
                roots.append(psutil.Process(int(pidfile.read_text().split()[0])))
            except (psutil.Error, ValueError):
                pass
        return roots

    def seconds(self) -> float:
        import psutil

        total, seen = 0.0, set()
        for root in self._roots():
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for p in family:
                if p.pid in seen:
                    continue
                seen.add(p.pid)
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total


def measured(fn):
    """Run ``fn()``; returns (its result, CPU seconds of our processes, load average before)."""
    load = os.getloadavg()[0]
    before = meter.seconds()
    result = fn()
    return result, meter.seconds() - before, load


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- the four measurements

def bench_intake(org_id: str) -> dict:
    clients = make_clients(org_id, 10, pacing=True, name="intake")

    def one(conn, w, i):
        cli = clients[(w + i) % len(clients)]
        return api.post(conn, f"/api/clients/{cli}/send-message",
                        {"to": f"+1415{w:02d}{i:05d}", "message": f"hello {i}"})

    run_parallel(INTAKE_CONNECTIONS, 30, one)  # warm up every process and connection
    per = INTAKE_REQUESTS // INTAKE_CONNECTIONS
    started = time.perf_counter()
    latencies, cpu, load = measured(lambda: run_parallel(INTAKE_CONNECTIONS, per, one))
    elapsed = time.perf_counter() - started
    return {"rate": len(latencies) / elapsed, "p50": pct(latencies, 50) * 1000, "p99": pct(latencies, 99) * 1000,
            "n": len(latencies), "cpu_ms": cpu * 1000 / len(latencies), "load": load}


def bench_batch(org_id: str) -> dict:
    cli = make_clients(org_id, 1, pacing=True, name="batch")[0]

    def one(conn, w, i):
        items = [{"to": f"+1416{w}{i:02d}{j:04d}", "text": f"batch {i}/{j}"} for j in range(BATCH_SIZE)]
        status, body, took = api.post(conn, "/api/messages/batch", {"client_id": cli, "messages": items})
        if status == 202 and any("error" in m for m in body["messages"]):
            return 500, body["messages"][:3], took
        return status, body, took

    run_parallel(1, 1, lambda c, w, i: one(c, 9, i))  # warm-up
    started = time.perf_counter()
    latencies, cpu, load = measured(lambda: run_parallel(2, BATCHES // 2, one))
    elapsed = time.perf_counter() - started
    n = len(latencies) * BATCH_SIZE
    return {"rate": n / elapsed, "per_batch_ms": statistics.mean(latencies) * 1000, "cpu_ms": cpu * 1000 / n,
            "load": load}


def drain_time(queue: str, total: int) -> float:
    """Seconds from now until ``queue`` has nothing ready, delayed or in flight."""
    from app.kv import redis_client

    r = redis_client()
    started = time.perf_counter()

    def empty():
        if r.llen(f"dramatiq:{queue}") or r.llen(f"dramatiq:{queue}.DQ"):
            return False
        return not any(r.scard(k) for q in (queue, f"{queue}.DQ") for k in r.scan_iter(f"dramatiq:__acks__.*.{q}"))

    wait_until(empty, 300, f"{queue} to drain", interval=0.02)
    return time.perf_counter() - started


def bench_noop() -> dict:
    import dramatiq

    import jobs  # noqa: F401

    broker = dramatiq.get_broker()
    for i in range(NOOP_JOBS):
        broker.enqueue(dramatiq.Message(queue_name="default", actor_name="system.noop", args=(i,), kwargs={},
                                        options={}))
    pool = start_pool(procs, "default", POOL_PROCESSES, POOL_THREADS)
    from app.kv import redis_client

    left = redis_client().llen("dramatiq:default")
    seconds, cpu, load = measured(lambda: drain_time("default", NOOP_JOBS))
    procs.stop(pool)
    return {"rate": left / seconds if seconds else float("inf"), "cpu_ms": cpu * 1000 / max(left, 1), "load": load}


def bench_end_to_end(org_id: str) -> dict:
    cli = make_clients(org_id, 1, pacing=False, name="e2e", config={"read_rate": 0})[0]
    conn = api.connection()
    for b in range(E2E_MESSAGES // BATCH_SIZE):
        items = [{"to": f"+1417{b:02d}{j:05d}", "text": f"e2e {b}/{j}"} for j in range(BATCH_SIZE)]
        status, body, _ = api.post(conn, "/api/messages/batch", {"client_id": cli, "messages": items})
        assert status == 202, body
    load = os.getloadavg()[0]
    before = meter.seconds()
    pool = start_pool(procs, "messages", POOL_PROCESSES, POOL_THREADS)
    wait_until(lambda: count("SELECT count(*) FROM messages WHERE client_id = :c AND status IN ('queued', 'sending')",
                             c=cli) == 0, 600, "every end-to-end message to be sent", interval=0.2)
    cpu = meter.seconds() - before
    seconds = count("SELECT extract(epoch FROM max(sent_at) - min(sending_at)) FROM messages WHERE client_id = :c",
                    c=cli)
    sent = count("SELECT count(*) FROM messages WHERE client_id = :c AND status = 'sent'", c=cli)
    return {"rate": sent / float(seconds), "sent": sent, "pool": pool, "cpu_ms": cpu * 1000 / sent, "load": load}


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
    from app.messages.dispatch import PARKED_KEY

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
    start_pool(procs, "default", 1, 8)
    drain_time("default", 0)
    procs.start("scheduler", ["-m", "workers", "scheduler"])
    pool = start_pool(procs, "messages", POOL_PROCESSES, POOL_THREADS)
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


# ----------------------------------------------------------------------------- main

def _cleanup(keep: dict) -> None:
    procs.stop_all()
    if keep.get("redis") is not None:
        from workers.embedded import stop_redis

        stop_redis(keep["redis"], 5)
        keep["redis"] = None


def main() -> None:
    global api, procs, INTAKE_REQUESTS, BATCHES, E2E_MESSAGES, NOOP_JOBS
    if "--quick" in sys.argv[1:]:  # smaller (a)-(c) for a loaded machine; (d) needs its two minutes
        INTAKE_REQUESTS, BATCHES, E2E_MESSAGES, NOOP_JOBS = 1000, 4, 2000, 3000
    load_at_start = os.getloadavg()[0]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    keep = prepare_environment()
    procs = Processes(keep["data_dir"])
    global meter
    meter = CpuMeter(keep["data_dir"])
    import atexit

    atexit.register(_cleanup, keep)
    from app.db import get_engine

    get_engine()
    org_id, key = make_org_and_key()
    from workers.embedded import free_port

    port = free_port()
    procs.start("api", ["-m", "gunicorn", "wsgi:app", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                        "--threads", "4", "--keep-alive", "30", "--log-level", "warning", "--no-control-socket"])
    api = Api(port, key)

    def up():
        try:
            c = api.connection()
            c.request("GET", "/health")
            return c.getresponse().status == 200
        except OSError:
            return False

    wait_until(up, 60, "the api")
    parts = os.environ.get("BENCH_ONLY", "") or "abcd"  # e.g. BENCH_ONLY=c: run some parts (profiling)
    intake = batch = noop = e2e = paced = None

    def show(result: dict) -> None:
        print(f"bench:     { {k: v for k, v in result.items() if k != 'pool'} }", flush=True)

    try:
        if "a" in parts:
            print("bench: (a) single-send intake ...", flush=True)
            show(intake := bench_intake(org_id))
        if "b" in parts:
            print("bench: (b) batch intake ...", flush=True)
            show(batch := bench_batch(org_id))
        if "c" in parts:
            print("bench: (c) Dramatiq no-op ceiling ...", flush=True)
            show(noop := bench_noop())
            print("bench: (c) end to end over sim ...", flush=True)
            show(e2e := bench_end_to_end(org_id))
        if "d" in parts:
            print(f"bench: (d) pacing, {PACED_CLIENTS} clients, {PACED_SECONDS} s ...", flush=True)
            show(paced := bench_pacing(org_id, e2e["pool"] if e2e else None))
    finally:
        _cleanup(keep)

    cores = os.cpu_count()
    pool = f"{POOL_PROCESSES} processes x {POOL_THREADS} threads"

    def cost(r: dict, unit: str) -> str:
        return f"; {r['cpu_ms']:.2f} ms CPU per {unit} (load avg {r['load']:.1f})"

    rows = []
    if intake:
        rows.append(("(a) single-send intake, API key, gunicorn 2x4 threads, "
                     f"{INTAKE_CONNECTIONS} connections, {intake['n']} sends",
                     f"{intake['rate']:.0f} sends/s, p50 {intake['p50']:.1f} ms, p99 {intake['p99']:.1f} ms"
                     + cost(intake, "send"), ">= 500/s, p99 < 50 ms"))
    if batch:
        rows.append((f"(b) batch intake, {BATCHES} x {BATCH_SIZE} messages, 2 connections",
                     f"{batch['rate']:.0f} messages/s ({batch['per_batch_ms']:.0f} ms per batch)"
                     + cost(batch, "message"), ">= 5,000/s"))
    if e2e:
        rows.append((f"(c) end to end accepted -> sent, sim, pacing off, {e2e['sent']} messages, {pool}",
                     f"{e2e['rate']:.0f} messages/s" + cost(e2e, "message"), ">= 500/s"))
        rows.append((f"(c) Dramatiq no-op jobs, same pool shape ({NOOP_JOBS} jobs): the ceiling",
                     f"{noop['rate']:.0f} jobs/s" + cost(noop, "job"), "-"))
    if paced:
        rows += [
            (f"(d) pacing, {PACED_CLIENTS} clients x {PACED_BACKLOG} backlog, "
             f"{PACED_LIMITS['per_minute']}/min, gap {PACED_LIMITS['min_gap_ms']}-{PACED_LIMITS['max_gap_ms']} ms, "
             f"{PACED_SECONDS} s: window or gap violations", f"{paced['violations']}", "0"),
            ("(d) share of the allowed rate used (sends / most the limits allow)",
             f"{100 * paced['used'] / paced['allowed']:.1f}% ({paced['used']}/{paced['allowed']})", ">= 95%"),
            ("(d) while the backlog waits: jobs held by worker threads / messages delayed in the broker, "
             "worker CPU", f"{paced['busy']:.2f} / {paced['waiting']:.0f}, {100 * paced['cpu']:.1f}% of a core", "~0"),
        ]
    width = max(len(r[0]) for r in rows)
    rwidth = max(len(r[1]) for r in rows)
    print()
    print(f"Message pipeline benchmark ({cores} cores, Python {sys.version.split()[0]}, 1-minute load average "
          f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end). "
          "CPU is that of the benchmark's own processes (api, workers, "
          "Postgres and Redis when embedded, load generator); the load average shows what else the machine "
          "was running.")
    print(f"| {'measure':<{width}} | {'result':<{rwidth}} | goal |")
    print(f"|{'-' * (width + 2)}|{'-' * (rwidth + 2)}|------|")
    for name, result, goal in rows:
        print(f"| {name:<{width}} | {result:<{rwidth}} | {goal} |")

if __name__ == "__main__":
    main()
