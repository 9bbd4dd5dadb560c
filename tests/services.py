"""Where the suite's Postgres and Redis come from: TEST_DATABASE_URL / TEST_REDIS_URL when set,
otherwise embedded servers under a temporary directory (started once per run)."""
from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path


def ensure_services() -> tuple[str, str]:
    """Return (server_url, redis_url), starting embedded servers for the ones not configured."""
    from workers.embedded import start_postgres, start_redis, stop_redis

    db = os.environ.get("TEST_DATABASE_URL")
    rd = os.environ.get("TEST_REDIS_URL")
    if db and rd:
        return db, rd
    base = Path(os.environ.get("TEST_DATA_DIR") or tempfile.mkdtemp(prefix="wa-test-"))
    if not db:
        db, server = start_postgres(base, database="postgres")
        os.environ["TEST_DATABASE_URL"] = db
        _keep.append(server)
    if not rd:
        rd, proc = start_redis(base)
        os.environ["TEST_REDIS_URL"] = rd
        atexit.register(stop_redis, proc, 5)
    return db, rd


_keep: list = []
