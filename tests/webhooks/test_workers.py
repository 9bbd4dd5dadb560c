"""Webhooks end to end with real ``webhooks`` pool processes (and the scheduler where the claimer
matters), delivering to a real receiver on loopback: signed deliveries with retries on the
(scaled) schedule, duplicate jobs delivering once, a slow endpoint not holding up the others,
and a retry schedule that survives a killed worker and a wiped Redis."""
from __future__ import annotations

import os
import signal
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook as StandardWebhook

import jobs.webhooks as webhook_jobs
from app.db import utcnow
from app.security.principal import SystemPrincipal
from app.webhooks import events as webhook_events
from app.webhooks import service
from app.webhooks.events import emit
from app.webhooks.models import WebhookDelivery, WebhookDeliveryAttempt
from tests import factories as f
from tests.procs import spawn, stop, wait_for
from tests.webhook_receiver import Reply, verify_signature

pytestmark = pytest.mark.workers

WORKER_ENV = {"WEBHOOK_ALLOW_PRIVATE": "true", "WEBHOOK_TIME_SCALE": "0.01"}


def make_endpoint(session, url, events=("*",)):
    org = f.make_organization(session)
    hook = service.create_webhook(session, SystemPrincipal(org.id), url=url, events=list(events))
    session.commit()
    return org, hook


def attempts_of(session, delivery_id):
    session.expire_all()
    return session.scalars(select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.delivery_id == delivery_id)
                           .order_by(WebhookDeliveryAttempt.id)).all()


def delivery_of(session, event_id):
    session.expire_all()
    return session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id)).one()


def test_signed_delivery_retried_on_schedule_by_real_workers(committed, run_pool, receiver, allow_private):
    run_pool("webhooks", **WORKER_ENV)
    org, hook = make_endpoint(committed, receiver.url("/hook"), ["message.sent"])
    receiver.script("/hook", Reply(500, body="boom"), Reply(503, headers={"Retry-After": "1"}), Reply(200))
    event = emit(committed, org.id, "message.sent", {"id": "msg_1", "status": "sent"})
    committed.commit()

    got = receiver.wait_for(3, "/hook", timeout=60)
    wait_for(lambda: delivery_of(committed, event.id).status == "succeeded", timeout=30, message="success recorded")
    assert len(got) == 3
    assert {r.headers["webhook-id"] for r in got} == {event.id} and len({r.body for r in got}) == 1
    for r in got:
        assert verify_signature(hook["secret"], r.headers, r.body)
        assert StandardWebhook(hook["secret"]).verify(r.body, r.headers)["data"] == {"id": "msg_1", "status": "sent"}

    rows = attempts_of(committed, delivery_of(committed, event.id).id)
    assert [(a.attempt, a.status_code) for a in rows] == [(1, 500), (2, 503), (3, 200)]
    assert rows[0].response_excerpt == "boom" and rows[2].next_attempt_at is None
    # each retry came no earlier than the time the log announced for it (5 s and 5 min, scaled by 0.01)
    for failed, retry in ((rows[0], got[1]), (rows[1], got[2])):
        assert retry.received_at >= failed.next_attempt_at.timestamp() - 0.05
    assert 0.8 * 3 <= (rows[1].next_attempt_at - rows[1].created_at).total_seconds() <= 1.2 * 3


def test_duplicate_jobs_deliver_once_in_real_workers(committed, run_pool, receiver, allow_private, redis_conn):
    org, hook = make_endpoint(committed, receiver.url("/hook"))
    event = emit(committed, org.id, "client.connected", {"id": "cli_1", "status": "ready"})
    committed.commit()
    webhook_events.fan_out(committed, event.id)
    committed.commit()
    delivery_id = delivery_of(committed, event.id).id
    for _ in range(4):  # fan-out already sent one; four more copies of the same job
        webhook_jobs.deliver.send(delivery_id, 1)
    run_pool("webhooks", **WORKER_ENV)
    receiver.wait_for(1, "/hook", timeout=30)
    wait_for(lambda: redis_conn.llen("dramatiq:webhooks") == 0 and not redis_conn.hlen("dramatiq:__acks__.webhooks")
             and not any(redis_conn.scan_iter("dramatiq:__acks__*")), timeout=30, message="the queue to drain")
    assert receiver.count("/hook") == 1
    assert [a.attempt for a in attempts_of(committed, delivery_id)] == [1]


