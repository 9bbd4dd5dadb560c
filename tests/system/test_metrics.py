"""/metrics: the business metrics for a known database and Redis state, the workers' job counters,
the access rules (METRICS_ALLOW, METRICS_TOKEN), and the alert rules and dashboard shipped in
deploy/, which must only name metrics /metrics serves."""
from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select, text

from tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "whatsapp-service.json"


def scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    resp = client.get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def of(samples, name: str) -> dict[tuple, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def db_now(session):
    return session.execute(text("SELECT now()")).scalar_one()


def test_messages_by_status_transport_and_direction_count_the_last_day(session, client):
    sim = f.make_client(session, transport="sim", status="ready")
    cloud = f.make_client(session, transport="cloud", status="ready")
    now = db_now(session)
    for status in ("queued", "sent", "sent", "failed"):
        f.make_message(session, client_id=sim.id, status=status)
    f.make_message(session, client_id=cloud.id, status="delivered")
    f.make_message(session, client_id=cloud.id, direction="inbound")
    f.make_message(session, client_id=sim.id, status="sent", created_at=now - timedelta(days=2))  # too old
    f.make_message(session, client_id=cloud.id, status="queued", created_at=now - timedelta(days=3))
    m = scrape(client)
    assert of(m, "wa_messages") == {
        (("direction", "inbound"), ("status", "received"), ("transport", "cloud")): 1.0,
        (("direction", "outbound"), ("status", "delivered"), ("transport", "cloud")): 1.0,
        (("direction", "outbound"), ("status", "failed"), ("transport", "sim")): 1.0,
        (("direction", "outbound"), ("status", "queued"), ("transport", "sim")): 1.0,
        (("direction", "outbound"), ("status", "sent"), ("transport", "sim")): 2.0,
    }
    # not sent yet, of any age: the old queued one too
    assert value(m, "wa_messages_unsent", status="queued", transport="sim") == 1.0
    assert value(m, "wa_messages_unsent", status="queued", transport="cloud") == 1.0
    assert value(m, "wa_messages_unsent_oldest_age_seconds", status="queued", transport="cloud") == 3 * 86400


def test_send_latency_is_a_histogram_of_queued_to_sent(session, client):
    sim = f.make_client(session, transport="sim", status="ready")
    base = db_now(session)
    for seconds in (0.2, 3, 3, 45):
        f.make_message(session, client_id=sim.id, status="sent", created_at=base, queued_at=base,
                       sent_at=base + timedelta(seconds=seconds))
    # scheduled for later: measured from its scheduled time
    f.make_message(session, client_id=sim.id, status="sent", created_at=base, queued_at=base,
                   scheduled_at=base + timedelta(seconds=100), sent_at=base + timedelta(seconds=101))
    f.make_message(session, client_id=sim.id, status="queued", created_at=base)  # not sent: not counted
    m = scrape(client)
    bucket = {dict(labels)["le"]: v for labels, v in of(m, "wa_message_send_latency_seconds_bucket").items()}
    assert bucket["0.5"] == 1.0 and bucket["1.0"] == 2.0 and bucket["2.5"] == 2.0 and bucket["5.0"] == 4.0
    assert bucket["30.0"] == 4.0 and bucket["60.0"] == 5.0 and bucket["+Inf"] == 5.0
    assert value(m, "wa_message_send_latency_seconds_gcount", transport="sim") == 5.0
    assert value(m, "wa_message_send_latency_seconds_gsum", transport="sim") == pytest.approx(52.2)


def test_clients_by_status_and_the_unhealthy_ones(session, client):
    now = db_now(session)
    f.make_client(session, transport="sim", status="ready")
    f.make_client(session, transport="sim", status="ready")
    banned = f.make_client(session, transport="web", status="banned", status_changed_at=now - timedelta(seconds=600))
    f.make_client(session, transport="cloud", status="disconnected", deleted_at=now)  # deleted: not counted
    m = scrape(client)
    assert value(m, "wa_clients", status="ready", transport="sim") == 2.0
    assert value(m, "wa_clients", status="banned", transport="web") == 1.0
    assert value(m, "wa_clients", status="disconnected", transport="cloud") == 0.0  # every status is reported
    assert of(m, "wa_client_unhealthy_seconds") == {
        (("client_id", banned.id), ("organization_id", banned.organization_id), ("status", "banned"),
         ("transport", "web")): 600.0}


def test_campaigns_by_status_and_the_progress_of_running_ones(session, client):
    running = f.make_campaign(session, status="running", total_count=10, pending_count=2, queued_count=3,
                              sent_count=2, delivered_count=1, failed_count=1, skipped_count=1)
    f.make_campaign(session, status="completed")
    f.make_campaign(session, status="draft")
    f.make_campaign(session, status="draft")
    m = scrape(client)
    assert value(m, "wa_campaigns", status="running") == 1.0
    assert value(m, "wa_campaigns", status="draft") == 2.0
    assert value(m, "wa_campaigns", status="paused") == 0.0
    org = running.organization_id
    assert value(m, "wa_campaign_recipients", campaign_id=running.id, organization_id=org, status="total") == 10.0
    assert value(m, "wa_campaign_recipients", campaign_id=running.id, organization_id=org, status="queued") == 3.0
    assert value(m, "wa_campaign_progress_ratio", campaign_id=running.id, organization_id=org) == 0.5
    assert len(of(m, "wa_campaign_progress_ratio")) == 1  # only running campaigns


def test_webhooks_and_their_unsettled_deliveries(session, client):
    now = db_now(session)
    ok = f.make_webhook(session)
    failing = f.make_webhook(session, failing_since=now, consecutive_failures=3)
    f.make_webhook(session, enabled=False, disabled_reason="failing")
    f.make_webhook_delivery(session, webhook_id=ok.id, status="pending", created_at=now - timedelta(seconds=30))
    f.make_webhook_delivery(session, webhook_id=failing.id, status="failed", created_at=now - timedelta(seconds=90))
    f.make_webhook_delivery(session, webhook_id=failing.id, status="failed", created_at=now)
    f.make_webhook_delivery(session, webhook_id=ok.id, status="succeeded")
    m = scrape(client)
    assert of(m, "wa_webhooks") == {(("state", "healthy"),): 1.0, (("state", "failing"),): 1.0,
                                    (("state", "disabled"),): 1.0}
    assert of(m, "wa_webhook_deliveries") == {(("status", "pending"),): 1.0, (("status", "delivering"),): 0.0,
                                              (("status", "failed"),): 2.0}
    assert value(m, "wa_webhook_deliveries_oldest_age_seconds", status="failed") == 90.0


def test_outbox_backlog_and_its_oldest_row(session, client):
    m = scrape(client)
    assert value(m, "wa_outbox_backlog") == 0.0 and value(m, "wa_outbox_oldest_age_seconds") == 0.0
    session.execute(text("INSERT INTO job_outbox (actor_name, queue_name, created_at) VALUES "
                         "('messages.send', 'messages', now() - interval '120 seconds'), "
                         "('messages.send', 'messages', now()), "
                         "('webhooks.deliver', 'webhooks', now() - interval '1 hour')"))
    session.execute(text("UPDATE job_outbox SET dispatched_at = now() WHERE actor_name = 'webhooks.deliver'"))
    m = scrape(client)
    assert value(m, "wa_outbox_backlog") == 2.0
    assert value(m, "wa_outbox_oldest_age_seconds") == 120.0


def test_dead_letters_per_queue(client, redis_conn):
    redis_conn.zadd("dramatiq:default.XQ", {"a": 1, "b": 2})
    m = scrape(client)
    assert value(m, "wa_queue_messages", queue="default", state="dead") == 2.0
    assert value(m, "wa_queue_messages", queue="webhooks", state="dead") == 0.0


def test_pacing_deferrals_are_counted(session, client, redis_conn):
    from app.messages import dispatch, pacing

    c = f.make_client(session, transport="sim", status="ready", phone="+14155550100",
                      min_gap_ms=1000, max_gap_ms=1000)
    msg = f.make_message(session, client_id=c.id)
    clock = pacing.FixedClock(1_800_000_000_000)
    pacing.set_clock(clock)
    try:
        assert pacing.acquire(c.id, clock.now_ms(), pacing.Limits.of(c), "another-send").granted
        assert dispatch.run_send_job(msg.id) == "waiting"
    finally:
        pacing.set_clock(None)
    m = scrape(client)
    assert value(m, "wa_pacing_deferrals_total", transport="sim", reason="pacing") == 1.0


def test_webhook_attempts_are_counted_by_outcome_with_their_duration(session, client, org, receiver, allow_private):
    """Attempts made by the ``webhooks.deliver`` job against a real endpoint: a 500, then a 200."""
    import jobs.webhooks as webhook_jobs
    from app.security.principal import SystemPrincipal
    from app.webhooks import events as webhook_events
    from app.webhooks import service
    from app.webhooks.models import WebhookDelivery
    from tests.webhook_receiver import Reply

    service.create_webhook(session, SystemPrincipal(org.id), url=receiver.url("/hook"), events=["*"])
    receiver.script("/hook", Reply(500), Reply(200))
    for _ in range(2):
        session.commit()
        event = webhook_events.emit(session, org.id, "message.sent", {"id": "msg_01", "status": "sent"})
        session.flush()
        webhook_events.fan_out(session, event.id)
        (delivery_id,) = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id))
        webhook_jobs.deliver(delivery_id, 1)
    m = scrape(client)
    assert of(m, "wa_webhook_attempts_total") == {(("outcome", "server_error"),): 1.0,
                                                  (("outcome", "success"),): 1.0}
    assert value(m, "wa_webhook_attempt_duration_seconds_count", outcome="success") == 1.0
    assert value(m, "wa_webhook_attempt_duration_seconds_count", outcome="server_error") == 1.0
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="+Inf") == 1.0


