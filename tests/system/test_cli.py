"""The ops CLIs: `python -m app` and `python -m workers`, run as real processes."""
import json
import os
import subprocess
import sys

import pytest

from tests.procs import ROOT


def run(*args, env=None):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_db_init_is_a_no_op_on_an_applied_database():
    result = run("-m", "app", "db", "init")
    assert result.returncode == 0, result.stderr
    assert "already applied (version " in result.stdout


def test_db_init_creates_and_applies_an_empty_database():
    from app.schema import with_database
    from config import settings

    name = os.environ.get("TEST_DATABASE_NAME", "wa_test") + "_cli_init"  # this suite's (and xdist worker's) own
    url = with_database(settings.DATABASE_URL, name)
    try:
        first = run("-m", "app", "db", "init", env={"DATABASE_URL": url})
        assert first.returncode == 0 and "schema applied" in first.stdout, first.stderr
        second = run("-m", "app", "db", "init", env={"DATABASE_URL": url})
        assert "already applied" in second.stdout
    finally:
        import psycopg

        with psycopg.connect(with_database(settings.DATABASE_URL, "postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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


def test_dead_letters_of_session_host_queues_are_listed_and_retried_on_the_shared_queue(redis_conn):
    """Per-host queues ``sessions.<host id>`` have dead letters too, and a dead host's queue has no
    consumer: `dlq` finds them, says whose they are, and retries them on the shared ``sessions``
    queue (whichever host takes one forwards it to the client's live owner)."""
    import time

    import dramatiq

    import jobs  # noqa: F401
    from app.clients.leases import HEARTBEAT_KIND
    from app.system.heartbeats import heartbeat_key

    def dead_letter(queue, actor, arg):
        msg = dramatiq.Message(queue_name=queue, actor_name=actor, args=(arg,), kwargs={}, options={})
        redis_conn.zadd(f"dramatiq:{queue}.XQ", {msg.message_id: time.time() * 1000})
        redis_conn.hset(f"dramatiq:{queue}.XQ.msgs", msg.message_id, msg.encode())
        return msg

    live, dead = "hostlive-11-aaaa", "hostgone-12-bbbb"
    redis_conn.set(heartbeat_key(HEARTBEAT_KIND, live), json.dumps(
        {"kind": HEARTBEAT_KIND, "name": live, "host_id": live, "queue": f"sessions.{live}", "host": "h", "pid": 11,
         "sessions": []}), ex=120)
    on_live = dead_letter(f"sessions.{live}", "sessions.send", "msg_live")
    on_dead = dead_letter(f"sessions.{dead}", "sessions.stop", "cli_dead")
    on_default = dead_letter("default", "system.noop", "x")

    listed = run("-m", "workers", "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    entries = {e["message_id"]: e for e in map(json.loads, listed.stdout.splitlines())}
    assert set(entries) == {on_live.message_id, on_dead.message_id, on_default.message_id}
    assert entries[on_live.message_id] == {
        "queue": f"sessions.{live}", "message_id": on_live.message_id, "actor": "sessions.send", "args": ["msg_live"],
        "error": "", "host_id": live, "host_live": True, "retry_queue": "sessions"}
    assert entries[on_dead.message_id]["host_id"] == dead and entries[on_dead.message_id]["host_live"] is False
    assert "host_id" not in entries[on_default.message_id]
    one = run("-m", "workers", "dlq", "list", "--queue", f"sessions.{dead}")
    assert [json.loads(line)["message_id"] for line in one.stdout.splitlines()] == [on_dead.message_id]

    retried = run("-m", "workers", "dlq", "retry", "--queue", "sessions.*")
    assert retried.returncode == 0 and "retry: 2 message(s)" in retried.stdout, retried.stderr
    for host in (live, dead):
        assert redis_conn.zcard(f"dramatiq:sessions.{host}.XQ") == 0
        assert redis_conn.llen(f"dramatiq:sessions.{host}") == 0, "nothing goes back to a host's own queue"
    assert redis_conn.llen("dramatiq:sessions") == 2
    requeued = [dramatiq.Message.decode(raw) for raw in redis_conn.hvals("dramatiq:sessions.msgs")]
    assert sorted((m.queue_name, m.actor_name, tuple(m.args)) for m in requeued) == [
        ("sessions", "sessions.send", ("msg_live",)), ("sessions", "sessions.stop", ("cli_dead",))]
    assert redis_conn.zcard("dramatiq:default.XQ") == 1, "the pattern kept to the host queues"

    dead_letter(f"sessions.{dead}", "sessions.send", "msg_again")
    assert "purge: 2 message(s)" in run("-m", "workers", "dlq", "purge").stdout
    assert redis_conn.zcard(f"dramatiq:sessions.{dead}.XQ") == 0 and redis_conn.zcard("dramatiq:default.XQ") == 0


def test_serve_listens_on_this_machine_only_unless_host_says_otherwise():
    import psutil

    from tests.procs import stop, wait_for
    from workers.embedded import free_port

    for host, expected in ((None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")):
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "HOST"}
        if host:
            env["HOST"] = host
        proc = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def listening():
                if proc.poll() is not None:
                    return "exited"
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
                found = [c.laddr for p in tree for c in p.net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port]
                return found[0] if found else None

            addr = wait_for(listening, timeout=60, message="python -m app serve to listen")
            assert addr != "exited", stop(proc)
            assert addr.ip == expected
        finally:
            stop(proc)
