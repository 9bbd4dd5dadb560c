"""Applying ``schema.sql``: ``python -m app db init`` creates the database if needed and applies the
schema to an empty one; on an applied database it does nothing."""
from __future__ import annotations

import logging

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
    name = psycopg.conninfo.conninfo_to_dict(dsn).get("dbname")
    admin = with_database(dsn, "postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.errors.DuplicateDatabase:
            return False
    log.info("created database %s", name)
    return True


def apply_schema(url: str) -> bool:
    """Apply schema.sql unless already applied. True when it was applied now."""
    ensure_database(url)
    with psycopg.connect(plain_dsn(url), connect_timeout=5) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            applied = conn.execute("SELECT to_regclass('public.schema_version') IS NOT NULL").fetchone()[0]
            if applied:
                return False
            conn.execute(SCHEMA_FILE.read_text())
    return True


def schema_version(url: str) -> int | None:
    with psycopg.connect(plain_dsn(url), connect_timeout=5) as conn:
        if not conn.execute("SELECT to_regclass('public.schema_version') IS NOT NULL").fetchone()[0]:
            return None
        return conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
