"""Benchmark of a campaign's fan-out: 100,000 recipients written and every message queued or parked,
beside the message pipeline's own batch intake of as many messages in the same run.

Every process involved runs as in production: the api under gunicorn (the api's config, 2 workers
x 4 threads) takes the campaign and its start; one ``default`` pool process fans it out (recipient
rows, messages through the pipeline's intake: contacts, pacing slots on two paced sim clients,
``message.queued`` events, jobs or parking); Postgres and Redis serve them. The ``messages`` pool
is not started: sending is not part of a fan-out (bench_messages.py measures it). CPU is that of
every server process (bench/common.py ``ServerMeter``), not this one.

The anchor is ``POST /api/messages/batch`` (1,000 messages a request, two requests at a time) of as
many messages to as many new numbers, in the same run against the same processes: what the same
work costs when a client sends it. The goal (under 10 s for 100,000) is the issue's; the ratio
shows what the fan-out adds or saves against the intake it is built on.

Postgres and Redis: DATABASE_URL / REDIS_URL when set (a database ``BENCH_DATABASE_NAME``, default
``wa_bench_campaigns``, is recreated on that server; give Redis a database of its own), else
embedded servers in a temporary directory. Run: ``.venv/bin/python bench/bench_campaigns.py``
(``--recipients N`` for another size).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Processes, ServerMeter, wait_until  # noqa: E402

RECIPIENTS = 100_000
BATCH = 1_000
GOAL_S = 10.0
GUNICORN_SHAPE = ["--workers", "2", "--threads", "4", "--keep-alive", "30"]


def make_contacts(org_id: str, n: int) -> None:
    """``n`` contacts tagged ``bench``, written directly (not measured)."""
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        session.execute(text("""
            INSERT INTO contacts (id, organization_id, phone, name, tags, attributes)
            SELECT 'ctc_' || lpad(to_hex(g), 26, '0'), :org, '+1416' || lpad(g::text, 7, '0'), 'Person ' || g,
                   ARRAY['bench'], jsonb_build_object('city', 'City ' || (g % 50))
              FROM generate_series(1, :n) AS g
        """), {"org": org_id, "n": n})


def main() -> None:
    n = int(sys.argv[sys.argv.index("--recipients") + 1]) if "--recipients" in sys.argv else RECIPIENTS
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("BENCH_DATABASE_NAME", "wa_bench_campaigns")
    os.environ["MAX_CONTACTS_PER_ORG"] = str(n * 3)
    from bench.bench_messages import prepare_environment, server_meter, stop_stack

    load_at_start = os.getloadavg()[0]
    keep = prepare_environment()
    from config import settings

    settings.override(MAX_CONTACTS_PER_ORG=n * 3)
    procs = Processes(keep["data_dir"])
    meter: ServerMeter = server_meter(keep)
    import atexit

    def cleanup() -> None:
        stop_stack(keep, procs)

    atexit.register(cleanup)
    try:
        result = run(n, procs, meter)
    finally:
        cleanup()
    report(result, (load_at_start, os.getloadavg()[0]), meter.notes)


def run(n: int, procs: Processes, meter: ServerMeter) -> dict:
    from app.kv import redis_client
    from app.messages.planning import PARKED_KEY
    from app.system.heartbeats import live_heartbeats
    from bench.bench_messages import Api, count, make_clients, make_org_and_key, run_parallel
    from workers.embedded import free_port

    org_id, key = make_org_and_key("Campaign bench")
    limits = {"min_gap_ms": 2000, "max_gap_ms": 4000, "per_minute": 20, "per_hour": 600, "per_day": 5000}
    senders = make_clients(org_id, 2, pacing=True, limits=limits, name="sender")
    print(f"bench: writing {n:,} contacts ...", flush=True)
    make_contacts(org_id, n)
    port = free_port()
    api_proc = procs.start("api", ["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
                                   "--bind", f"127.0.0.1:{port}", *GUNICORN_SHAPE])
    meter.add("api", api_proc.pid)
    api = Api(port, key)

    def up() -> bool:
        try:
            conn = api.connection()
            conn.request("GET", "/health")
            return conn.getresponse().status in (200, 503)
        except OSError:
            return False

    wait_until(up, 60, "the api")
    before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
    pool = procs.start("pool-default", ["-m", "workers", "run", "--pool", "default", "--processes", "1"])
    meter.add("pool:default", pool.pid)
    wait_until(lambda: any(b["name"] == "default" and b["pid"] not in before
                           for b in live_heartbeats(redis_client(), "pool")), 90, "the default pool")

    conn = api.connection()
    status, body, _ = api.post(conn, "/api/campaigns", {
        "name": "Bench", "client_ids": senders, "message": "Hello {{name}}, this is the bench",
        "audience": {"tags": ["bench"]}})
    assert status == 201, body
    campaign_id = body["id"]
    print(f"bench: fanning out {n:,} recipients ...", flush=True)

    def fan_out() -> float:
        started = time.perf_counter()
        status, body, _ = api.post(conn, f"/api/campaigns/{campaign_id}/start", {})
        assert status == 200, body
        wait_until(lambda: count("SELECT count(*) FROM campaigns WHERE id = :c AND fanout_done_at IS NOT NULL",
                                 c=campaign_id), 3600, "the fan-out", interval=0.1)
        return time.perf_counter() - started

    fan_s, fan = meter.measure(fan_out)
    messages = count("SELECT count(*) FROM messages WHERE campaign_id = :c AND status = 'queued'", c=campaign_id)
    recipients = count("SELECT count(*) FROM campaign_recipients WHERE campaign_id = :c AND status = 'queued'",
                       c=campaign_id)
    total = count("SELECT total_count FROM campaigns WHERE id = :c", c=campaign_id)
    parked = redis_client().zcard(PARKED_KEY)
    in_broker = redis_client().hlen("dramatiq:messages.DQ.msgs") + redis_client().hlen("dramatiq:messages.msgs")

    print(f"bench: the anchor, {n:,} messages through POST /api/messages/batch ...", flush=True)
    target = make_clients(org_id, 1, pacing=True, limits=limits, name="anchor")[0]
    batches = max(1, n // BATCH)

    def one(c, w, i):
        items = [{"to": f"+1417{w}{i:03d}{j:03d}", "text": f"anchor {i}/{j}"} for j in range(BATCH)]
        return api.post(c, "/api/messages/batch", {"client_id": target, "messages": items})

    started = time.perf_counter()
    _, anchor = meter.measure(lambda: run_parallel(api, 2, batches // 2, one))
    anchor_s = time.perf_counter() - started
    anchor_n = count("SELECT count(*) FROM messages WHERE client_id = :c", c=target)
    return {"n": n, "fan_s": fan_s, "fan": fan, "messages": messages, "recipients": recipients, "total": total,
            "parked": parked, "in_broker": in_broker, "anchor_s": anchor_s, "anchor": anchor, "anchor_n": anchor_n}


def report(r: dict, load: tuple[float, float], notes: list[str]) -> None:
    fan, anchor = r["fan"], r["anchor"]
    per_fan = fan.cpu * 1000 / r["n"]
    per_anchor = anchor.cpu * 1000 / max(1, r["anchor_n"])
    complete = r["messages"] == r["recipients"] == r["total"] == r["n"] and r["parked"] + r["in_broker"] >= r["n"]
    rows = [
        ("recipients written / messages queued", f"{r['total']:,} / {r['messages']:,}", f"{r['n']:,}"),
        ("messages parked in Redis / waiting in the broker", f"{r['parked']:,} / {r['in_broker']:,}", "all of them"),
        ("fan-out: start -> done", f"{r['fan_s']:.1f} s ({r['n'] / r['fan_s']:,.0f} recipients/s)",
         f"< {GOAL_S:.0f} s"),
        ("fan-out server CPU per recipient", f"{per_fan:.3f} ms", ""),
        ("  api / pool / postgres / redis", " / ".join(f"{fan.of(g):.1f}" for g in ("api", "pool:", "postgres",
                                                                                     "redis")) + " s", ""),
        ("anchor: batch intake of as many messages", f"{r['anchor_s']:.1f} s ({r['anchor_n'] / r['anchor_s']:,.0f} "
                                                     "messages/s)", ""),
        ("anchor server CPU per message", f"{per_anchor:.3f} ms", ""),
        ("fan-out / anchor (time, CPU)", f"{r['fan_s'] / r['anchor_s']:.2f}x, {per_fan / per_anchor:.2f}x", ""),
    ]
    width = max(len(a) for a, _, _ in rows)
    print()
    print(f"Campaign fan-out benchmark, {r['n']:,} recipients (load average {load[0]:.1f} -> {load[1]:.1f})")
    print(f"| {'measure'.ljust(width)} | value | goal |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for a, b, c in rows:
        print(f"| {a.ljust(width)} | {b} | {c} |")
    for note in notes:
        print(f"- {note}")
    if not complete:
        print("result: INCOMPLETE: not every recipient has a queued message")
    elif r["n"] < RECIPIENTS:
        print(f"result: complete (the {GOAL_S:.0f} s goal is for {RECIPIENTS:,} recipients)")
    else:
        print("result:", "goals met" if r["fan_s"] < GOAL_S else "GOALS MISSED")


if __name__ == "__main__":
    main()
