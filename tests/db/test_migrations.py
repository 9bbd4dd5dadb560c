"""Migrations: a database made before them (the baseline) is upgraded by itself, data kept, and
ends up identical to one made from schema.sql; a fresh one is stamped with the newest migration;
`db init` on a current database changes nothing."""
from __future__ import annotations

import psycopg
import pytest

from app.schema import BASELINE, MIGRATIONS, apply_schema, head_revision, plain_dsn, schema_version, with_database
from config import settings


def _dbname(suffix: str) -> str:
    return psycopg.conninfo.conninfo_to_dict(plain_dsn(settings.DATABASE_URL))["dbname"] + suffix


@pytest.fixture
def scratch():
    """Empty databases of this test (named after the suite's), dropped afterwards."""
    made = []

    def make(suffix: str) -> str:
        url = with_database(settings.DATABASE_URL, _dbname(suffix))
        admin = plain_dsn(with_database(settings.DATABASE_URL, "postgres"))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_dbname(suffix)}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{_dbname(suffix)}"')
        made.append(suffix)
        return url

    yield make
    admin = plain_dsn(with_database(settings.DATABASE_URL, "postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        for suffix in made:
            conn.execute(f'DROP DATABASE IF EXISTS "{_dbname(suffix)}" WITH (FORCE)')


CATALOG = {
    "columns": """SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default,
                         collation_name, character_maximum_length
                  FROM information_schema.columns WHERE table_schema = 'public'""",
    # PostgreSQL 18 lists NOT NULL as constraints named after the column they were made for, and a
    # renamed column keeps its old name there: those are compared by table and definition only.
    "constraints": """SELECT conrelid::regclass::text, CASE WHEN contype = 'n' THEN '' ELSE conname END,
                             pg_get_constraintdef(oid)
                      FROM pg_constraint WHERE connamespace = 'public'::regnamespace""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'public'",
    "functions": """SELECT proname, pg_get_functiondef(oid) FROM pg_proc
                    WHERE pronamespace = 'public'::regnamespace""",
    "triggers": "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal",
    "sequences": "SELECT sequence_name, data_type FROM information_schema.sequences WHERE sequence_schema = 'public'",
}


def catalog(url: str) -> dict:
    with psycopg.connect(plain_dsn(url)) as conn:
        return {name: sorted(map(tuple, conn.execute(query).fetchall())) for name, query in CATALOG.items()}


def test_a_fresh_database_gets_schema_sql_stamped_with_the_newest_migration(scratch):
    url = scratch("_mig_fresh")
    assert apply_schema(url) == "created"
    assert schema_version(url) == head_revision()
    assert apply_schema(url) is None, "a second run changes nothing"


def test_a_database_made_before_migrations_upgrades_by_itself_and_keeps_its_data(scratch):
    old = scratch("_mig_old")
    with psycopg.connect(plain_dsn(old)) as conn:
        conn.execute((MIGRATIONS / "baseline.sql").read_text())
        conn.execute("INSERT INTO organizations (id, name) VALUES ('org_KEPT', 'kept')")
    assert schema_version(old) == BASELINE
    done = apply_schema(old)
    assert done == (None if head_revision() == BASELINE else "upgraded")
    assert schema_version(old) == head_revision()
    with psycopg.connect(plain_dsn(old)) as conn:
        assert conn.execute("SELECT name FROM organizations WHERE id = 'org_KEPT'").fetchone() == ("kept",)

    fresh = scratch("_mig_new")
    apply_schema(fresh)
    upgraded, expected = catalog(old), catalog(fresh)
    for part in CATALOG:
        assert upgraded[part] == expected[part], f"{part}: the migrations and schema.sql disagree"


def test_every_migration_follows_the_previous_one():
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config(str(MIGRATIONS / "alembic.ini"))
    cfg.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(cfg)
    assert len(script.get_heads()) == 1, "two migrations share a parent: merge them"
    revisions = list(script.walk_revisions())
    assert revisions[-1].revision == BASELINE and revisions[-1].down_revision is None


def test_db_status_shows_the_current_and_the_pending_migrations(scratch):
    import json
    import subprocess
    import sys

    from config import ROOT, child_env

    def status(url: str) -> dict:
        out = subprocess.run([sys.executable, "-m", "app", "db", "status", "--json"], cwd=ROOT, check=True,
                             capture_output=True, text=True, env=child_env(DATABASE_URL=url), timeout=60)
        return json.loads(out.stdout)

    old = scratch("_mig_status")
    with psycopg.connect(plain_dsn(old)) as conn:
        conn.execute((MIGRATIONS / "baseline.sql").read_text())
    before = status(old)
    assert before["current"] == BASELINE and before["head"] == head_revision()
    assert before["pending"] and before["pending"][-1] == head_revision(), "the baseline has migrations to come"
    apply_schema(old)
    assert status(old) == {"current": head_revision(), "head": head_revision(), "pending": []}