def test_histograms_kept_in_redis_are_cumulative(client):
    from app.system import counters

    counters.observe("wa_webhook_attempt_duration_seconds", 0.2, outcome="success")
    counters.observe("wa_webhook_attempt_duration_seconds", 3.0, outcome="success")
    m = scrape(client)
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="0.1") == 0.0
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="0.25") == 1.0
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="5.0") == 2.0
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="+Inf") == 2.0
    assert value(m, "wa_webhook_attempt_duration_seconds_sum", outcome="success") == 3.2
    with pytest.raises(ValueError):
        counters.inc("wa_webhook_attempts_total", outcome="success", webhook_id="whk_1")  # labels are declared


def test_a_process_adds_up_its_counts_and_writes_them_in_the_background(client, redis_conn, override_settings):
    """With METRICS_FLUSH_MS set, increments are added up in memory: a background thread writes
    them, and /metrics served by the same process writes its own first."""
    from app.system import counters
    from tests.procs import wait_for

    override_settings(METRICS_FLUSH_MS=50)
    for _ in range(3):
        counters.inc("wa_webhook_attempts_total", outcome="success")
    counters.observe("wa_webhook_attempt_duration_seconds", 0.2, outcome="success")
    wait_for(lambda: counters.read_counter(redis_conn, "wa_webhook_attempts_total") == [(("success",), 3.0)],
             timeout=10, message="the background write")
    counters.inc("wa_webhook_attempts_total", 2, outcome="error")
    counters.observe("wa_webhook_attempt_duration_seconds", 3.0, outcome="success")
    m = scrape(client)
    assert of(m, "wa_webhook_attempts_total") == {(("outcome", "error"),): 2.0, (("outcome", "success"),): 3.0}
    assert value(m, "wa_webhook_attempt_duration_seconds_count", outcome="success") == 2.0
    assert value(m, "wa_webhook_attempt_duration_seconds_sum", outcome="success") == 3.2
    assert value(m, "wa_webhook_attempt_duration_seconds_bucket", outcome="success", le="0.25") == 1.0


