"""The database schema: ``python -m app db init`` (and ``make run``, and the image's ``migrate``)
creates the database if needed and brings it to the current schema.

An empty database gets ``schema.sql`` (the whole current schema) and is stamped with the newest
migration. A database made earlier is upgraded by the migrations in ``migrations/versions``
(Alembic) it has not had yet; one made before migrations existed (``schema_version`` but no
``alembic_version``) is the baseline, ``0001``. tests/db/test_migrations.py checks that a database
upgraded from the baseline equals one made from schema.sql. Concurrent starts are serialised by
an advisory lock.
"""
from __future__ import annotations

import logging
from typing import cast

import psycopg
from psycopg import sql

from config import ROOT

log = logging.getLogger(__name__)

SCHEMA_FILE = ROOT / "schema.sql"
SCHEMA_LOCK = 727273


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    """The same server URL pointing at database ``name``."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist. True when created."""
    dsn = plain_dsn(url)
    try:
        psycopg.connect(dsn, connect_timeout=5).close()
        return False
    except psycopg.OperationalError as exc:
        if "does not exist" not in str(exc):
            raise
    name = cast(str, psycopg.conninfo.conninfo_to_dict(dsn).get("dbname"))  # typed str | int: a name is a str
    admin = with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    log.info("created database %s", name)
    return True


MIGRATIONS = ROOT / "migrations"
BASELINE = "0001"


def _alembic_config(connection):
    from alembic.config import Config

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def apply_schema(url: str) -> str | None:
    """Bring the database at ``url`` to the current schema. Returns ``"created"`` (schema.sql
    applied to an empty database), ``"upgraded"`` (migrations ran) or None (already current)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from app.db import sqlalchemy_url

    ensure_database(url)
    engine = create_engine(sqlalchemy_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": SCHEMA_LOCK})
            conn.commit()
            try:
                cfg = _alembic_config(conn)
                if not conn.execute(text("SELECT to_regclass('public.schema_version') IS NOT NULL")).scalar():
                    conn.connection.dbapi_connection.execute(SCHEMA_FILE.read_text())
                    conn.commit()
                    command.stamp(cfg, "head")
                    conn.commit()
                    return "created"
                current = MigrationContext.configure(conn).get_current_revision()
                if current is None:  # made before migrations existed: the baseline
                    command.stamp(cfg, BASELINE)
                    conn.commit()
                    current = BASELINE
                if current == head_revision():
                    return None
                command.upgrade(cfg, "head")
                conn.commit()
                log.info("database upgraded from %s to %s", current, head_revision())
                return "upgraded"
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": SCHEMA_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def schema_version(url: str) -> str | None:
    """The database's migration (revision id), or None when it has no schema yet."""
    with psycopg.connect(plain_dsn(url), connect_timeout=5) as conn:
        if not conn.execute("SELECT to_regclass('public.schema_version') IS NOT NULL").fetchone()[0]:
            return None
        if not conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()[0]:
            return BASELINE
        return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]


def pending_revisions(current: str | None) -> list[str]:
    """The migrations a database at revision ``current`` has not had yet, oldest first (all of
    them for a database without a schema, which ``db init`` creates from schema.sql instead)."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(_alembic_config(None))
    ahead = [rev.revision for rev in scripts.iterate_revisions("head", current or "base")]
    return [r for r in reversed(ahead) if r != current]
