"""Delivering to a real receiver on loopback, in this process: Standard Webhooks signatures checked
by an independent implementation and by the ``standardwebhooks`` package, rotation double-signing,
the retry schedule on a test clock, Retry-After, 410, the 5-day disable, redirects, timeouts, the
delivery log, duplicate jobs, the claimer, the per-endpoint in-flight limit and cleanup."""
from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

import jobs.webhooks as webhook_jobs
from app.audit.models import AuditLog
from app.clients.models import BanAlert
from app.db import utcnow
from app.security.principal import SystemPrincipal
from app.webhooks import delivery, pipeline, service
from app.webhooks import events as webhook_events
from app.webhooks.events import emit
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent
from tests import factories as f
from tests.auth_helpers import principal_headers
from tests.webhook_receiver import Reply, queued_jobs, verify_signature

MESSAGE = {"id": "msg_01", "client_id": "cli_01", "direction": "outbound", "to": "+14155550123",
           "type": "text", "text": "Olá — ünïcode ✓", "status": "sent"}


@pytest.fixture
def endpoint(session, org, receiver, allow_private):
    """An endpoint on the receiver's /hook (created through the service: a real secret)."""
    created = service.create_webhook(session, SystemPrincipal(org.id), url=receiver.url("/hook"), events=["*"])
    return created


def deliver_jobs_in_outbox(session) -> list:
    from app.models import JobOutbox

    return sorted(map(str, session.scalars(select(JobOutbox.args).where(JobOutbox.actor_name == "webhooks.deliver"))))


def deliver_event(session, org_id, event_type="message.sent", data=None):
    """Emit an event (in a new transaction, as a caller would), fan it out and run each delivery's
    first attempt, as the workers would."""
    session.commit()
    event = emit(session, org_id, event_type, data or MESSAGE)
    session.flush()
    webhook_events.fan_out(session, event.id)
    ids = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).all()
    for delivery_id in ids:
        webhook_jobs.deliver(delivery_id, 1)
    return event, ids


def attempts(session, delivery_id):
    return session.scalars(select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.delivery_id == delivery_id)
                           .order_by(WebhookDeliveryAttempt.id)).all()


def fresh(session, obj):
    session.expire_all()
    return session.get(type(obj), obj.id)


def attempt_with_clock(session, delivery_id, n, now, rng=None):
    """Attempt ``n`` at time ``now`` (the test clock) against the real receiver."""
    req = pipeline.prepare_attempt(session, delivery_id, n, now=now)
    assert req is not None, f"attempt {n} could not be claimed"
    outcome = delivery.send(req.url, req.body, req.headers)
    return pipeline.record_attempt(session, req, outcome, now=now, rng=rng)


# --------------------------------------------------------------------------- signatures


def test_a_delivery_is_a_signed_standard_webhook(session, org, endpoint, receiver):
    event, [delivery_id] = deliver_event(session, org.id)
    [got] = receiver.requests("/hook")
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"].startswith("WhatsAppService-Webhooks/")
    assert got.headers["webhook-id"] == event.id
    assert got.json == {"id": event.id, "type": "message.sent", "created_at": event.created_at.isoformat(),
                        "organization_id": org.id, "data": MESSAGE}
    assert verify_signature(endpoint["secret"], got.headers, got.body), "independent implementation"
    assert StandardWebhook(endpoint["secret"]).verify(got.body, got.headers) == got.json
    assert not verify_signature(endpoint["secret"], got.headers, got.body.replace(b"msg_01", b"msg_02"))
    with pytest.raises(WebhookVerificationError):
        StandardWebhook("whsec_" + "A" * 44).verify(got.body, got.headers)

    [attempt] = attempts(session, delivery_id)
    assert (attempt.attempt, attempt.status_code, attempt.error, attempt.response_excerpt) == (1, 200, None, "ok")
    assert attempt.duration_ms >= 0 and attempt.next_attempt_at is None
    row = session.get(WebhookDelivery, delivery_id)
    session.refresh(row)
    assert row.status == "succeeded" and row.delivered_at is not None
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert hook.last_success_at is not None and hook.consecutive_failures == 0


