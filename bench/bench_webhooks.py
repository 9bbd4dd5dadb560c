"""Webhook fan-out: events/s delivered to a local receiver with 1 and with 20 endpoints, and the
latency from an event's creation to its receipt at a steady rate (goal: p99 < 1 s at 200 events/s).

    python bench/bench_webhooks.py [--events 2000] [--rate 200] [--rate20 20] [--seconds 10] [--processes 2]

Uses DATABASE_URL / REDIS_URL from the environment when set (temporary organisations are created
and deleted again; the ``webhooks`` queue of that Redis is used), otherwise starts an embedded
Postgres and Redis in a temporary directory, like the test suite. Runs real ``webhooks`` pool
workers (``python -m workers run --pool webhooks``) and a receiver in its own process on loopback
(HTTP/1.1 keep-alive, answers 200 at once). Events are emitted with ``app.webhooks.events.emit``
exactly as the product does; latency is the receipt time minus the event's ``created_at``, so it
covers the emitting transaction's outbox, the queue, the delivery job, signing and the HTTP request
(and the fan-out job for the 20 endpoints).

Scenarios: a burst of ``--events`` events (transactions of 100) to 1 endpoint, and of a tenth of
that to 20 endpoints (throughput: until every delivery is received); then ``--rate`` events/s to
1 endpoint and ``--rate20`` events/s to 20 endpoints for ``--seconds`` seconds, one event per
transaction as status changes come (latency; "events/s" is the rate the emitters achieved, and
"deliveries/s" counts every delivery from the first emit to the last receipt). A last row shows
emit() for an organisation with no endpoint: no job is enqueued at all. Rows are printed as they
are measured.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, ReceiverProcess, pct, tree_cpu  # noqa: E402

# ----------------------------------------------------------------------------- services and workers


def services(tmp: Path) -> tuple[str, str, list]:
    from config import settings

    cleanup = []
    db, rd = settings.DATABASE_URL, settings.REDIS_URL
    if not db or not rd:
        from workers.embedded import start_postgres, start_redis, stop_redis

        if not db:
            db, server = start_postgres(tmp, database="wa_bench_webhooks")
            cleanup.append(server)
        if not rd:
            rd, proc = start_redis(tmp)
            cleanup.append(lambda: stop_redis(proc, 5))
    return db, rd, cleanup


def start_workers(env: dict, processes: int, threads: int) -> subprocess.Popen:
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats

    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    proc = subprocess.Popen([sys.executable, "-m", "workers", "run", "--pool", "webhooks", "--processes",
                             str(processes), "--threads", str(threads), "--shutdown-timeout-ms", "3000"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("bench: the webhooks pool exited at start")
        fresh = [b for b in live_heartbeats(redis_client(), "pool")
                 if b["name"] == "webhooks" and b["pid"] not in before]
        if len(fresh) >= processes:
            return proc
        time.sleep(0.2)
    raise SystemExit("bench: the webhooks pool did not start within 60 s")


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time used so far by a process and its children (the pool's worker processes)."""
    return tree_cpu([proc.pid])


