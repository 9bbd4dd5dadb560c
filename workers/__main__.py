"""``python -m workers``: background processing: run a pool, run the scheduler, run everything for
development (``dev``, what ``make run`` starts), inspect queues, manage dead letters. The
platform's data and the api are ``python -m app``."""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from app.queues import POOLS
from config import ROOT, check_production_settings, child_env, settings


def _need(name: str) -> None:
    if not getattr(settings, name):
        sys.exit(f"workers: {name} is not set, and no `make run` is running on {settings.data_dir} "
                 "(see README, 'Configuration')")


def cmd_run(args) -> None:
    check_production_settings()
    _need("REDIS_URL")
    _need("DATABASE_URL")
    pool = POOLS.get(args.pool)
    if pool is None:
        sys.exit(f"workers: unknown pool {args.pool!r}; pools: {', '.join(POOLS)}")
    argv = [sys.executable, "-m", "dramatiq", "workers.worker:setup", "jobs",
            "--path", str(ROOT), "--queues", *pool.queues,
            "--processes", str(args.processes or settings.WORKER_PROCESSES),
            "--threads", str(args.threads or pool.threads),
            "--worker-shutdown-timeout", str(args.shutdown_timeout_ms), "--skip-logging"]
    if args.watch:
        argv += ["--watch", str(ROOT), "-i", "**/*.py"]
    os.execve(sys.executable, argv, child_env(WORKER_POOL=pool.name))


def cmd_scheduler(args) -> None:
    check_production_settings()
    _need("REDIS_URL")
    _need("DATABASE_URL")
    from workers.scheduler import main

    main()


def cmd_dev(args) -> None:
    from workers.supervisor import main

    main()


def status_report() -> dict:
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats
    from workers.broker import queue_counts

    r = redis_client()
    beats = live_heartbeats(r)
    report = {"pools": [], "scheduler": [b for b in beats if b["kind"] == "scheduler"]}
    for pool in POOLS.values():
        workers = [b for b in beats if b["kind"] == "pool" and b["name"] == pool.name]
        report["pools"].append({"pool": pool.name, "live_workers": len(workers), "workers": workers,
                                "queues": [queue_counts(r, q) for q in pool.queues]})
    report["session_hosts"] = _session_hosts(r, beats)
    return report


def _session_hosts(r, beats: list[dict]) -> list[dict]:
    """Live session hosts (workers/session_host.py): their sessions, own queue and memory."""
    from app.clients.leases import HEARTBEAT_KIND
    from workers.broker import queue_counts

    hosts = sorted((b for b in beats if b["kind"] == HEARTBEAT_KIND), key=lambda b: b.get("host_id", ""))
    for host in hosts:
        host["queue_counts"] = queue_counts(r, host["queue"]) if host.get("queue") else None
    return hosts


def cmd_status(args) -> None:
    _need("REDIS_URL")
    report = status_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'pool':<10} {'workers':>7}  {'queue':<10} {'ready':>7} {'delayed':>8} {'dead':>6}")
    for p in report["pools"]:
        for q in p["queues"]:
            print(f"{p['pool']:<10} {p['live_workers']:>7}  "
                  f"{q['queue']:<10} {q['ready']:>7} {q['delayed']:>8} {q['dead']:>6}")
    leaders = [s for s in report["scheduler"] if s.get("leader")]
    print(f"scheduler: {len(report['scheduler'])} process(es), leader: "
          f"{leaders[0]['host'] + ':' + str(leaders[0]['pid']) if leaders else 'none'}")
    for p in report["pools"]:
        for w in p["workers"]:
            print(f"  {p['pool']:<10} {w['host']}:{w['pid']} threads={w.get('threads', '?')}")
    hosts = report.get("session_hosts", [])
    print(f"session hosts: {len(hosts)}")
    for h in hosts:
        queued = (h.get("queue_counts") or {}).get("ready", 0)
        print(f"  {h['host_id']}  pid={h['pid']}  sessions={len(h.get('sessions', []))}  "
              f"memory={h.get('rss_mb', '?')} MB RSS ({h.get('processes', '?')} processes incl. Chromium)  "
              f"queue={h.get('queue')} ready={queued}")
        for sess in h.get("sessions", []):
            print(f"    {sess['client_id']:<32} {sess.get('state', '?'):<9} {sess.get('phone') or ''}")


def cmd_ping(args) -> None:
    """Exit 0 when a process of this host has a live heartbeat (container health checks)."""
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats

    kind, name = ("scheduler", "scheduler") if args.scheduler else ("pool", args.pool)
    if not name:
        sys.exit("workers ping: give --pool NAME or --scheduler")
    try:
        beats = live_heartbeats(redis_client(), kind)
    except Exception as exc:
        sys.exit(f"workers ping: redis unavailable ({exc.__class__.__name__})")
    mine = [b for b in beats if b["name"] == name and b["host"] == socket.gethostname()]
    sys.exit(0 if mine else 1)


