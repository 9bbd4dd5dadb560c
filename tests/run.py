"""``make test``: start embedded Postgres/Redis unless TEST_DATABASE_URL / TEST_REDIS_URL are set,
then run pytest against them, in parallel (pytest-xdist). Arguments are passed to pytest
(``make test ARGS='-k outbox'``); ``-n N`` chooses the number of workers, ``-n 0`` runs in this
process alone.

The servers are started here, once, and shared by every xdist worker (each worker has a database
and a Redis database number of its own, see tests/conftest.py)."""
from __future__ import annotations

import os
import subprocess
import sys


def main() -> int:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from tests.services import ensure_services
    from workers.embedded import EmbeddedError

    try:
        db, rd = ensure_services()
    except EmbeddedError as exc:
        print(f"make test: {exc}", file=sys.stderr)
        return 2
    problem = _unreachable(db, rd)
    if problem:
        print(f"make test: {problem}", file=sys.stderr)
        return 2
    args = sys.argv[1:]
    extra = parallel_args(args)
    print(f"make test: Postgres {db.split('@')[-1]}  Redis {rd.split('@')[-1]}  {' '.join(extra)}".rstrip(),
          flush=True)
    argv = [sys.executable, "-m", "pytest", *extra, *args]
    return subprocess.call(argv, env={**os.environ, "TEST_DATABASE_URL": db, "TEST_REDIS_URL": rd})


def default_workers() -> int:
    """Most of the suite waits (on worker processes, browsers, sockets) rather than computes, so one
    xdist worker more than there are cores keeps the cores busy; four at most."""
    return max(2, min(4, (os.cpu_count() or 1) + 1))


def parallel_args(args: list[str]) -> list[str]:
    """What to add to the pytest arguments: the worker count unless they give one (``-n``,
    ``--numprocesses``) or turn xdist off, and ``--dist loadgroup`` (tests marked
    ``xdist_group`` share one worker) unless they choose a distribution."""
    if "no:xdist" in " ".join(args) or any(a in ("--pdb", "--trace") for a in args):
        return []
    asked = _workers_asked(args)
    if asked is not None and asked.strip() == "0":
        return []
    extra = ["-n", str(default_workers())] if asked is None else []
    if not any(a == "--dist" or a.startswith("--dist=") for a in args):
        extra += ["--dist", "loadgroup"]
    return extra


def _workers_asked(args: list[str]) -> str | None:
    """The value of ``-n`` / ``--numprocesses`` in ``args``, if given."""
    for i, a in enumerate(args):
        if a in ("-n", "--numprocesses"):
            return args[i + 1] if i + 1 < len(args) else ""
        if a.startswith("--numprocesses="):
            return a.split("=", 1)[1]
        if a.startswith("-n") and not a.startswith("--"):
            return a[2:]
    return None


def _unreachable(db: str, rd: str) -> str | None:
    """A clear sentence when a configured server does not answer, instead of a wall of tracebacks."""
    import psycopg
    import redis

    try:
        psycopg.connect(db, connect_timeout=5).close()
    except Exception as exc:
        return f"cannot connect to PostgreSQL at TEST_DATABASE_URL ({exc.__class__.__name__}: {str(exc).strip()[:200]})"
    try:
        redis.Redis.from_url(rd, socket_connect_timeout=5).ping()
    except Exception as exc:
        return f"cannot connect to Redis at TEST_REDIS_URL ({exc.__class__.__name__}: {exc})"
    return None


if __name__ == "__main__":
    sys.exit(main())