def stop_workers(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ----------------------------------------------------------------------------- scenarios


def make_org(name: str, endpoints: int, port: int) -> str:
    from app.db import job_session, new_id
    from app.security.principal import SystemPrincipal
    from app.team.models import Organization
    from app.webhooks import service

    with job_session() as session:
        org = Organization(id=new_id("org"), name=name)
        session.add(org)
        session.flush()
        for i in range(endpoints):
            service.create_webhook(session, SystemPrincipal(org.id), url=f"http://127.0.0.1:{port}/e{i}", events=["*"])
        return org.id


def drop_org(org_id: str) -> None:
    from app.db import job_session
    from app.team.models import Organization

    with job_session() as session:
        org = session.get(Organization, org_id)
        if org is not None:
            session.delete(org)


def data(i: int) -> dict:
    return {"id": f"msg_bench{i:08d}", "client_id": "cli_bench", "direction": "outbound", "to": "+14155550123",
            "from": None, "type": "text", "text": "Your order has shipped", "status": "delivered",
            "error": None, "created_at": "2025-01-01T00:00:00+00:00"}


def burst(org_id: str, events: int, batch: int = 100) -> float:
    """Emit ``events`` as fast as possible; returns the time.time() the first emit started."""
    from app.db import job_session
    from app.webhooks.events import emit

    started = time.time()
    for start in range(0, events, batch):
        with job_session() as session:
            for i in range(start, min(events, start + batch)):
                emit(session, org_id, "message.delivered", data(i))
    return started


def paced(org_id: str, rate: float, seconds: float, emitters: int = 4) -> tuple[int, float]:
    """``rate`` events/s for ``seconds``, one event per transaction; returns (events, achieved rate)."""
    from app.db import job_session
    from app.webhooks.events import emit

    total = int(rate * seconds)
    counter = iter(range(total))
    lock = threading.Lock()
    t0 = time.monotonic() + 0.2

    def run() -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            with job_session() as session:
                emit(session, org_id, "message.delivered", data(i))

    threads = [threading.Thread(target=run) for _ in range(emitters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total, total / (time.monotonic() - t0)


POOL = "-"  # "<processes>x<threads>" of the webhooks pool, shown in every row


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def print_row(name: str, endpoints: int, eps: float | None, dps: float | None, lat: list[float] | None,
              cpu_ms: float | None = None) -> None:
    def num(value, width, fmt=".0f"):
        return f"{value:>{width}{fmt}}" if value is not None else f"{'-':>{width}}"

    p50 = statistics.median(lat) * 1000 if lat else None
    p99 = pct(lat, 99) * 1000 if lat else None
    print(f"| {name:<42} | {POOL:>7} | {endpoints:>9} | {num(eps, 8)} | {num(dps, 12)} | "
          f"{num(p50, 7)} | {num(p99, 7)} | {num(cpu_ms, 14, '.1f')} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events of the burst to 1 endpoint (a tenth to 20)")
    parser.add_argument("--rate", type=float, default=200, help="events/s of the latency scenario, 1 endpoint")
    parser.add_argument("--rate20", type=float, default=20, help="events/s of the latency scenario, 20 endpoints")
    parser.add_argument("--seconds", type=float, default=10, help="length of the latency scenarios")
    parser.add_argument("--processes", type=int, default=2, help="webhooks pool worker processes")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker process")
    args = parser.parse_args(argv)
    global POOL
    POOL = f"{args.processes}x{args.threads}"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (workers, organisations)

    receiver = ReceiverProcess()  # forked before any connection exists
    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-webhooks-"))
    from config import settings

    embedded = not settings.DATABASE_URL or not settings.REDIS_URL
    data_dir = str(tmp) if embedded else str(settings.data_dir)  # workers must share the encryption keys
    settings.override(DATA_DIR=data_dir, WEBHOOK_ALLOW_PRIVATE=True)
    db_url, redis_url, cleanup = services(tmp)
    settings.override(DATABASE_URL=db_url, REDIS_URL=redis_url)
    from app.schema import apply_schema

    apply_schema(db_url)
    import jobs  # noqa: F401  (the broker, for the outbox)

    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "DATA_DIR": data_dir, "LOG_LEVEL": "WARNING",
           "WEBHOOK_ALLOW_PRIVATE": "true", "PYTHONPATH": str(ROOT)}
    workers = start_workers(env, args.processes, args.threads)
    orgs = []
    p99_goal = None
    print(f"\nwebhooks benchmark: webhooks pool of {args.processes} worker process(es) x {args.threads} threads "
          f"(WEBHOOK_MAX_IN_FLIGHT={settings.WEBHOOK_MAX_IN_FLIGHT} per endpoint), receiver on loopback in its own "
          f"process, {'embedded' if embedded else 'configured'} Postgres/Redis, {os.cpu_count()} CPU(s), "
          f"load averages {load()} at start\n")
    print(f"| {'scenario':<42} | {'pool':>7} | {'endpoints':>9} | {'events/s':>8} | {'deliveries/s':>12} "
          f"| {'p50 ms':>7} | {'p99 ms':>7} | {'worker CPU ms':>14} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 11}|{'-' * 10}|{'-' * 14}|{'-' * 9}|{'-' * 9}|{'-' * 16}|", flush=True)
    try:
        for endpoints, events in ((1, args.events), (20, max(1, args.events // 10))):
            org_id = make_org(f"bench-webhooks-burst-{endpoints}", endpoints, receiver.port)
            orgs.append(org_id)
            receiver.ask("take")
            cpu = cpu_seconds(workers)
            started = burst(org_id, events)
            finished = receiver.wait_for(events * endpoints, timeout=1800)
            cpu = cpu_seconds(workers) - cpu
            latencies = [lat for _, lat in receiver.ask("take")]
            elapsed = finished - started
            print_row(f"burst of {events} events (throughput)", endpoints, events / elapsed,
                      events * endpoints / elapsed, latencies, cpu * 1000 / (events * endpoints))
        for endpoints, rate in ((1, args.rate), (20, args.rate20)):
            org_id = make_org(f"bench-webhooks-paced-{endpoints}", endpoints, receiver.port)
            orgs.append(org_id)
            receiver.ask("take")
            cpu = cpu_seconds(workers)
            started = time.time()
            total, achieved = paced(org_id, rate, args.seconds)
            finished = receiver.wait_for(total * endpoints, timeout=1800)
            cpu = cpu_seconds(workers) - cpu
            latencies = [lat for _, lat in receiver.ask("take")]
            if endpoints == 1:
                p99_goal = (rate, achieved, pct(latencies, 99))
            # deliveries/s: all of them over the time from the first emit to the last receipt (below
            # the emitted rate x endpoints when the workers fell behind)
            print_row(f"{rate:.0f} events/s x {args.seconds:.0f} s (emitted {achieved:.0f}/s)", endpoints,
                      achieved, total * endpoints / (finished - started), latencies, cpu * 1000 / (total * endpoints))
        # an organisation without endpoints: emit() enqueues nothing
        from sqlalchemy import func, select

        from app.db import job_session
        from app.models import JobOutbox
        from app.webhooks.events import emit

        org_id = make_org("bench-webhooks-silent", 0, receiver.port)
        orgs.append(org_id)
        n = 1000
        started = time.perf_counter()
        with job_session() as session:
            for i in range(n):
                emit(session, org_id, "message.delivered", data(i))
            queued = session.scalar(select(func.count()).select_from(JobOutbox))
        print_row("emit() x 1000, no endpoint (1 transaction)", 0, n / (time.perf_counter() - started), None, None)
    finally:
        stop_workers(workers)
        receiver.stop()
        if not embedded:
            for org_id in orgs:
                drop_org(org_id)
        for item in cleanup:
            if callable(item):
                item()

    print("\nworker CPU ms: CPU time of the webhooks pool processes per delivery (Postgres, Redis and the "
          "receiver not included);\n  with the machine to itself, 2 cores / that figure bounds deliveries/s.")
    print(f"jobs enqueued by emit() for the organisation without endpoints: {queued}")
    print(f"load averages {load()} at the end")
    rate, achieved, p99 = p99_goal
    if achieved < 0.95 * rate:
        verdict = (f"the goal is not shown: the emitters reached only {achieved:.0f} of {rate:.0f} events/s "
                   "on this machine")
    else:
        verdict = f"{'meets' if p99 < 1 else 'MISSES'} the goal of p99 < 1 s at {rate:.0f} events/s"
    print(f"p99 creation -> receipt at {achieved:.0f} events/s (asked {rate:.0f}), 1 endpoint: {p99 * 1000:.0f} ms; "
          f"{verdict}")


if __name__ == "__main__":
    main()
