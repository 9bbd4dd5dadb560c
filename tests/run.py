"""``make test``: start embedded Postgres/Redis unless TEST_DATABASE_URL / TEST_REDIS_URL are set,
then run pytest against them. Arguments are passed to pytest (``make test ARGS='-k outbox'``)."""
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
    print(f"make test: Postgres {db.split('@')[-1]}  Redis {rd.split('@')[-1]}", flush=True)
    argv = [sys.executable, "-m", "pytest", *sys.argv[1:]]
    return subprocess.call(argv, env={**os.environ, "TEST_DATABASE_URL": db, "TEST_REDIS_URL": rd})


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
