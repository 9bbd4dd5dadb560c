"""What the benchmarks share: child processes, waiting, percentiles, the server CPU meter and the
webhook receiver that runs in a process of its own.

The meter is what makes costs comparable on a small shared machine: wall-clock rates there depend
on everything else running, but the CPU the server side spends per unit does not (much).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Processes:
    """Child processes of a benchmark, each in its own session (so it stops with its children),
    each logging to ``<log_dir>/<name>.log``."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, []

    def start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env or dict(os.environ), stdout=log,
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


def wait_for_http(port: int, what: str, timeout: float = 60) -> None:
    """Wait until a server on this machine's ``port`` answers ``GET /health`` (200, or 404 for an
    anchor app that has no such route)."""
    import http.client

    def up() -> bool:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            return c.getresponse().status in (200, 404)
        except OSError:
            return False

    wait_until(up, timeout, what)


def pct(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# ----------------------------------------------------------------------------- CPU


def _own_cpu(proc) -> float:
    """CPU seconds of ``proc`` and of its children that exited and were reaped: a Postgres backend
    or a gunicorn worker that ends between two readings still counts (in its parent's figures)."""
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def tree_cpu(pids: Iterable[int], seen: set[int] | None = None) -> float:
    """CPU seconds so far of the processes ``pids`` and all their descendants, each counted once."""
    import psutil

    seen = set() if seen is None else seen
    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for p in family:
            if p.pid in seen:
                continue
            seen.add(p.pid)
            try:
                total += _own_cpu(p)
            except psutil.Error:
                pass
    return total


class Reading:
    """CPU seconds per group between two meter readings, and the wall time between them."""

    def __init__(self, groups: dict[str, float], wall: float):
        self.groups, self.wall = groups, wall

    @property
    def cpu(self) -> float:
        return sum(self.groups.values())

    def of(self, *prefixes: str) -> float:
        return sum(v for k, v in self.groups.items() if k.startswith(prefixes))


class ServerMeter:
    """CPU of the server side only: every process registered here, with all its descendants.

    A group is a name ("api", "pool:messages", "postgres", ...) and a callable giving its root pids
    at each reading, so processes that start later (a gunicorn worker replaced, a Postgres backend)
    are found. The benchmark process itself, its client threads and the webhook receiver are never
    registered: they are the load. ``measure()`` reads before and after a block.
    """

    def __init__(self):
        self.groups: dict[str, Callable[[], list[int]]] = {}
        self.notes: list[str] = []

    def add(self, group: str, pids: Callable[[], list[int]] | int) -> None:
        self.groups[group] = pids if callable(pids) else (lambda pid=pids: [pid])

    def remove(self, group: str) -> None:
        self.groups.pop(group, None)

    def read(self) -> dict[str, float]:
        seen: set[int] = set()
        return {name: tree_cpu(pids(), seen) for name, pids in list(self.groups.items())}

    def measure(self, fn: Callable[[], object]) -> tuple[object, Reading]:
        """Runs ``fn()``; returns its result and the server CPU it cost, per group."""
        before, started = self.read(), time.perf_counter()
        result = fn()
        after, wall = self.read(), time.perf_counter() - started
        return result, Reading({k: after[k] - before.get(k, 0.0) for k in after}, wall)


def postmaster_pids(data_dir: Path) -> Callable[[], list[int]]:
    """The embedded cluster's postmaster (its backends are its children)."""
    pidfile = data_dir / "postmaster.pid"

    def pids() -> list[int]:
        try:
            return [int(pidfile.read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    return pids


def named_postgres_pids() -> list[int]:
    """Every process named ``postgres`` on this machine: an external server, with whatever else
    uses it."""
    import psutil

    return [p.pid for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")]


def redis_server_pid(redis_url: str) -> int | None:
    """The pid of the redis-server answering ``redis_url`` when it runs on this machine."""
    import psutil
    import redis

    pid = redis.Redis.from_url(redis_url).info("server").get("process_id")
    try:
        return pid if pid and "redis" in psutil.Process(pid).name() else None
    except psutil.Error:
        return None


# ----------------------------------------------------------------------------- the webhook receiver


def _receiver_main(conn) -> None:
    """Child process: a Receiver that notes (path, latency) of every request; answers commands."""
    from tests.webhook_receiver import Receiver

    lock = threading.Lock()
    seen: list[tuple[str, float]] = []

    def probe(item) -> None:
        created = datetime.fromisoformat(json.loads(item.body)["created_at"]).timestamp()
        with lock:
            seen.append((item.path, item.received_at - created))

    rx = Receiver().start()
    rx.on_request = probe
    conn.send(rx.port)
    while True:
        command = conn.recv()
        if command == "stop":
            break
        with lock:
            if command == "count":
                conn.send(len(seen))
            elif command == "take":
                conn.send(list(seen))
                seen.clear()
    rx.stop()


class ReceiverProcess:
    """A webhook receiver on loopback in a forked process of its own (fork it before any connection
    exists): it is load, not server, so its CPU stays out of the server meter. Latency of a
    delivery = its receipt time minus the ``created_at`` of the event in its envelope."""

    def __init__(self):
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_receiver_main, args=(child,), daemon=True)
        self.proc.start()
        self.port = self.conn.recv()
        self._lock = threading.Lock()

    def ask(self, command: str):
        with self._lock:
            self.conn.send(command)
            return self.conn.recv()

    def wait_for(self, count: int, timeout: float) -> float:
        """Blocks until ``count`` requests arrived; returns the time.time() it saw the last one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ask("count") >= count:
                return time.time()
            time.sleep(0.005)
        raise SystemExit(f"bench: only {self.ask('count')} of {count} deliveries arrived within {timeout:.0f} s")

    def stop(self) -> None:
        try:
            self.conn.send("stop")
        except OSError:
            pass
        self.proc.join(5)