def test_rotation_signs_with_both_secrets_for_24_hours(session, org, endpoint, receiver):
    principal = SystemPrincipal(org.id)
    rotated = service.rotate_secret(session, principal, endpoint["id"])
    old, new = endpoint["secret"], rotated["secret"]
    deliver_event(session, org.id)
    [got] = receiver.requests("/hook")
    signatures = got.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    for secret in (old, new):
        assert verify_signature(secret, got.headers, got.body)
        assert StandardWebhook(secret).verify(got.body, got.headers)
        one_each = [verify_signature(secret, {**got.headers, "webhook-signature": s}, got.body) for s in signatures]
        assert sorted(one_each) == [False, True]

    # 25 hours later only the new secret signs
    later = utcnow() + timedelta(hours=25)
    event = emit(session, org.id, "message.read", MESSAGE)
    session.flush()
    webhook_events.fan_out(session, event.id)
    [delivery_id] = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).all()
    attempt_with_clock(session, delivery_id, 1, later)
    last = receiver.requests("/hook")[-1]
    assert len(last.headers["webhook-signature"].split(" ")) == 1
    ts = int(last.headers["webhook-timestamp"])
    assert verify_signature(new, last.headers, last.body, now=ts)
    assert not verify_signature(old, last.headers, last.body, now=ts)

    pipeline.cleanup(session, now=later)
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert hook.previous_secret_encrypted is None and hook.previous_secret_expires_at is None


# --------------------------------------------------------------------------- retries


def test_failures_follow_the_retry_schedule_until_dead(session, org, endpoint, receiver, redis_conn):
    receiver.always("/hook", Reply(500, body="down for maintenance"))
    event = emit(session, org.id, "message.failed", MESSAGE)
    session.flush()
    webhook_events.fan_out(session, event.id)
    [delivery_id] = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).all()
    session.commit()
    clock = utcnow()
    rng = random.Random(7)
    for n in range(1, delivery.MAX_ATTEMPTS + 1):
        before = queued_jobs(redis_conn)
        status = attempt_with_clock(session, delivery_id, n, clock, rng)
        last = attempts(session, delivery_id)[-1]
        assert (last.attempt, last.status_code, last.error) == (n, 500, "HTTP 500")
        assert last.response_excerpt == "down for maintenance"
        if n == delivery.MAX_ATTEMPTS:
            assert status == "dead" and last.next_attempt_at is None
            break
        assert status == "failed"
        wait = (last.next_attempt_at - clock).total_seconds()
        scheduled = delivery.RETRY_SCHEDULE_S[n - 1]
        assert 0.8 * scheduled <= wait <= 1.2 * scheduled, (n, wait)
        # nothing is due a moment before the scheduled time; at the time, the claimer sends attempt n+1
        if wait > pipeline.BROKER_CARRIES_S:
            assert pipeline.dispatch_due(session, now=last.next_attempt_at - timedelta(seconds=1)) == 0
            assert pipeline.dispatch_due(session, now=last.next_attempt_at) == 1
        else:  # a short retry travels as a delayed broker message
            assert pipeline.dispatch_due(session, now=last.next_attempt_at) == 0
        session.commit()
        new = [(a, args, o) for a, args, o in queued_jobs(redis_conn) if (a, args, o) not in before]
        assert [(a, args) for a, args, _ in new] == [("webhooks.deliver", [delivery_id, n + 1, endpoint["id"]])]
        if wait <= pipeline.BROKER_CARRIES_S:
            assert new[0][2].get("eta"), "short retries wait in the broker's delay queue"
        clock = last.next_attempt_at
    assert receiver.count("/hook") == delivery.MAX_ATTEMPTS
    assert len({r.headers["webhook-id"] for r in receiver.requests("/hook")}) == 1, "one id across retries"
    assert len({r.body for r in receiver.requests("/hook")}) == 1
    row = fresh(session, session.get(WebhookDelivery, delivery_id))
    assert (row.status, row.attempt, row.next_attempt_at) == ("dead", 10, None)
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert hook.enabled, "3 days of retries are not 5 days of failures"
    assert hook.consecutive_failures == 10


def test_jitter_stays_within_20_percent():
    for n, base in enumerate(delivery.RETRY_SCHEDULE_S, start=1):
        delays = [delivery.next_delay(n, rng=random.Random(seed)) for seed in range(200)]
        assert 0.8 * base <= min(delays) < max(delays) <= 1.2 * base
    assert delivery.next_delay(delivery.MAX_ATTEMPTS) is None


