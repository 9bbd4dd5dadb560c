"""The ops CLIs: `python -m app` and `python -m workers`, run as real processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_db_init_is_a_no_op_on_an_applied_database():
    result = run("-m", "app", "db", "init")
    assert result.returncode == 0, result.stderr
    assert "already applied (version 1)" in result.stdout


def test_db_init_creates_and_applies_an_empty_database():
    from app.schema import with_database
    from config import settings

    url = with_database(settings.DATABASE_URL, "wa_test_cli_init")
    try:
        first = run("-m", "app", "db", "init", env={"DATABASE_URL": url})
        assert first.returncode == 0 and "schema applied" in first.stdout, first.stderr
        second = run("-m", "app", "db", "init", env={"DATABASE_URL": url})
        assert "already applied" in second.stdout
    finally:
        import psycopg

        with psycopg.connect(with_database(settings.DATABASE_URL, "postgres"), autocommit=True) as conn:
            conn.execute("DROP DATABASE IF EXISTS wa_test_cli_init WITH (FORCE)")


def test_org_and_apikey_create_print_json(committed):
    org = run("-m", "app", "org", "create", "--name", "Acme", "--admin-email", "ops@acme.test",
              "--admin-password", "a long enough secret", "--json")
    assert org.returncode == 0, org.stderr
    body = json.loads(org.stdout)
    assert body["organization"]["id"].startswith("org_") and body["user"]["role"] == "admin"
    key = run("-m", "app", "apikey", "create", "--org", body["organization"]["id"], "--name", "ci", "--role",
              "manager", "--json")
    assert key.returncode == 0, key.stderr
    k = json.loads(key.stdout)
    assert k["key"].startswith("sk_") and k["role"] == "manager" and k["prefix"] == k["key"][:len(k["prefix"])]


def test_cli_errors_are_clear_not_tracebacks(committed):
    weak = run("-m", "app", "org", "create", "--name", "A", "--admin-email", "a@b.test", "--admin-password", "short")
    assert weak.returncode != 0 and "Traceback" not in weak.stderr and "password" in weak.stderr.lower()
    down = run("-m", "app", "db", "init", env={"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    assert down.returncode != 0 and "Traceback" not in down.stderr and "db init" in down.stderr
    unset = run("-m", "workers", "run", "--pool", "messages", env={"REDIS_URL": ""})
    assert unset.returncode != 0 and "REDIS_URL is not set" in unset.stderr
    bad_pool = run("-m", "workers", "run", "--pool", "nope")
    assert bad_pool.returncode != 0 and "invalid choice" in bad_pool.stderr


@pytest.mark.workers
def test_workers_status_shows_pools_workers_and_queues(redis_conn, run_pool):
    import dramatiq

    import jobs  # noqa: F401

    run_pool("webhooks")
    dramatiq.get_broker().get_actor("system.noop").send_with_options(delay=60_000)
    result = run("-m", "workers", "status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    pools = {p["pool"]: p for p in report["pools"]}
    assert set(pools) == {"messages", "sessions", "webhooks", "default"}
    assert pools["webhooks"]["live_workers"] == 1 and pools["messages"]["live_workers"] == 0
    assert pools["default"]["queues"][0]["delayed"] == 1
    text = run("-m", "workers", "status").stdout
    assert "webhooks" in text and "delayed" in text


def test_dead_letters_can_be_listed_retried_and_purged(redis_conn):
    import time

    import dramatiq

    import jobs  # noqa: F401

    msg = dramatiq.Message(queue_name="default", actor_name="system.noop", args=("x",), kwargs={}, options={})
    redis_conn.zadd("dramatiq:default.XQ", {msg.message_id: time.time() * 1000})
    redis_conn.hset("dramatiq:default.XQ.msgs", msg.message_id, msg.encode())
    listed = run("-m", "workers", "dlq", "list")
    assert msg.message_id in listed.stdout and "system.noop" in listed.stdout
    retried = run("-m", "workers", "dlq", "retry", "--queue", "default")
    assert "retry: 1 message(s)" in retried.stdout
    assert redis_conn.zcard("dramatiq:default.XQ") == 0 and redis_conn.llen("dramatiq:default") == 1
    redis_conn.zadd("dramatiq:default.XQ", {msg.message_id: time.time() * 1000})
    redis_conn.hset("dramatiq:default.XQ.msgs", msg.message_id, msg.encode())
    assert "purge: 1 message(s)" in run("-m", "workers", "dlq", "purge").stdout
    assert redis_conn.zcard("dramatiq:default.XQ") == 0
