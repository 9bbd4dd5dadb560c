"""schema.sql and the SQLAlchemy models describe the same database.

Reflects the live test database (the ``engine`` fixture, where schema.sql has been applied) and
compares it with ``app.db.Base.metadata`` as registered by ``import app.models``: tables, columns
(type, nullability), primary keys and foreign keys. Also checks the tenancy rules: every
tenant-owned table has ``organization_id`` with a foreign key to ``organizations``.
"""
from __future__ import annotations

import re

import pytest
from sqlalchemy import inspect, text

import app.models  # noqa: F401  (registers every model)
from app.db import Base

# Tables that do not belong to one organisation:
#   organizations   - the tenants themselves
#   schema_version  - the schema's own version
#   job_outbox      - broker messages waiting to be sent; they carry only actor names and ids
#   analytics_watermarks - how far the rollup job has read message_status_history (one row for all)
NOT_TENANT_OWNED = {"organizations", "schema_version", "job_outbox", "analytics_watermarks"}

#: Every table of the product, as schema.sql creates them.
TABLES = {
    "analytics_daily", "analytics_exports", "analytics_hourly", "analytics_totals_daily", "analytics_totals_hourly",
    "analytics_watermarks", "api_keys", "audit_logs", "automation_runs",
    "automations", "ban_alerts", "campaign_clients", "campaign_recipients", "campaigns", "client_sessions", "client_status_history", "clients",
    "contact_imports", "contact_list_members", "contact_lists", "contacts", "idempotency_keys", "job_outbox", "media",
    "message_status_history", "messages", "organization_settings", "organizations", "proxies", "refresh_tokens",
    "schema_version", "template_approvals", "templates", "transport_events", "user_clients", "users", "webhook_deliveries",
    "webhook_delivery_attempts", "webhook_events", "webhooks",
}

VIEWS = ("v_client_stats", "v_organization_stats", "v_campaign_progress")

MODEL_TABLES = sorted(Base.metadata.tables)


@pytest.fixture(scope="module")
def db(engine):
    """The reflected live schema: {table: {"columns", "pk", "fks"}}."""
    insp = inspect(engine)
    tables = {}
    for name in insp.get_table_names():
        if name == "alembic_version":  # Alembic's bookkeeping (which migration the database has had)
            continue
        tables[name] = {
            "columns": {c["name"]: c for c in insp.get_columns(name)},
            "pk": set(insp.get_pk_constraint(name)["constrained_columns"]),
            "fks": insp.get_foreign_keys(name),
        }
    return tables


def _type(type_, dialect) -> str:
    """A column type compiled for PostgreSQL, normalised to its family (collation kept)."""
    s = " ".join(type_.compile(dialect=dialect).upper().split())
    s = re.sub(r"^(CHARACTER VARYING|VARCHAR|CHAR|CHARACTER)(\(\d+\))?", "TEXT", s)
    s = s.replace("TIMESTAMP WITHOUT TIME ZONE", "TIMESTAMP").replace("FLOAT(53)", "DOUBLE PRECISION")
    s = s.replace("TIME WITHOUT TIME ZONE", "TIME")
    s = re.sub(r"^(NUMERIC|DECIMAL)\(.*\)", "NUMERIC", s)
    return s


def _ondelete(value) -> str:
    value = (value or "NO ACTION").upper()
    return "NO ACTION" if value == "RESTRICT" else value  # RESTRICT and NO ACTION behave alike here


def test_every_table_has_a_model_and_every_model_a_table(db):
    in_db, in_models = set(db), set(MODEL_TABLES)
    assert not in_db - in_models, f"tables without a model: {sorted(in_db - in_models)}"
    assert not in_models - in_db, f"models without a table: {sorted(in_models - in_db)}"


def test_the_database_has_exactly_the_tables_of_the_product(db):
    """Against a written list: a table dropped from schema.sql and the models together fails here."""
    assert set(db) == TABLES, (f"missing: {sorted(TABLES - set(db))}; "
                               f"not in the list: {sorted(set(db) - TABLES)}")
    assert set(MODEL_TABLES) == TABLES, (f"not mapped: {sorted(TABLES - set(MODEL_TABLES))}; "
                                         f"not in the list: {sorted(set(MODEL_TABLES) - TABLES)}")