def test_retry_after_on_429_and_503_is_honoured(session, org, endpoint, receiver):
    receiver.script("/hook", Reply(429, headers={"Retry-After": "120"}), Reply(503, headers={"Retry-After": "1"}),
                    Reply(500, headers={"Retry-After": "7200"}))
    _, [delivery_id] = deliver_event(session, org.id)
    first = attempts(session, delivery_id)[-1]
    assert first.status_code == 429
    assert 120 <= (first.next_attempt_at - first.created_at).total_seconds() <= 121, "later than the 5 s schedule"

    clock = first.next_attempt_at
    attempt_with_clock(session, delivery_id, 2, clock)
    second = attempts(session, delivery_id)[-1]
    wait = (second.next_attempt_at - clock).total_seconds()
    assert second.status_code == 503 and 0.8 * 300 <= wait <= 1.2 * 300, "Retry-After never shortens the schedule"

    clock = second.next_attempt_at
    attempt_with_clock(session, delivery_id, 3, clock)
    third = attempts(session, delivery_id)[-1]
    wait = (third.next_attempt_at - clock).total_seconds()
    assert third.status_code == 500 and wait <= 1.2 * 1800, "Retry-After counts only on 429 and 503"


def test_retry_after_as_an_http_date():
    from email.utils import format_datetime

    now = utcnow()
    assert delivery.parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == pytest.approx(90, abs=1)
    assert delivery.parse_retry_after("soon") is None and delivery.parse_retry_after(None) is None


def test_410_gone_disables_the_endpoint_at_once(client, session, org, endpoint, receiver):
    other_event = f.make_webhook_event(session, organization_id=org.id, type="message.read")
    waiting = f.make_webhook_delivery(session, webhook_id=endpoint["id"], event_id=other_event.id, status="failed",
                                      attempt=3, next_attempt_at=utcnow() + timedelta(hours=2))
    receiver.always("/hook", Reply(410, body="gone"))
    _, [delivery_id] = deliver_event(session, org.id)
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert (hook.enabled, hook.disabled_reason) == (False, "gone")
    assert session.get(WebhookDelivery, delivery_id).status == "dead"
    assert session.get(WebhookDelivery, waiting.id).status == "dead", "its waiting retries are abandoned"
    [alert] = session.scalars(select(BanAlert).where(BanAlert.organization_id == org.id)).all()
    assert alert.kind == "webhook_disabled" and alert.client_id is None and alert.details["webhook_id"] == hook.id
    assert alert.details["reason"] == "gone"
    [entry] = session.scalars(select(AuditLog).where(AuditLog.action == "webhook.disable")).all()
    assert entry.actor_type == "system" and entry.target_id == hook.id

    # new events go nowhere; re-enabling (through the API) delivers nothing old by itself; redeliver does
    _, none = deliver_event(session, org.id)
    assert none == [] and receiver.count("/hook") == 1
    receiver.always("/hook", Reply(204))
    jobs_before = deliver_jobs_in_outbox(session)
    resp = client.patch(f"/api/webhooks/{hook.id}", json={"enabled": True},
                        headers=principal_headers(session, org, "admin"))
    assert resp.status_code == 200 and resp.get_json()["enabled"] is True, resp.get_json()
    assert resp.get_json()["disabled_reason"] is None
    session.expire_all()
    assert deliver_jobs_in_outbox(session) == jobs_before, "re-enabling enqueues no delivery"
    assert pipeline.dispatch_due(session, now=utcnow() + timedelta(days=3)) == 0
    assert {d.status for d in session.scalars(select(WebhookDelivery).where(
        WebhookDelivery.webhook_id == hook.id)).all()} == {"dead"}
    assert receiver.count("/hook") == 1
    service.redeliver(session, SystemPrincipal(org.id), delivery_id)
    webhook_jobs.deliver(delivery_id, 1)
    assert receiver.count("/hook") == 2
    assert fresh(session, session.get(WebhookDelivery, delivery_id)).status == "succeeded"