def test_a_slow_endpoint_does_not_hold_up_the_others(committed, run_pool, receiver, allow_private):
    run_pool("webhooks", threads=4, WEBHOOK_MAX_IN_FLIGHT="2", WEBHOOK_TIMEOUT="30", **WORKER_ENV)
    org = f.make_organization(committed)
    principal = SystemPrincipal(org.id)
    service.create_webhook(committed, principal, url=receiver.url("/slow"), events=["message.sent"])
    service.create_webhook(committed, principal, url=receiver.url("/fast"), events=["message.read"])
    committed.commit()
    receiver.always("/slow", Reply(200, hold=True))
    for i in range(8):
        emit(committed, org.id, "message.sent", {"id": f"msg_{i}"})
    committed.commit()
    receiver.wait_for(2, "/slow", timeout=30)
    emit(committed, org.id, "message.read", {"id": "msg_read"})
    committed.commit()
    try:
        receiver.wait_for(1, "/fast", timeout=20)
        assert receiver.count("/slow") == 2, "at most WEBHOOK_MAX_IN_FLIGHT attempts on the slow endpoint"
    finally:
        receiver.release()
    receiver.wait_for(8, "/slow", timeout=90)


def test_the_schedule_survives_a_killed_worker_and_a_wiped_redis(committed, run_pool, receiver, allow_private,
                                                               redis_conn):
    org, hook = make_endpoint(committed, receiver.url("/hook"))
    receiver.script("/hook", Reply(200, hold=True))
    first_worker = run_pool("webhooks", **WORKER_ENV)
    event = emit(committed, org.id, "message.delivered", {"id": "msg_1", "status": "delivered"})
    # and one whose retry was due while everything was down (its broker message is gone)
    other = f.make_webhook_event(committed, organization_id=org.id, type="message.read")
    waiting = f.make_webhook_delivery(committed, webhook_id=hook["id"], event_id=other.id, status="failed", attempt=1,
                                      next_attempt_at=utcnow() + timedelta(seconds=2))
    committed.commit()
    receiver.wait_for(1, "/hook", timeout=30)  # attempt 1 is on the wire...
    os.killpg(first_worker.pid, signal.SIGKILL)  # ...when its worker dies
    stop(first_worker)
    redis_conn.flushdb()  # and Redis loses every message
    running = delivery_of(committed, event.id)
    assert (running.status, running.attempt) == ("delivering", 1)
    # the test clock: the dead attempt's lease is over
    committed.execute(update(WebhookDelivery).where(WebhookDelivery.id == running.id)
                      .values(next_attempt_at=utcnow() - timedelta(seconds=1)))
    committed.commit()
    receiver.release()

    run_pool("webhooks", **WORKER_ENV)
    scheduler = spawn(["-m", "workers", "scheduler"], **WORKER_ENV)
    try:
        wait_for(lambda: delivery_of(committed, event.id).status == "succeeded", timeout=45,
                 message="the claimer to resend the interrupted delivery")
        wait_for(lambda: delivery_of(committed, other.id).status == "succeeded", timeout=45,
                 message="the claimer to send the retry that was due")
    finally:
        stop(scheduler)
    assert [a.attempt for a in attempts_of(committed, running.id)] == [2]
    assert [a.attempt for a in attempts_of(committed, waiting.id)] == [2]
    ids = [r.headers["webhook-id"] for r in receiver.requests("/hook")]
    assert ids.count(event.id) == 2 and ids.count(other.id) == 1
