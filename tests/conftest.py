"""Real Postgres and Redis for every test (ARCHITECTURE rule 12).

Before anything from the app is imported (``pytest_configure`` runs before any test module is
collected), the environment is pointed at this process's own test database (``TEST_DATABASE_NAME``,
default ``wa_test``, on the TEST_DATABASE_URL server, recreated and given ``schema.sql`` once per
run) and at its own Redis database. Each test runs inside a transaction that is rolled back
(``session``), and Redis is flushed between tests. Tests that start real worker processes use
``committed`` instead: their data is really committed, so other processes see it, and every table
is emptied afterwards.

Parallel runs (pytest-xdist; ``make test`` uses it): worker ``gwN`` gets the database
``<TEST_DATABASE_NAME>_gwN`` and the Redis database ``base + N`` (mod 16) of TEST_REDIS_URL, so no
worker sees what another commits, enqueues or flushes; the processes a test starts inherit both
through the environment. Embedded servers (no TEST_DATABASE_URL / TEST_REDIS_URL) are started once,
by tests/run.py or by the xdist controller, and shared by the workers.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def with_redis_db(url: str, offset: int) -> str:
    """``url`` with its database number moved ``offset`` up (mod 16, Redis' default count)."""
    parts = urlsplit(url)
    base = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(base + offset) % 16}"))


def pytest_configure(config):
    from tests.services import ensure_services

    worker = getattr(config, "workerinput", {}).get("workerid")  # "gw0", ... in an xdist worker
    server_url, redis_url = ensure_services()  # sets TEST_DATABASE_URL / TEST_REDIS_URL for the workers
    if worker is None and getattr(config.option, "dist", "no") != "no":
        return  # the xdist controller runs no test: its workers set themselves up
    name = os.environ.get("TEST_DATABASE_NAME", "wa_test")
    if worker:
        name = f"{name}_{worker}"
        redis_url = with_redis_db(redis_url, int(worker.removeprefix("gw")))
    data_dir = os.environ.get("TEST_DATA_DIR")
    if not data_dir:
        data_dir = config._wa_data_dir = tempfile.mkdtemp(prefix="wa-test-data-")  # removed at the end
    os.environ.update({
        "TEST_DATABASE_NAME": name,  # tests derive the names of their extra databases from it
        "APP_ENV": "test",
        "DATABASE_URL": with_database(server_url, name),
        "REDIS_URL": redis_url,
        "DATA_DIR": data_dir,
        "RATE_LIMIT_ENABLED": os.environ.get("RATE_LIMIT_ENABLED", "false"),
        "LOG_LEVEL": "WARNING",
        "WORKER_HEARTBEAT_TTL": "3",
        # counters written at once: a test reads them right after (their buffering is tested on its own)
        "METRICS_FLUSH_MS": "0",
    })
    _recreate_database(name)


def pytest_unconfigure(config):
    made = getattr(config, "_wa_data_dir", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)


#: the groups of tests that share one xdist worker, longest first: they start first, so the rest
#: of the suite runs beside them on the other workers instead of after them
LONG_GROUPS = ("faults", "make_run", "browser", "cloud_pipeline")


def pytest_collection_modifyitems(session, config, items):
    """Order the long groups first (the same order on every xdist worker: a stable sort)."""
    def rank(item) -> int:
        marker = item.get_closest_marker("xdist_group")
        group = (marker.args[0] if marker.args else marker.kwargs.get("name")) if marker else None
        return LONG_GROUPS.index(group) if group in LONG_GROUPS else len(LONG_GROUPS)

    items.sort(key=rank)