def test_an_endpoint_failing_every_attempt_for_5_days_is_disabled(session, org, endpoint, receiver):
    receiver.always("/hook", Reply(500))
    t0 = utcnow()

    def fail_at(when):
        event = emit(session, org.id, "message.sent", MESSAGE)
        session.flush()
        webhook_events.fan_out(session, event.id)
        [delivery_id] = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).all()
        attempt_with_clock(session, delivery_id, 1, when)
        return delivery_id

    fail_at(t0)
    fail_at(t0 + timedelta(days=4, hours=23))
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert hook.enabled and hook.failing_since == t0 and hook.consecutive_failures == 2

    last = fail_at(t0 + timedelta(days=5, seconds=1))
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert (hook.enabled, hook.disabled_reason) == (False, "failing")
    assert session.get(WebhookDelivery, last).status == "dead"
    [alert] = session.scalars(select(BanAlert).where(BanAlert.organization_id == org.id)).all()
    assert alert.kind == "webhook_disabled" and alert.details["consecutive_failures"] == 3
    assert session.scalars(select(AuditLog).where(AuditLog.action == "webhook.disable",
                                                  AuditLog.target_id == hook.id)).all()


def test_a_success_resets_the_failure_streak(session, org, endpoint, receiver):
    receiver.script("/hook", Reply(500))
    t0 = utcnow()
    deliver_event(session, org.id)
    assert fresh(session, session.get(Webhook, endpoint["id"])).failing_since is not None
    event = emit(session, org.id, "message.sent", MESSAGE)
    session.flush()
    webhook_events.fan_out(session, event.id)
    [delivery_id] = session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).all()
    attempt_with_clock(session, delivery_id, 1, t0 + timedelta(days=6))
    hook = fresh(session, session.get(Webhook, endpoint["id"]))
    assert hook.enabled and hook.failing_since is None and hook.consecutive_failures == 0


def test_redirects_are_not_followed(session, org, endpoint, receiver):
    receiver.always("/hook", Reply(302, headers={"Location": receiver.url("/elsewhere")}))
    _, [delivery_id] = deliver_event(session, org.id)
    assert receiver.count("/hook") == 1 and receiver.count("/elsewhere") == 0
    [attempt] = attempts(session, delivery_id)
    assert attempt.status_code == 302 and "redirects are not followed" in attempt.error
    assert fresh(session, session.get(WebhookDelivery, delivery_id)).status == "failed"


def test_the_log_keeps_only_a_short_printable_excerpt_of_the_response(session, org, endpoint, receiver):
    page = "<html>\r\n<title>Admin</title>\x00\x1b[31m\u202esecret\t\t" + "é" * 3000
    receiver.always("/hook", Reply(400, body=page))
    _, [delivery_id] = deliver_event(session, org.id)
    [attempt] = attempts(session, delivery_id)
    assert attempt.status_code == 400 and len(attempt.response_excerpt) == delivery.EXCERPT_CHARS == 256
    assert attempt.response_excerpt.startswith("<html> <title>Admin</title> [31m secret éé")
    assert attempt.response_excerpt.endswith("é…")
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c == "\u202e" for c in attempt.response_excerpt)
    assert attempt.error == "HTTP 400" and attempt.next_attempt_at is not None, "a 4xx is a failure, retried"
    assert fresh(session, session.get(WebhookDelivery, delivery_id)).status == "failed"


def test_a_timeout_is_a_failure_with_no_status(session, org, endpoint, receiver, override_settings):
    with override_settings(WEBHOOK_TIMEOUT=0.3):
        receiver.always("/hook", Reply(200, delay_s=2))
        _, [delivery_id] = deliver_event(session, org.id)
    [attempt] = attempts(session, delivery_id)
    assert attempt.status_code is None and attempt.error.startswith("timeout")
    assert fresh(session, session.get(WebhookDelivery, delivery_id)).status == "failed"


def test_the_request_timeout_is_15_seconds_by_default(monkeypatch, override_settings):
    from config import SETTINGS

    assert {x.name: x.default for x in SETTINGS}["WEBHOOK_TIMEOUT"] == "15"
    seen = {}

    class Pools:
        def urlopen(self, method, url, **kwargs):
            seen.update(kwargs)
            raise OSError("stop here")

    monkeypatch.setattr(delivery.ssrf, "thread_pool_manager", lambda: Pools())
    with override_settings(WEBHOOK_TIMEOUT=15.0):
        delivery.send("http://hooks.example.test/x", b"{}", {})
    assert (seen["timeout"].connect_timeout, seen["timeout"].read_timeout) == (15.0, 15.0)
    assert seen["redirect"] is False and seen["retries"] is False


