"""Helpers to run the product's real processes (worker pools, scheduler) from tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> str:
    """Stop a process group and return its output."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return (out or b"").decode(errors="replace")


class Output:
    """A process's output lines, read in the background (so its pipe never fills up)."""

    def __init__(self, proc: subprocess.Popen):
        import threading

        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._reader.start()

    def _pump(self, proc) -> None:
        for raw in proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def stop(self, proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 15) -> list[str]:
        """Stop the process group (SIGKILL after ``timeout``) and return every line it wrote."""
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self._reader.join(10)
        return list(self.lines)


def gunicorn(port: int, *args: str, **env) -> subprocess.Popen:
    """The api under gunicorn, configured as `make run` and the Docker image run it."""
    return spawn(["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "wsgi:app",
                  "--bind", f"127.0.0.1:{port}", *args], **env)


def wait_for(predicate, timeout: float = 20, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class WorkerProcesses:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, pool: str, threads: int | None = None, wait: bool = True, **env) -> subprocess.Popen:
        from app.kv import redis_client
        from app.system.heartbeats import live_heartbeats

        args = ["-m", "workers", "run", "--pool", pool, "--processes", "1", "--shutdown-timeout-ms", "3000"]
        if threads:
            args += ["--threads", str(threads)]
        before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
        proc = spawn(args, **env)
        self.procs.append(proc)
        if wait:
            wait_for(lambda: proc.poll() is not None or any(
                b["name"] == pool and b["pid"] not in before for b in live_heartbeats(redis_client(), "pool")),
                timeout=30, message=f"worker pool {pool} heartbeat")
            if proc.poll() is not None:
                raise AssertionError(f"worker pool {pool} exited:\n{stop(proc)}")
        return proc

    def stop_all(self) -> None:
        for p in self.procs:
            stop(p)
        self.procs.clear()