def test_webhook_outcome_kinds():
    from app.webhooks.delivery import Outcome

    assert [Outcome(status_code=c).kind for c in (200, 204, 404, 410, 500, 302, None)] == [
        "success", "success", "client_error", "client_error", "server_error", "server_error", "error"]


def test_a_real_worker_counts_jobs_by_pool_actor_and_outcome(client, override_settings):
    """Jobs run by a Dramatiq worker (with the production middleware): done, retried then dead,
    aborted by an error the actor ``throws`` (dead at once)."""
    import dramatiq

    from workers.broker import build_broker

    broker = build_broker(stub=True)

    @dramatiq.actor(broker=broker, actor_name="test.ok", queue_name="default")
    def ok():
        pass

    @dramatiq.actor(broker=broker, actor_name="test.flaky", queue_name="default", max_retries=1, min_backoff=1,
                    max_backoff=2)
    def flaky():
        raise RuntimeError("boom")

    @dramatiq.actor(broker=broker, actor_name="test.abort", queue_name="default", throws=(KeyError,))
    def abort():
        raise KeyError("x")

    with override_settings(WORKER_POOL="default"):
        worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=50)
        worker.start()
        try:
            ok.send()
            ok.send()
            flaky.send()
            abort.send()
            broker.join("default", fail_fast=False)
            worker.join()
        finally:
            worker.stop()
    m = scrape(client)
    assert of(m, "wa_jobs_total") == {
        (("actor", "test.abort"), ("outcome", "failed"), ("pool", "default")): 1.0,
        (("actor", "test.flaky"), ("outcome", "failed"), ("pool", "default")): 1.0,
        (("actor", "test.flaky"), ("outcome", "retried"), ("pool", "default")): 1.0,
        (("actor", "test.ok"), ("outcome", "ok"), ("pool", "default")): 2.0,
    }
    assert value(m, "wa_job_duration_seconds_count", pool="default", actor="test.ok") == 2.0
    assert value(m, "wa_job_duration_seconds_count", pool="default", actor="test.flaky") == 2.0