def test_a_connection_error_is_a_failure(session, org, allow_private):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    hook = service.create_webhook(session, SystemPrincipal(org.id), url=f"http://127.0.0.1:{port}/x", events=["*"])
    _, [delivery_id] = deliver_event(session, org.id)
    [attempt] = attempts(session, delivery_id)
    assert attempt.status_code is None and "refused" in attempt.error
    assert hook["id"] == attempt.webhook_id


def test_an_attempt_that_cannot_be_signed_is_logged_and_retried_not_lost(session, org, endpoint, receiver):
    hook = session.get(Webhook, endpoint["id"])
    hook.secret_encrypted = "v1:gone:" + "A" * 40  # encrypted with a key that is no longer configured
    session.flush()
    _, [delivery_id] = deliver_event(session, org.id)
    assert receiver.count("/hook") == 0, "nothing unsigned is ever sent"
    [attempt] = attempts(session, delivery_id)
    assert attempt.attempt == 1 and attempt.status_code is None
    assert "could not sign the request" in attempt.error and attempt.next_attempt_at is not None
    row = fresh(session, session.get(WebhookDelivery, delivery_id))
    assert row.status == "failed" and row.next_attempt_at is not None


# --------------------------------------------------------------------------- jobs: once, claimer, limit


def test_duplicate_jobs_deliver_once(session, org, endpoint, receiver):
    _, [delivery_id] = deliver_event(session, org.id)
    webhook_jobs.deliver(delivery_id, 1)
    webhook_jobs.deliver(delivery_id, 1)
    webhook_jobs.deliver(delivery_id, 2)  # a stale job of a later attempt: the delivery succeeded
    assert receiver.count("/hook") == 1
    assert len(attempts(session, delivery_id)) == 1


def test_the_claimer_resends_a_lost_job_after_its_lease(session, org, endpoint, receiver, redis_conn):
    event = emit(session, org.id, "message.sent", MESSAGE)
    session.flush()
    webhook_events.fan_out(session, event.id)  # its job "is lost": we never run it
    [row] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)).all()
    now = utcnow()
    assert pipeline.dispatch_due(session, now=now) == 0, "leased: the job may still be on its way"
    later = now + timedelta(seconds=webhook_events.lease_s() + 1)
    assert pipeline.dispatch_due(session, now=later) == 1
    assert pipeline.dispatch_due(session, now=later) == 0, "leased again"
    webhook_jobs.deliver(row.id, 1)
    assert receiver.count("/hook") == 1


def test_the_claimer_resends_an_attempt_whose_worker_died(session, org, endpoint, receiver, redis_conn):
    event = f.make_webhook_event(session, organization_id=org.id, type="message.sent")
    crashed = f.make_webhook_delivery(session, webhook_id=endpoint["id"], event_id=event.id, status="delivering",
                                      attempt=1, next_attempt_at=utcnow() - timedelta(seconds=1))
    assert pipeline.dispatch_due(session) == 1
    session.commit()
    assert ("webhooks.deliver", [crashed.id, 2, endpoint["id"]]) in [(a, args) for a, args, _ in queued_jobs(redis_conn)]
    webhook_jobs.deliver(crashed.id, 2, endpoint["id"])
    assert receiver.count("/hook") == 1
    assert [a.attempt for a in attempts(session, crashed.id)] == [2]


def test_an_endpoint_at_its_in_flight_limit_parks_the_job_until_a_slot_frees(session, org, endpoint, receiver,
                                                                             redis_conn, override_settings):
    with override_settings(WEBHOOK_MAX_IN_FLIGHT=1):
        held = delivery.acquire_slot(endpoint["id"], "another job")
        assert held and redis_conn.zcard(f"wa:whk:waiting:{endpoint['id']}") == 0
        _, [delivery_id] = deliver_event(session, org.id)
        webhook_jobs.deliver(delivery_id, 1, endpoint["id"])  # a duplicate parks as the same entry
        assert receiver.count("/hook") == 0
        parked = [json.loads(m) for m in redis_conn.zrange(f"wa:whk:waiting:{endpoint['id']}", 0, -1)]
        assert parked == [[delivery_id, 1, endpoint["id"]]]
        assert not [a for a, _, _ in queued_jobs(redis_conn) if a == "webhooks.deliver"], "no polling job"
        row = fresh(session, session.get(WebhookDelivery, delivery_id))
        assert (row.attempt, row.status) == (0, "pending"), "waiting for a slot is not an attempt"

        woken = delivery.release_slot(endpoint["id"], held)  # the holder finishes: the parked job is handed back
        assert json.loads(woken) == [delivery_id, 1, endpoint["id"]]
        webhook_jobs.deliver(*json.loads(woken))
        assert receiver.count("/hook") == 1
        assert redis_conn.zcard(f"wa:whk:inflight:{endpoint['id']}") == 0