def _host_queues(r) -> list[str]:
    """Every per-host session queue ``sessions.<host id>`` that has dead letters, live host or not
    (a host that died leaves its queue behind: nobody else consumes it)."""
    from app.queues import HOST_QUEUE_PREFIX

    found = set()
    for key in r.scan_iter(match=f"dramatiq:{HOST_QUEUE_PREFIX}*.XQ", count=500):
        name = key.decode() if isinstance(key, bytes) else key
        found.add(name[len("dramatiq:"):-len(".XQ")])
    return sorted(found)


def _dlq_queues(r, args) -> list[str]:
    """The pools' queues and the per-host session queues, or those ``--queue`` names (an exact
    name, or a pattern such as ``sessions.*``)."""
    import fnmatch

    known = [q for p in POOLS.values() for q in p.queues] + _host_queues(r)
    if not args.queue:
        return known
    if any(c in args.queue for c in "*?["):
        return [q for q in known if fnmatch.fnmatchcase(q, args.queue)]
    return [args.queue]


def _retry_queue(queue: str) -> str:
    """Where a dead letter is enqueued again. One of a per-host queue goes to the shared
    ``sessions`` queue: its host may be gone, and whichever host takes it forwards it to the
    client's live owner (``sessions.start`` / ``stop`` / ``logout``) or hands the message back
    to the pipeline (``sessions.send``), which routes it to the owner of the moment."""
    from app.queues import HOST_QUEUE_PREFIX, SESSIONS_QUEUE

    return SESSIONS_QUEUE if queue.startswith(HOST_QUEUE_PREFIX) else queue


def cmd_dlq(args) -> None:
    from dramatiq.common import xq_name

    from app.clients.leases import HEARTBEAT_KIND
    from app.kv import redis_client
    from app.queues import HOST_QUEUE_PREFIX
    from app.system.heartbeats import live_heartbeats

    r = redis_client()
    live_host_queues = {b.get("queue") for b in live_heartbeats(r, HEARTBEAT_KIND)}
    total = 0
    for queue in _dlq_queues(r, args):
        xq = f"dramatiq:{xq_name(queue)}"
        ids = [i.decode() for i in r.zrange(xq, 0, -1)]  # type: ignore[union-attr]  # redis-py types replies bytes | str: ours are bytes
        msgs = r.hmget(f"{xq}.msgs", ids) if ids else []
        for mid, raw in zip(ids, msgs, strict=True):
            if raw is None:  # its body expired (dead_message_ttl): only the id is left
                if args.action != "list":
                    r.zrem(xq, mid)
                continue
            total += 1
            data = json.loads(raw)
            if args.action == "list":
                entry = {"queue": queue, "message_id": mid, "actor": data.get("actor_name"),
                         "args": data.get("args"), "error": data.get("options", {}).get("traceback", "")[-300:]}
                if queue.startswith(HOST_QUEUE_PREFIX):
                    entry["host_id"] = queue[len(HOST_QUEUE_PREFIX):]
                    entry["host_live"] = queue in live_host_queues
                    entry["retry_queue"] = _retry_queue(queue)
                print(json.dumps(entry))
            elif args.action == "retry":
                import dramatiq

                from workers.broker import get_broker

                msg: dramatiq.Message = dramatiq.Message(queue_name=_retry_queue(queue), actor_name=data["actor_name"],
                                       args=tuple(data["args"]), kwargs=data.get("kwargs") or {}, options={})
                get_broker().enqueue(msg)
                r.zrem(xq, mid)
                r.hdel(f"{xq}.msgs", mid)
            elif args.action == "purge":
                r.zrem(xq, mid)
                r.hdel(f"{xq}.msgs", mid)
    if args.action != "list":
        print(f"{args.action}: {total} message(s)")


def main(argv=None) -> None:
    import app.models  # noqa: F401  (an entry point: registers every table)

    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run one worker pool")
    p.add_argument("--pool", required=True, choices=sorted(POOLS))
    p.add_argument("--processes", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--shutdown-timeout-ms", type=int, default=10000)
    p.add_argument("--watch", action="store_true", help="reload on code changes (development)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("scheduler", help="run the scheduler (one leader at a time)")
    p.set_defaults(func=cmd_scheduler)
    p = sub.add_parser("dev", help="run everything for development (what `make run` calls)")
    p.set_defaults(func=cmd_dev)
    p = sub.add_parser("status", help="pools, live workers, queue depths")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("ping", help="health check for this host's worker or scheduler")
    p.add_argument("--pool")
    p.add_argument("--scheduler", action="store_true")
    p.set_defaults(func=cmd_ping)
    p = sub.add_parser("dlq", help="dead-letter queues (the pools' and every session host's): list, retry or purge")
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("--queue", help="one queue (e.g. default, sessions.<host id>) or a pattern (sessions.*)")
    p.set_defaults(func=cmd_dlq)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