@pytest.mark.workers
def test_jobs_of_a_real_worker_pool_process_reach_the_api(committed, committed_client, run_pool):
    """A job run by a worker process of the webhooks pool is counted by the api's /metrics (the
    process writes its counts in the background, as in production)."""
    import dramatiq

    from tests.procs import wait_for
    from workers.broker import get_broker

    run_pool("webhooks", METRICS_FLUSH_MS="200")
    get_broker().enqueue(dramatiq.Message(queue_name="webhooks", actor_name="webhooks.cleanup", args=(), kwargs={},
                                          options={}))
    wait_for(lambda: value(scrape(committed_client), "wa_jobs_total", pool="webhooks", actor="webhooks.cleanup",
                           outcome="ok") == 1.0, timeout=60, message="the job's count on /metrics")
    m = scrape(committed_client)
    assert value(m, "wa_job_duration_seconds_count", pool="webhooks", actor="webhooks.cleanup") == 1.0
    assert value(m, "wa_workers_live", pool="webhooks") == 1.0


# ----------------------------------------------------------------------------- access


def test_a_token_is_required_when_set(client, override_settings):
    with override_settings(METRICS_TOKEN="s3cret-token"):
        resp = client.get("/metrics")
        assert resp.status_code == 401
        assert resp.get_json()["error"]["code"] == "metrics_unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        resp = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
        assert resp.status_code == 200
        assert "# TYPE wa_clients gauge" in resp.get_data(as_text=True)
    assert client.get("/metrics").status_code == 200  # empty: open


def test_only_allowed_addresses_may_read(client, override_settings):
    public = {"REMOTE_ADDR": "203.0.113.7"}
    assert client.get("/metrics", environ_base=public).status_code == 403  # not private by default
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.1.2.3"}).status_code == 200
    resp = client.get("/metrics", environ_base=public)
    assert resp.get_json() == {"error": {"code": "metrics_forbidden", "message": "This address may not read the "
                                         "metrics", "details": {}}}
    with override_settings(METRICS_ALLOW="203.0.113.0/24"):
        assert client.get("/metrics", environ_base=public).status_code == 200
        assert client.get("/metrics").status_code == 403  # loopback no longer listed
    with override_settings(METRICS_ALLOW="", METRICS_TOKEN="t"):
        assert client.get("/metrics", environ_base=public).status_code == 401
        assert client.get("/metrics", environ_base=public, headers={"Authorization": "Bearer t"}).status_code == 200


# ----------------------------------------------------------------------------- deploy files

#: what a PromQL expression names that is not a metric: functions, keywords, label names
_NOT_METRICS = {
    "sum", "by", "rate", "increase", "max", "min", "avg", "count", "histogram_quantile", "without", "on",
    "and", "or", "unless", "absent", "time", "le", "ignoring", "group_left", "delta", "deriv", "offset",
    "bool", "max_over_time", "min_over_time", "clamp_min", "topk", "sort_desc", "label_replace", "vector",
}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression uses (label matchers and durations removed)."""
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r'"[^"]*"', "", expr)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", expr))
    return {w for w in words if w not in _NOT_METRICS and not re.fullmatch(r"\d+[smhd]?", w)}


def served_names(client) -> set[str]:
    """Every sample name /metrics serves (``_bucket``, ``_count``, ... included), even of
    families that have no sample yet."""
    body = client.get("/metrics").get_data(as_text=True)
    names = set()
    for family in text_string_to_metric_families(body):
        names.add(family.name)
        kinds = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_count", "_sum", "_created"],
                 "gaugehistogram": ["_bucket", "_gcount", "_gsum"]}
        names.update(family.name + suffix for suffix in kinds.get(family.type, []))
        names.update(s.name for s in family.samples)
    return names


def alert_rules() -> list[dict]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in board["panels"] for t in panel.get("targets", [])]


def test_alert_rules_are_valid_and_name_only_served_metrics(client):
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    assert {"WhatsAppClientBanned", "WhatsAppClientDisconnected", "WebhookEndpointFailing", "OutboxBacklogOld",
            "WorkerPoolDown", "DeadLettersGrowing"} <= names
    served = served_names(client)
    for rule in rules:
        assert rule["expr"] and rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        missing = metric_names_in(rule["expr"]) - served
        assert not missing, (rule["alert"], missing)


def test_the_dashboard_is_valid_and_names_only_served_metrics(client):
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["panels"]
    exprs = dashboard_exprs()
    used = set().union(*(metric_names_in(e) for e in exprs))
    assert {"wa_messages", "wa_message_send_latency_seconds_bucket", "wa_webhook_attempts_total",
            "wa_queue_messages", "wa_clients"} <= used
    missing = used - served_names(client)
    assert not missing, missing