def test_a_finished_attempt_passes_its_slot_to_the_next_parked_job(session, org, endpoint, receiver, redis_conn,
                                                                   override_settings):
    with override_settings(WEBHOOK_MAX_IN_FLIGHT=1):
        held = delivery.acquire_slot(endpoint["id"], "x")
        _, [first] = deliver_event(session, org.id)
        _, [second] = deliver_event(session, org.id)
        _, [third] = deliver_event(session, org.id)
        assert receiver.count("/hook") == 0  # all parked, in arrival order
        woken = delivery.release_slot(endpoint["id"], held)
        assert json.loads(woken)[0] == first
        redis_conn.delete("dramatiq:webhooks", "dramatiq:webhooks.msgs")
        webhook_jobs.deliver(*json.loads(woken))  # delivers, then runs "second" and "third" with the same slot
        assert [json.loads(r.body)["id"] for r in receiver.requests("/hook")] == [
            session.get(WebhookDelivery, d).event_id for d in (first, second, third)]
        assert not [a for a, _, _ in queued_jobs(redis_conn) if a == "webhooks.deliver"], "no broker round trip"
        assert redis_conn.zcard(f"wa:whk:inflight:{endpoint['id']}") == 0, "the slot is released at the end"
        assert redis_conn.zcard(f"wa:whk:waiting:{endpoint['id']}") == 0


def test_a_thread_runs_a_bounded_chain_of_parked_jobs_then_wakes_the_next_through_the_broker(
        session, org, endpoint, receiver, redis_conn, monkeypatch, override_settings):
    monkeypatch.setattr(webhook_jobs, "CHAIN_MAX", 1)
    with override_settings(WEBHOOK_MAX_IN_FLIGHT=1):
        held = delivery.acquire_slot(endpoint["id"], "x")
        ids = [deliver_event(session, org.id)[1][0] for _ in range(3)]
        woken = delivery.release_slot(endpoint["id"], held)
        redis_conn.delete("dramatiq:webhooks", "dramatiq:webhooks.msgs")
        webhook_jobs.deliver(*json.loads(woken))  # its own attempt and one parked job, no more
        assert receiver.count("/hook") == 2
        assert [args for a, args, _ in queued_jobs(redis_conn) if a == "webhooks.deliver"] == [[ids[2], 1, endpoint["id"]]]
        assert redis_conn.zcard(f"wa:whk:inflight:{endpoint['id']}") == 0


def test_a_failure_of_a_chained_job_sends_it_back_to_the_broker(session, org, endpoint, receiver, redis_conn,
                                                                monkeypatch, override_settings):
    with override_settings(WEBHOOK_MAX_IN_FLIGHT=1):
        held = delivery.acquire_slot(endpoint["id"], "x")
        first, second = (deliver_event(session, org.id)[1][0] for _ in range(2))
        woken = delivery.release_slot(endpoint["id"], held)
        redis_conn.delete("dramatiq:webhooks", "dramatiq:webhooks.msgs")
        real = webhook_jobs.attempt_once

        def database_down_for_second(delivery_id, attempt):
            if delivery_id == second:
                raise RuntimeError("database down")
            return real(delivery_id, attempt)

        monkeypatch.setattr(webhook_jobs, "attempt_once", database_down_for_second)
        with pytest.raises(RuntimeError):
            webhook_jobs.deliver(*json.loads(woken))
        assert receiver.count("/hook") == 1
        assert [args for a, args, _ in queued_jobs(redis_conn) if a == "webhooks.deliver"] == [[second, 1, endpoint["id"]]]
        assert redis_conn.zcard(f"wa:whk:inflight:{endpoint['id']}") == 0


