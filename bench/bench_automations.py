"""Benchmark of automations: how long a contact waits for an automatic reply, at 100 inbound
messages per second, with every process running (the api under gunicorn, every worker pool, the
scheduler, Postgres, Redis) on this machine; prints a table.

Simulated contacts write (``POST /api/clients/{id}/sim/inbound``, open loop at ``RATE`` per second,
spread over ``CLIENTS`` sim clients, each contact a new number) to an organisation with five
automations: one keyword reply that matches every message, a regular-expression reply and an
outside-hours reply that do not, a tag on the first message, and a tag whose conditions do not
hold. The reaction time of a message is from the moment its request is sent to the moment its
reply is queued (``messages.queued_at`` of the reply): the api records the report, the default
pool stores the inbound message (contact, STOP check) and hands it to ``automations.on_inbound``,
which evaluates the automations and accepts the reply. It is split at the inbound message's
``created_at``. Replies are then sent over sim by the messages pool, as part of the load.

CPU is the server side's (bench/common.py ``ServerMeter``), per inbound message. Postgres and
Redis: as bench/bench_messages.py (DATABASE_URL / REDIS_URL, or embedded servers). Run:
``.venv/bin/python bench/bench_automations.py`` (``--quick``: 10 s instead of 30 s; ``--rate=N``: N
inbound messages per second instead of 100, e.g. to see the reaction time below saturation).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import bench_messages as bm  # noqa: E402  (its environment, servers and meter)
from bench.common import Processes, pct, wait_until  # noqa: E402

RATE = 100            # inbound messages per second
SECONDS = 30
CLIENTS = 10
SENDERS = 8           # HTTP connections the load is spread over
WARMUP = 100
SIM_FAST = {"deliver_after_ms": 50, "read_after_ms": 100}
ALWAYS_OPEN = {"tz": "UTC", "days": {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat",
                                                                         "sun")}}


def make_automations(org_id: str) -> None:
    from app.automations import service
    from app.db import job_session
    from app.security.principal import SystemPrincipal

    system = SystemPrincipal(org_id)
    reply = {"type": "reply", "message": "Hi {{name}}! Our prices: https://acme.test/prices ({{message.text}})"}
    with job_session() as session:
        for body in (
            {"name": "prices", "trigger": {"type": "keyword", "keywords": ["price", "pricing"]}, "actions": [reply]},
            {"name": "orders", "trigger": {"type": "keyword", "keywords": [r"^order\s*#?\d+$"], "match": "regex"},
             "actions": [{"type": "reply", "message": "Looking up {{message.text}}"}]},
            {"name": "after hours", "trigger": {"type": "outside_hours", "hours": ALWAYS_OPEN},
             "actions": [{"type": "reply", "message": "We are closed"}]},
            {"name": "new contact", "trigger": {"type": "first_message"},
             "actions": [{"type": "tag", "add": ["new"]}], "priority": 1},
            {"name": "vip", "trigger": {"type": "keyword", "keywords": ["price"]}, "conditions": {"tags_any": ["vip"]},
             "actions": [{"type": "tag", "add": ["vip-lead"]}]},
        ):
            service.create_automation(session, system, **{"client_id": None, "conditions": {}, "enabled": True,
                                                          "priority": 100, "cooldown_seconds": 60,
                                                          "stop_processing": False, **body})


def send_load(api: bm.Api, clients: list[str], n: int, rate: float, first: int) -> dict[str, float]:
    """``n`` inbound messages at ``rate`` per second (open loop: each is due at its own time, late
    ones go at once); {phone: when its request was sent (epoch seconds)}."""
    sent: dict[str, float] = {}
    lock, errors = threading.Lock(), []
    next_index = iter(range(n))
    start = time.monotonic() + 0.2

    def sender() -> None:
        conn = api.connection()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            phone = f"+1415{6000000 + first + i:07d}"
            at = time.time()
            status, body, _ = api.post(conn, f"/api/clients/{clients[i % len(clients)]}/sim/inbound",
                                       {"from": phone, "text": f"what is the price of item {i}?"})
            if status != 202:
                errors.append((status, body))
                return
            with lock:
                sent[phone] = at

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"bench: an inbound request failed: {errors[0]}")
    return sent


def replies_queued(org_id: str) -> int:
    return bm.count("SELECT count(*) FROM messages WHERE organization_id = :org AND automation_id IS NOT NULL",
                    org=org_id)


def timings(org_id: str, phones: list[str]) -> dict[str, tuple[float, float]]:
    """{phone: (inbound stored, reply queued)} as epoch seconds."""
    from sqlalchemy import text

    from app.db import job_session

    with job_session() as session:
        rows = session.execute(text("""
            SELECT i.from_phone, extract(epoch FROM i.created_at), extract(epoch FROM r.queued_at)
              FROM messages i JOIN messages r ON r.organization_id = i.organization_id AND r.to_phone = i.from_phone
                                             AND r.automation_id IS NOT NULL
             WHERE i.organization_id = :org AND i.direction = 'inbound' AND i.from_phone = ANY(:phones)"""),
                               {"org": org_id, "phones": phones}).all()
    return {phone: (float(stored), float(queued)) for phone, stored, queued in rows}


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q) * 1000:.0f}"


def main() -> None:
    global SECONDS, RATE
    if "--quick" in sys.argv[1:]:
        SECONDS = 10
    for arg in sys.argv[1:]:
        if arg.startswith("--rate="):
            RATE = int(arg.split("=", 1)[1])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    load_at_start = os.getloadavg()[0]
    keep = bm.prepare_environment()
    bm.procs = Processes(keep["data_dir"])
    bm.meter = bm.server_meter(keep)
    import atexit

    atexit.register(bm._cleanup, keep)
    import jobs  # noqa: F401  (every actor: the outbox routes by name)
    from app.db import get_engine

    get_engine()
    org_id, key = bm.make_org_and_key("Automations bench")
    clients = bm.make_clients(org_id, CLIENTS, pacing=False, config=SIM_FAST, name="auto")
    make_automations(org_id)
    _, port = bm.start_gunicorn("api", "wsgi:app")
    api = bm.Api(port, key)
    try:
        print("bench: every pool and the scheduler, warming up ...", flush=True)
        bm.start_every_pool()
        send_load(api, clients, WARMUP, RATE, first=0)
        wait_until(lambda: replies_queued(org_id) >= WARMUP, 120, "the warm-up replies")
        n = RATE * SECONDS
        print(f"bench: {n} inbound messages at {RATE}/s ...", flush=True)

        def run() -> dict[str, float]:
            sent = send_load(api, clients, n, RATE, first=WARMUP)
            wait_until(lambda: replies_queued(org_id) >= WARMUP + n, 300, "every reply queued", interval=0.05)
            return sent

        sent, reading = bm.meter.measure(run)
        assert isinstance(sent, dict)
        stamps = timings(org_id, list(sent))
        total = [stamps[p][1] - sent[p] for p in sent]
        intake = [stamps[p][0] - sent[p] for p in sent]
        react = [stamps[p][1] - stamps[p][0] for p in sent]
        window = max(sent.values()) - min(sent.values())
        runs = bm.count("SELECT count(*) FROM automation_runs WHERE organization_id = :org", org=org_id)
    finally:
        bm._cleanup(keep)

    rows = [
        ("inbound messages", f"{n}", f"sent at {(n - 1) / window:.0f}/s (target {RATE}/s), {CLIENTS} sim clients"),
        ("automatic replies queued", f"{len(total)}",
         f"{runs / (n + WARMUP):.1f} runs recorded per message (fired or skipped)"),
        ("received -> reply queued, p50 / p90 / p99 / max (ms)",
         f"{ms(total, 50)} / {ms(total, 90)} / {ms(total, 99)} / {ms(total, 100)}", "request sent -> reply queued_at"),
        ("  api + inbox: -> inbound stored, p50 / p99 (ms)", f"{ms(intake, 50)} / {ms(intake, 99)}",
         "the report recorded, applied by the default pool"),
        ("  automations: stored -> reply queued, p50 / p99 (ms)", f"{ms(react, 50)} / {ms(react, 99)}",
         "automations.on_inbound: 5 automations evaluated, 1 reply"),
        ("server CPU per inbound message (ms)", f"{reading.cpu * 1000 / n:.2f}",
         "api, pools, scheduler, Postgres, Redis; replies sent over sim included"),
        ("  of which api / default pool / messages pool / Postgres (ms)",
         " / ".join(f"{reading.of(g) * 1000 / n:.2f}" for g in ("api", "pool:default", "pool:messages", "postgres")),
         "the default pool applies reports and runs automations"),
    ]
    width = max(len(r[0]) for r in rows)
    print()
    print(f"Automations, {RATE} inbound/s for {SECONDS} s (load average {load_at_start:.1f} -> "
          f"{os.getloadavg()[0]:.1f})")
    print(f"| {'measure'.ljust(width)} | value | note |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for name, value, note in rows:
        print(f"| {name.ljust(width)} | {value} | {note} |")
    for note in bm.meter.notes:
        print(f"* {note}")


if __name__ == "__main__":
    main()