def _recreate_database(name: str) -> None:
    import psycopg
    from psycopg import sql

    admin = with_database(os.environ["DATABASE_URL"], "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # only now may the app be imported: config reads the environment once
    from app.schema import apply_schema

    apply_schema(os.environ["DATABASE_URL"])


@pytest.fixture(scope="session")
def engine():
    import app.models  # noqa: F401  (registers every model)
    from app import db as app_db

    return app_db.get_engine()


@pytest.fixture
def redis_conn():
    from app.kv import redis_client

    return redis_client()


@pytest.fixture(autouse=True)
def _flush_redis():
    from app.inbox.service import forget_taken_wakes
    from app.kv import redis_client

    redis_client().flushdb()
    forget_taken_wakes()
    yield


class _Overridden:
    """Settings changed by ``override_settings``; as a context manager, put back at the block's end."""

    def __init__(self, settings, changes: dict):
        self._settings = settings
        self._before = {name: getattr(settings, name) for name in changes}
        settings.override(**changes)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self._settings.override(**self._before)


@pytest.fixture(autouse=True)
def override_settings():
    """``override_settings(NAME=value, ...)`` changes settings in this process until the test ends;
    ``with override_settings(...):`` only for the block. Whatever a test changes, however, is put
    back when it ends (autouse), so no setting leaks into the next test."""
    from config import settings

    saved = dict(vars(settings))
    yield lambda **changes: _Overridden(settings, changes)
    settings.override(**saved)


@pytest.fixture
def session(engine):
    """An ORM session in a transaction rolled back after the test. Request sessions opened by
    the app during the test join the same transaction (their commits become savepoints)."""
    from app import db as app_db

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
    """Empty every table. Identities are not restarted: a row id is never used twice in a run, so a
    late write about an earlier test's row (the outbox deleting dispatched rows in the background,
    a worker finishing a job) cannot touch a later test's row that happens to get the same id."""
    from sqlalchemy import text

    with engine.begin() as conn:
        tables = [r[0] for r in conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname='public' AND tablename NOT IN ('schema_version', 'alembic_version')"))]
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE"))


@pytest.fixture
def committed(engine):
    """For tests where other processes (workers) must see the data: a plain session whose commits
    are real; every table is emptied afterwards."""
    from app import db as app_db

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


# ----------------------------------------------------------------------------- shared by several domains


@pytest.fixture
def own_postgres_dir():
    """A directory for an embedded Postgres of the test's own: it runs as another user, so its data
    lives outside pytest's temporary root, whose permissions any other pytest session of this user
    resets to 0700."""
    path = Path(tempfile.mkdtemp(prefix="wa-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def org(session):
    from tests import factories as f

    return f.make_organization(session)


@pytest.fixture
def committed_org(committed):
    """An organisation that other processes (workers) see."""
    from tests import factories as f

    org = f.make_organization(committed)
    committed.commit()
    return org


@pytest.fixture
def admin_headers(session, org):
    """Bearer headers of an admin user of ``org``."""
    from tests.auth_helpers import principal_headers

    return principal_headers(session, org, "admin")


@pytest.fixture
def admin_key_headers(session, org):
    """``X-API-Key`` headers of an admin API key of ``org``."""
    from tests.auth_helpers import api_key_headers

    return api_key_headers(session, org, "admin")


@pytest.fixture
def committed_headers(committed, committed_org):
    """``X-API-Key`` headers of an admin API key of ``committed_org``, committed."""
    from tests.auth_helpers import api_key_headers

    headers = api_key_headers(committed, committed_org, "admin")
    committed.commit()
    return headers


@pytest.fixture
def receiver():
    """A webhook receiver on loopback (tests/webhook_receiver.py)."""
    from tests.webhook_receiver import Receiver

    with Receiver() as rx:
        yield rx


@pytest.fixture
def allow_private(override_settings):
    """WEBHOOK_ALLOW_PRIVATE=true in this process for the test (the loopback receiver is private)."""
    override_settings(WEBHOOK_ALLOW_PRIVATE=True)


@pytest.fixture
def allow_loopback(override_settings):
    """The fake Graph API (and the fake proxies) listen on loopback: allow this machine's addresses,
    and only those, in the address guard for the test."""
    override_settings(WEBHOOK_ALLOW_PRIVATE="loopback")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 API over HTTP (moto's standalone server, started once per test process on a free
    port of this machine): the address ``http://127.0.0.1:PORT``."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_settings(override_settings, s3_endpoint, tmp_path):
    """Settings of ``MEDIA_STORAGE=s3`` on that server, with a bucket (not yet created) and a
    ``DATA_DIR`` of this test's own."""
    import secrets

    bucket = f"wa-test-{secrets.token_hex(8)}"
    override_settings(MEDIA_STORAGE="s3", S3_ENDPOINT_URL=s3_endpoint, S3_BUCKET=bucket, S3_REGION="us-east-1",
                      S3_ACCESS_KEY_ID="testing", S3_SECRET_ACCESS_KEY="testing", DATA_DIR=str(tmp_path / "data"))
    return bucket