@pytest.mark.parametrize("table", MODEL_TABLES)
def test_columns_match(db, engine, table):
    if table not in db:
        pytest.fail(f"table {table} is mapped but missing from the database")
    live = db[table]["columns"]
    model = Base.metadata.tables[table].c
    model_names = {c.name for c in model}
    problems = []
    problems += [f"column {n} in the database but not in the model" for n in sorted(set(live) - model_names)]
    problems += [f"column {n} in the model but not in the database" for n in sorted(model_names - set(live))]
    for col in model:
        if col.name not in live:
            continue
        want, got = _type(col.type, engine.dialect), _type(live[col.name]["type"], engine.dialect)
        if want != got:
            problems.append(f"{col.name}: model type {want}, database type {got}")
        if bool(col.nullable) != bool(live[col.name]["nullable"]):
            problems.append(f"{col.name}: model nullable={col.nullable}, database nullable={live[col.name]['nullable']}")
    assert not problems, f"{table}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("table", MODEL_TABLES)
def test_primary_and_foreign_keys_match(db, table):
    if table not in db:
        pytest.fail(f"table {table} is mapped but missing from the database")
    model = Base.metadata.tables[table]
    assert {c.name for c in model.primary_key.columns} == db[table]["pk"], f"{table}: primary key differs"

    live_fks = {
        (tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]),
         _ondelete(fk.get("options", {}).get("ondelete")))
        for fk in db[table]["fks"]
    }
    model_fks = {
        (tuple(c.name for c in fkc.columns), fkc.referred_table.name, tuple(e.column.name for e in fkc.elements),
         _ondelete(fkc.ondelete))
        for fkc in model.foreign_key_constraints
    }
    assert model_fks == live_fks, (
        f"{table}: foreign keys differ\n  only in model: {sorted(model_fks - live_fks)}"
        f"\n  only in database: {sorted(live_fks - model_fks)}"
    )


def test_foreign_key_columns_have_the_type_and_collation_of_their_target(db, engine):
    problems = []
    for table, info in db.items():
        for fk in info["fks"]:
            for col, ref in zip(fk["constrained_columns"], fk["referred_columns"]):
                a = _type(info["columns"][col]["type"], engine.dialect)
                b = _type(db[fk["referred_table"]]["columns"][ref]["type"], engine.dialect)
                if a != b:
                    problems.append(f"{table}.{col} ({a}) -> {fk['referred_table']}.{ref} ({b})")
    assert not problems, "\n".join(problems)


def test_public_ids_are_text_collate_c(db, engine):
    """Prefixed ids sort by time only with the C collation (ORDER BY id DESC = newest first)."""
    problems = []
    for table, info in db.items():
        for name in info["pk"]:
            t = _type(info["columns"][name]["type"], engine.dialect)
            if t.startswith("TEXT") and t != 'TEXT COLLATE "C"':
                problems.append(f"{table}.{name} is {t}")
    assert not problems, problems


def test_every_organization_id_references_organizations(db):
    missing = []
    for table, info in db.items():
        if "organization_id" not in info["columns"]:
            continue
        ok = any(
            fk["constrained_columns"] == ["organization_id"] and fk["referred_table"] == "organizations"
            and fk["referred_columns"] == ["id"]
            for fk in info["fks"]
        )
        if not ok:
            missing.append(table)
    assert not missing, f"organization_id without a foreign key to organizations(id): {missing}"


def test_every_tenant_owned_table_has_organization_id(db):
    missing = sorted(
        t for t, info in db.items()
        if t not in NOT_TENANT_OWNED and "organization_id" not in info["columns"]
    )
    assert not missing, f"tenant-owned tables without organization_id: {missing}"
    for table in db:
        if table not in NOT_TENANT_OWNED:
            assert db[table]["columns"]["organization_id"]["nullable"] is False, f"{table}.organization_id is nullable"


def test_schema_version_and_views(engine):
    with engine.connect() as conn:
        assert conn.execute(text("SELECT max(version) FROM schema_version")).scalar() >= 1
        for view in VIEWS:
            conn.execute(text(f"SELECT * FROM {view} LIMIT 0"))
