"""/health: ok with every pool alive, degraded when a pool is down, 503 when Redis or Postgres is."""
import pytest

from app.queues import POOLS
from workers.middleware import HeartbeatThread


def beat(redis_conn, kind, name, **extra):
    t = HeartbeatThread(redis_conn, kind, name, extra=lambda: extra)
    t.key += f":{name}-fake"  # distinct key per fake process
    t.beat()
    return t


def beat_all(redis_conn, but: str | None = None) -> None:
    """A live worker for every pool (``but`` one) and a leading scheduler."""
    for pool in POOLS:
        if pool != but:
            beat(redis_conn, "pool", pool)
    beat(redis_conn, "scheduler", "scheduler", leader=True)


def test_health_ok_when_every_pool_and_the_scheduler_beat(client, redis_conn):
    beat_all(redis_conn)
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"
    assert all(p["live"] == 1 for p in body["checks"]["workers"]["pools"].values())


def test_health_degraded_when_a_pool_has_no_live_worker(client, redis_conn):
    beat_all(redis_conn, but="webhooks")
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "degraded"
    assert body["checks"]["workers"]["pools"]["webhooks"] == {"status": "down", "live": 0}
    assert body["checks"]["workers"]["pools"]["messages"]["status"] == "ok"


@pytest.mark.workers
def test_a_real_worker_process_counts_as_live(client, run_pool):
    run_pool("webhooks")
    pools = client.get("/health").get_json()["checks"]["workers"]["pools"]
    assert pools["webhooks"]["live"] == 1
    assert pools["messages"]["live"] == 0


def test_health_is_503_when_redis_is_down(client, tmp_path, override_settings):
    from app import kv
    from tests.procs import wait_for
    from workers.embedded import start_redis, stop_redis

    url, proc = start_redis(tmp_path)
    try:
        with override_settings(REDIS_URL=url):
            kv.reset_redis_client()
            assert client.get("/health").get_json()["checks"]["redis"]["status"] == "ok"
            stop_redis(proc)
            resp = wait_for(lambda: (r := client.get("/health")).status_code == 503 and r, timeout=10,
                            message="/health to notice Redis is gone")
            body = resp.get_json()
            assert body["status"] == "down"
            assert body["checks"]["redis"]["status"] == "down"
            assert body["checks"]["database"]["status"] == "ok"
            assert resp.headers["Retry-After"]
    finally:
        kv.reset_redis_client()


def test_health_is_503_when_postgres_is_down(client, monkeypatch):
    from sqlalchemy import create_engine

    dead = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 1})
    monkeypatch.setattr("app.db.get_engine", lambda: dead)
    resp = client.get("/health")
    assert resp.status_code == 503
    assert resp.get_json()["checks"]["database"]["status"] == "down"


def test_metrics_count_requests_by_route(client):
    client.get("/health")
    client.get("/nope")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'http_requests_total{method="GET",route="/health",status="200"}' in text
    assert 'route="unmatched",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text


def test_metrics_speak_the_prometheus_content_type(client):
    """One Content-Type, with one charset: the text format by default, OpenMetrics to a scraper
    that asks for it."""
    plain = client.get("/metrics")
    assert plain.headers.get_all("Content-Type") == ["text/plain; version=0.0.4; charset=utf-8"]
    assert plain.headers["Vary"] == "Accept"
    assert "# TYPE http_requests_total counter" in plain.get_data(as_text=True)
    om = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"})
    assert om.headers.get_all("Content-Type") == ["application/openmetrics-text; version=1.0.0; charset=utf-8; "
                                                  "escaping=underscores"]
    assert om.get_data(as_text=True).endswith("# EOF\n")


def _get(port: int, path: str, timeout: float = 60) -> str:
    """One request, never retried: a timeout fails the test instead of counting a request twice."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.read().decode()


def _wait_until_serving(proc, port: int) -> None:
    from tests.procs import stop, wait_for

    def up():
        assert proc.poll() is None, stop(proc)
        try:
            return _get(port, "/metrics", timeout=5)  # not a route the tests count
        except OSError:
            return None

    wait_for(up, timeout=60, message="gunicorn")


@pytest.mark.workers
def test_metrics_sum_every_api_process_and_show_queue_depths(redis_conn):
    """Under gunicorn with two worker processes (as `make run` and the image run it), every scrape
    counts the requests of both, and queue depths come from Redis at scrape time."""
    import re

    from tests.procs import gunicorn, stop
    from workers.embedded import free_port

    redis_conn.rpush("dramatiq:messages", "a", "b", "c")
    port = free_port()
    proc = gunicorn(port, "--workers", "2", "--threads", "2")
    try:
        _wait_until_serving(proc, port)
        for _ in range(31):
            _get(port, "/api/openapi.json")
        for _ in range(4):  # whichever process answers the scrape, it reports both
            text = _get(port, "/metrics")
            counts = re.findall(r'^http_requests_total\{method="GET",route="/api/openapi.json",status="200"\} (\S+)$',
                                text, re.M)
            assert [float(c) for c in counts] == [31.0], counts
        assert 'wa_queue_messages{queue="messages",state="ready"} 3.0' in text
        assert 'wa_workers_live{pool="messages"} 0.0' in text
    finally:
        stop(proc)


@pytest.mark.workers
def test_gunicorn_keeps_no_control_socket_shared_with_other_instances(tmp_path):
    """gunicorn's control socket defaults to one path per user (~/.gunicorn/gunicorn.ctl, or
    under XDG_RUNTIME_DIR): a second instance would take it over. The api runs without one."""
    from tests.procs import Output, gunicorn
    from workers.embedded import free_port

    home, runtime = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    runtime.mkdir()
    port = free_port()
    proc = gunicorn(port, "--workers", "1", HOME=str(home), XDG_RUNTIME_DIR=str(runtime), LOG_LEVEL="INFO")
    out = Output(proc)
    try:
        _wait_until_serving(proc, port)
    finally:
        lines = out.stop(proc)
    assert any("Booting worker" in line for line in lines), lines
    assert not [line for line in lines if "Control socket" in line], lines
    assert [p for p in tmp_path.rglob("*") if p.is_socket() or p.name.endswith(".ctl")] == []


def test_a_full_redis_is_reported_and_a_send_is_a_503_with_retry_after(client, session, monkeypatch):
    """PING works on a full Redis (maxmemory, noeviction) and a write does not: /health used to say
    ok. (A real full Redis, shared by nobody else, is tests/system/test_faults.py's.)"""
    import redis

    from app.kv import redis_client
    from app.messages import dispatch
    from tests import factories as f
    from tests.auth_helpers import api_key_headers

    org = f.make_organization(session)
    sender = f.make_client(session, organization_id=org.id, status="ready")
    headers = api_key_headers(session, org, "admin")
    real = redis_client()

    class Full:
        def __getattr__(self, name):
            return getattr(real, name)

        def set(self, *a, **k):
            raise redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr("app.kv.redis_client", lambda: Full())
    body = client.get("/health").get_json()
    assert body["status"] == "down" and body["checks"]["redis"]["status"] == "full"

    def refused(*a, **k):
        raise redis.exceptions.ResponseError("Error running script (call to f_1): @user_script:58: "
                                             "-OOM command not allowed when used memory > 'maxmemory'.")

    monkeypatch.setattr(dispatch.pacing, "acquire_many", refused)
    send = client.post(f"/api/clients/{sender.id}/send-message", json={"to": "+14155550123", "message": "hi"},
                       headers=headers)
    assert send.status_code == 503 and send.headers["Retry-After"] == "10"
    assert send.get_json()["error"]["code"] == "service_unavailable"