def test_the_cleanup_and_the_claimer_are_scheduled():
    from jobs.periodic import PERIODIC

    schedule = {p.actor_name: p.every_s for p in PERIODIC}
    assert schedule["webhooks.cleanup"] <= 3600, "the 30-day retention is enforced at least hourly"
    assert schedule["webhooks.dispatch_due"] <= 10
    assert webhook_jobs.cleanup.queue_name == webhook_jobs.dispatch_due.queue_name == "webhooks"


def test_the_cleanup_job_drops_the_log_older_than_30_days(session, org, endpoint):
    now = utcnow()
    old = f.make_webhook_event(session, organization_id=org.id, created_at=now - timedelta(days=30, minutes=5))
    f.make_webhook_delivery_attempt(
        session, delivery_id=f.make_webhook_delivery(session, webhook_id=endpoint["id"], event_id=old.id).id)
    recent = f.make_webhook_event(session, organization_id=org.id, created_at=now - timedelta(days=29, hours=23))
    ids = old.id, recent.id
    webhook_jobs.cleanup()  # the actor the scheduler sends, in this process
    session.expunge_all()
    assert session.get(WebhookEvent, ids[0]) is None and session.get(WebhookEvent, ids[1]) is not None
    assert not session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == ids[0])).all()


def test_cleanup_keeps_30_days_of_log(session, org, endpoint):
    now = utcnow()
    old = f.make_webhook_event(session, organization_id=org.id, created_at=now - timedelta(days=31))
    recent = f.make_webhook_event(session, organization_id=org.id, created_at=now - timedelta(days=29))
    old_attempt = f.make_webhook_delivery_attempt(
        session, delivery_id=f.make_webhook_delivery(session, webhook_id=endpoint["id"], event_id=old.id).id)
    recent_attempt = f.make_webhook_delivery_attempt(
        session, delivery_id=f.make_webhook_delivery(session, webhook_id=endpoint["id"], event_id=recent.id).id)
    ids = (old.id, old_attempt.id, recent.id, recent_attempt.id)
    assert pipeline.cleanup(session, now=now) >= 1
    session.expunge_all()
    assert session.get(WebhookEvent, ids[0]) is None and session.get(WebhookDeliveryAttempt, ids[1]) is None
    assert session.get(WebhookEvent, ids[2]) is not None
    assert session.get(WebhookDeliveryAttempt, ids[3]) is not None


def test_the_envelope_is_the_same_bytes_on_every_attempt(session, org):
    event = emit(session, org.id, "contact.opted_out", {"id": "ctc_1", "opted_out": True})
    session.flush()
    body = pipeline.envelope_bytes(event)
    assert body == pipeline.envelope_bytes(session.get(WebhookEvent, event.id))
    assert json.loads(body)["data"] == {"id": "ctc_1", "opted_out": True}


def test_a_pooled_connection_is_pinged_only_after_idling_and_a_dead_one_is_replaced(engine, monkeypatch):
    """Deliveries take two short statements; the pool does not ping a connection in steady use (a
    round trip saved per statement), but one idle for a while is checked and replaced if dead."""
    import time
    import types

    from sqlalchemy import create_engine, text

    from app import db
    from app.db import ping_when_idle

    clock = types.SimpleNamespace(now=1000.0)  # the pool's idle clock, moved by hand
    monkeypatch.setattr(db, "time", types.SimpleNamespace(monotonic=lambda: clock.now, time=time.time))
    pool = create_engine(engine.url.render_as_string(hide_password=False), pool_size=1, max_overflow=0)
    ping_when_idle(pool, idle_s=0.3)
    pings = []
    real_ping = pool.dialect.do_ping
    monkeypatch.setattr(pool.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))
    pid = lambda c: c.execute(text("SELECT pg_backend_pid()")).scalar()  # noqa: E731
    try:
        with pool.connect() as c:
            first = pid(c)
        clock.now += 0.3
        with pool.connect() as c:
            assert pid(c) == first and pings == [], "in steady use: reused, not pinged"
        clock.now += 0.31
        with engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": first})
        with pool.connect() as c:
            assert pid(c) != first, "the dead connection was replaced"
        assert pings == [1]
    finally:
        pool.dispose()
