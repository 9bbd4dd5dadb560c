"""``make run``: one command that runs the whole product on a laptop.

Starts embedded Postgres and Redis under DATA_DIR unless DATABASE_URL / REDIS_URL are given,
applies the schema, then runs the api (gunicorn, on HOST:PORT), one process of every worker pool
and the scheduler, prefixing each line of their output with its name. A child that dies is
restarted with backoff. Ctrl-C or SIGTERM stops every child (SIGTERM, then SIGKILL after 12 s)
and the embedded services, well within 20 seconds.

While it runs, ``DATA_DIR/run.json`` holds the servers' URLs (``config.running_services``), so
``python -m app ...`` and ``python -m workers ...`` in another shell find them by themselves.
Settings are passed to the children as they are: nothing the operator set is overridden.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request

from app.queues import POOLS
from config import ROOT, RUN_FILE, bind_address, child_env, is_loopback_host, running_services, settings

COLORS = ["36", "32", "35", "33", "34", "91", "96", "92"]
STOP_GRACE_S = 12


class Child:
    def __init__(self, name: str, argv: list[str], env: dict, color: str):
        self.name, self.argv, self.env, self.color = name, argv, env, color
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0
        self.buffer = b""

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if this supervisor dies, even by SIGKILL (no orphans)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def children_env(database_url: str, redis_url: str, data_dir) -> dict:
    """The environment of every child: the operator's, plus where the servers are. Nothing the
    operator set is overridden (a guard like WEBHOOK_ALLOW_PRIVATE keeps its value)."""
    env = child_env(DATABASE_URL=database_url, REDIS_URL=redis_url, DATA_DIR=str(data_dir),
                    APP_ENV=settings.APP_ENV, HOST=settings.HOST, PYTHONUNBUFFERED="1")
    env.setdefault("LOG_FORMAT", "text")  # one combined log for a person, unless asked otherwise
    return env


def _local_host(host: str) -> str:
    """How this machine reaches an api listening on ``host``."""
    if host in ("0.0.0.0", "", "::", "[::]"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _write_run_file(path, content: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def say(name: str, color: str, line: str) -> None:
    tty = sys.stdout.isatty()
    label = f"{name:<16}|"
    if tty:
        label = f"\033[{color}m{label}\033[0m"
    sys.stdout.write(f"{label} {line}\n")
    sys.stdout.flush()


def main() -> None:
    from workers.embedded import EmbeddedError, start_postgres, start_redis, stop_redis

    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    other = running_services(data_dir)
    if other and int(other.get("pid", 0)) != os.getpid():
        sys.exit(f"make run: already running on {data_dir} (pid {other['pid']}, {other.get('api', '')}); "
                 "stop it first, or give this one another DATA_DIR")
    stopping = {"flag": False}

    def _stop(*_):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)

    redis_proc = None
    try:
        database_url = settings.DATABASE_URL
        if not database_url:
            say("postgres", "90", f"starting embedded PostgreSQL in {data_dir / 'postgres'}")
            database_url, _pg = start_postgres(data_dir)
        redis_url = settings.REDIS_URL
        if not redis_url:
            say("redis", "90", f"starting embedded Redis in {data_dir / 'redis'}")
            redis_url, redis_proc = start_redis(data_dir)
    except EmbeddedError as exc:
        sys.exit(f"make run: {exc}")

    from app.schema import apply_schema

    try:
        applied = apply_schema(database_url)
    except Exception as exc:
        sys.exit(f"make run: cannot apply the schema to {database_url}: {exc}")
    say("db", "90", {"created": "schema applied", "upgraded": "schema upgraded (data kept)"}.get(
        applied, "schema already present (data kept)"))

    env = children_env(database_url, redis_url, data_dir)
    py = sys.executable
    children = [Child("api", [py, "-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
                              "--bind", bind_address(settings.HOST, settings.PORT),
                              "--workers", "2", "--threads", "4", "--graceful-timeout", "8"],
                      env, COLORS[0])]
    for i, pool in enumerate(POOLS):
        children.append(Child(f"worker-{pool}", [py, "-m", "workers", "run", "--pool", pool,
                                                 "--processes", "1", "--shutdown-timeout-ms", "8000"],
                              env, COLORS[(i + 1) % len(COLORS)]))
    children.append(Child("scheduler", [py, "-m", "workers", "scheduler"], env, COLORS[-1]))
    for c in children:
        c.start()

    base = f"http://{_local_host(settings.HOST)}:{settings.PORT}"
    run_file = data_dir / RUN_FILE
    _write_run_file(run_file, {"pid": os.getpid(), "api": base, "DATABASE_URL": database_url,
                               "REDIS_URL": redis_url})
    announced = False
    started_at = time.monotonic()
    sel = selectors.DefaultSelector()
    for c in children:
        sel.register(c.proc.stdout, selectors.EVENT_READ, c)

    parent = os.getppid()
    try:
        while not stopping["flag"]:
            if os.getppid() != parent:  # `make` (or the terminal) went away: stop too
                break
            for key, _ in sel.select(timeout=0.5):
                c = key.data
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                c.buffer += chunk
                *lines, c.buffer = c.buffer.split(b"\n")
                for line in lines:
                    say(c.name, c.color, line.decode(errors="replace"))
            now = time.monotonic()
            for c in children:
                if c.proc.poll() is not None and not stopping["flag"]:
                    if c.next_start == 0.0:
                        c.restarts += 1
                        delay = min(30, 2 ** min(c.restarts, 5))
                        c.next_start = now + delay
                        say(c.name, c.color, f"exited with {c.proc.returncode}; restarting in {delay}s")
                    elif now >= c.next_start:
                        c.next_start = 0.0
                        try:
                            sel.unregister(c.proc.stdout)
                        except (KeyError, ValueError):
                            pass
                        c.start()
                        sel.register(c.proc.stdout, selectors.EVENT_READ, c)
            if not announced and now - started_at > 1 and int(now * 2) % 2 == 0:
                try:
                    with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                        if resp.status == 200:
                            announced = True
                            banner = [
                                "WhatsApp Service is running",
                                f"  API        {base}/api",
                                f"  API docs   {base}/api/docs   (OpenAPI: {base}/api/openapi.json)",
                                f"  Dashboard  {base}/dashboard",
                                f"  Health     {base}/health",
                                f"  Listening  {settings.HOST}:{settings.PORT}"
                                + ("   (this machine only; HOST=0.0.0.0 to open it to the network)"
                                   if is_loopback_host(settings.HOST) else ""),
                                f"  Data       {data_dir}",
                                f"  Postgres   {database_url}",
                                f"  Redis      {redis_url}",
                                f"  (written to {run_file}: `python -m app ...` and `python -m workers ...`"
                                " in another shell use them)",
                                "  Press Ctrl-C to stop.",
                            ]
                            for banner_line in banner:
                                say("make run", "1", banner_line)
                except Exception:
                    pass
    finally:
        say("make run", "1", "stopping...")
        try:
            run_file.unlink()
        except OSError:
            pass
        for c in children:
            c.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for c in children:
            try:
                c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass  # killed below
        for c in children:
            if c.proc.poll() is None:
                say(c.name, c.color, "did not stop in time; killing")
                c.signal(signal.SIGKILL)
                c.proc.wait(2)
        if redis_proc is not None:
            stop_redis(redis_proc, timeout=4)
        say("make run", "1", "stopped")
