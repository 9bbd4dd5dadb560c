"""Real Postgres and Redis for every test (ARCHITECTURE rule 12).

Before anything from the app is imported, the environment is pointed at a fresh test database
(``wa_test`` on the TEST_DATABASE_URL server, recreated and given ``schema.sql`` once per run) and
at the test Redis. Each test runs inside a transaction that is rolled back (``session``), and Redis
is flushed between tests. Tests that start real worker processes use ``committed`` instead: their
data is really committed, so other processes see it, and every table is truncated afterwards.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import ensure_services  # noqa: E402

_server_url, _redis_url = ensure_services()




def with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path="/" + name))


TEST_DB = os.environ.get("TEST_DATABASE_NAME", "wa_test")
os.environ.update({
    "APP_ENV": "test",
    "DATABASE_URL": with_database(_server_url, TEST_DB),
    "REDIS_URL": _redis_url,
    "DATA_DIR": os.environ.get("TEST_DATA_DIR") or tempfile.mkdtemp(prefix="wa-test-data-"),
    "RATE_LIMIT_ENABLED": os.environ.get("RATE_LIMIT_ENABLED", "false"),
    "LOG_LEVEL": "WARNING",
    "WORKER_HEARTBEAT_TTL": "3",
})

import psycopg  # noqa: E402
import pytest  # noqa: E402
from psycopg import sql  # noqa: E402


def _recreate_database() -> None:
    admin = with_database(os.environ["DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                     (TEST_DB,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEST_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEST_DB)))
    from app.schema import apply_schema

    apply_schema(os.environ["DATABASE_URL"])


_recreate_database()

# only now may the app be imported: config reads the environment once
import app.models  # noqa: E402,F401
from app import db as app_db  # noqa: E402


@pytest.fixture(scope="session")
def engine():
    return app_db.get_engine()


@pytest.fixture
def redis_conn():
    from app.kv import redis_client

    return redis_client()


@pytest.fixture(autouse=True)
def _flush_redis():
    from app.kv import redis_client

    redis_client().flushdb()
    yield


@pytest.fixture
def session(engine):
    """An ORM session in a transaction rolled back after the test. Request sessions opened by
    the app during the test join the same transaction (their commits become savepoints)."""
    conn = engine.connect()
    outer = conn.begin()
    app_db.SessionFactory.configure(bind=conn, join_transaction_mode="create_savepoint")
    s = app_db.SessionFactory()
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        conn.close()
        app_db.SessionFactory.configure(bind=engine, join_transaction_mode="conditional_savepoint")


def truncate_all(engine) -> None:
    from sqlalchemy import text

    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename <> 'schema_version'"))]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))


@pytest.fixture
def committed(engine):
    """For tests where other processes (workers) must see the data: a plain session whose commits
    are real; every table is truncated afterwards."""
    s = app_db.SessionFactory(bind=engine)
    try:
        yield s
    finally:
        s.close()
        truncate_all(engine)


@pytest.fixture
def app(session):
    from app import create_app

    application = create_app(TESTING=True)
    return application


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def committed_app(committed):
    from app import create_app

    return create_app(TESTING=True)


@pytest.fixture
def committed_client(committed_app):
    return committed_app.test_client()


@pytest.fixture
def run_pool():
    """Start real worker processes: ``run_pool("messages")``; all stopped at the end."""
    from tests.procs import WorkerProcesses

    procs = WorkerProcesses()
    yield procs.start
    procs.stop_all()
