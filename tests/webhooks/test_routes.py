"""Webhook endpoints through the API: create (secret once, encrypted at rest), list, get, update,
delete, rotate, test events, the delivery log, redeliver; validation, permissions, audit rows,
tenant isolation; and emit() / fan-out (cheap when nobody listens, one delivery per endpoint)."""
from __future__ import annotations

import base64
import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

import jobs  # noqa: F401  (registers the actors)
from app.audit.models import AuditLog
from app.db import utcnow
from app.models import JobOutbox
from app.security import crypto
from app.security.principal import SystemPrincipal
from app.webhooks import events as events_module
from app.webhooks import service
from app.webhooks.events import emit
from app.webhooks.models import Webhook, WebhookDelivery, WebhookEvent
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers
from tests.webhook_receiver import queued_jobs

URL = "https://hooks.example.test/wa?token=abc123"


def create(client, headers, **body):
    body = {"url": URL, "events": ["message.sent"], **body}
    resp = client.post("/api/webhooks", json=body, headers=headers)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def audit(session, action, target_id=None):
    stmt = select(AuditLog).where(AuditLog.action == action)
    if target_id:
        stmt = stmt.where(AuditLog.target_id == target_id)
    return list(session.scalars(stmt))


def test_create_shows_the_secret_once_and_keeps_it_encrypted(client, session, admin_headers):
    created = create(client, admin_headers, events=["message.sent", "message.read"], description="CRM sync")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:], validate=True)) == 32
    assert created["id"].startswith("whk_") and created["enabled"] is True
    assert created["events"] == ["message.sent", "message.read"] and created["description"] == "CRM sync"

    got = client.get(f"/api/webhooks/{created['id']}", headers=admin_headers).get_json()
    assert "secret" not in got and got["url"] == URL
    listed = client.get("/api/webhooks", headers=admin_headers).get_json()
    assert [w["id"] for w in listed["items"]] == [created["id"]] and "secret" not in listed["items"][0]

    row = session.get(Webhook, created["id"])
    assert secret not in row.secret_encrypted and crypto.decrypt(row.secret_encrypted) == secret
    [entry] = audit(session, "webhook.create", created["id"])
    assert entry.changes["events"] == ["message.sent", "message.read"]
    assert "abc123" not in json.dumps(entry.changes), "URL tokens stay out of the audit log"
    assert "whsec_" not in json.dumps(entry.changes)


@pytest.mark.parametrize("body,field", [
    ({"url": URL, "events": ["message.sent", "message.bogus"]}, "events"),
    ({"url": URL, "events": []}, "events"),
    ({"url": URL, "events": ["Message.Sent"]}, "events"),
    ({"url": "ftp://hooks.example.test/x", "events": ["*"]}, "url"),
    ({"url": "javascript:alert(1)", "events": ["*"]}, "url"),
    ({"url": "https:///nohost", "events": ["*"]}, "url"),
    ({"url": "https://hooks.example.test/" + "a" * 2100, "events": ["*"]}, "url"),
    ({"url": URL, "events": ["*"], "secret": "whsec_mine"}, "secret"),
    ({"events": ["*"]}, "url"),
    ({"url": URL, "events": ["*"], "description": "x" * 501}, "description"),
])
def test_invalid_bodies_are_422_naming_the_field(client, admin_headers, body, field):
    resp = client.post("/api/webhooks", json=body, headers=admin_headers)
    assert resp.status_code == 422, resp.get_json()
    assert field in resp.get_json()["error"]["details"]


def test_wildcard_and_duplicates_are_normalised(client, admin_headers):
    assert create(client, admin_headers, events=["message.sent", "*"])["events"] == ["*"]
    assert create(client, admin_headers, events=["message.sent", "message.sent"])["events"] == ["message.sent"]


def test_update_delete_and_their_audit_rows(client, session, admin_headers):
    hook = create(client, admin_headers)
    resp = client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers,
                        json={"url": "https://other.example.test/in", "events": ["*"], "description": "new"})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["events"] == ["*"] and resp.get_json()["url"] == "https://other.example.test/in"
    [entry] = audit(session, "webhook.update", hook["id"])
    assert entry.changes["url"] == {"from": "https://hooks.example.test/wa?…", "to": "https://other.example.test/in"}
    assert client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers,
                        json={"events": ["nope"]}).status_code == 422
    assert client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"secret": "x"}).status_code == 422

    resp = client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"enabled": False})
    assert resp.get_json()["enabled"] is False and resp.get_json()["disabled_reason"] == "manual"
    resp = client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"enabled": True})
    assert resp.get_json()["enabled"] is True and resp.get_json()["disabled_reason"] is None

    assert client.delete(f"/api/webhooks/{hook['id']}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/webhooks/{hook['id']}", headers=admin_headers).status_code == 404
    assert client.get("/api/webhooks", headers=admin_headers).get_json()["items"] == []
    assert audit(session, "webhook.delete", hook["id"])


def test_deleting_or_disabling_abandons_pending_deliveries(client, session, org, admin_headers):
    hook = create(client, admin_headers, events=["*"])
    event = f.make_webhook_event(session, organization_id=org.id, type="message.sent")
    pending = f.make_webhook_delivery(session, webhook_id=hook["id"], event_id=event.id, status="failed", attempt=2)
    client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"enabled": False})
    session.refresh(pending)
    assert pending.status == "dead" and pending.next_attempt_at is None
    client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"enabled": True})
    session.refresh(pending)
    assert pending.status == "dead", "re-enabling redelivers nothing by itself"


def test_rotate_secret_returns_a_new_secret_and_keeps_the_old_for_24_hours(client, session, admin_headers):
    hook = create(client, admin_headers)
    before = utcnow()
    resp = client.post(f"/api/webhooks/{hook['id']}/rotate-secret", headers=admin_headers)
    assert resp.status_code == 200, resp.get_json()
    rotated = resp.get_json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != hook["secret"]
    row = session.get(Webhook, hook["id"])
    session.refresh(row)
    assert crypto.decrypt(row.secret_encrypted) == rotated["secret"]
    assert crypto.decrypt(row.previous_secret_encrypted) == hook["secret"]
    assert timedelta(hours=23, minutes=59) < row.previous_secret_expires_at - before <= timedelta(hours=24, minutes=1)
    [entry] = audit(session, "webhook.rotate_secret", hook["id"])
    assert "whsec_" not in json.dumps(entry.changes) and "previous_secret_expires_at" in entry.changes
    assert "secret" not in client.get(f"/api/webhooks/{hook['id']}", headers=admin_headers).get_json()


def test_test_event_goes_to_that_endpoint_only(client, session, org, admin_headers, redis_conn):
    target = create(client, admin_headers, events=["message.sent"])
    other = create(client, admin_headers, events=["*"])
    resp = client.post(f"/api/webhooks/{target['id']}/test", headers=admin_headers)
    assert resp.status_code == 202, resp.get_json()
    out = resp.get_json()
    assert out["type"] == "webhook.test" and out["event_id"].startswith("evt_")
    deliveries = list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == out["event_id"])))
    assert [(d.id, d.webhook_id) for d in deliveries] == [(out["delivery_id"], target["id"])]
    assert other["id"] not in {d.webhook_id for d in deliveries}
    assert session.get(WebhookEvent, out["event_id"]).payload["webhook_id"] == target["id"]
    assert ("webhooks.deliver", [out["delivery_id"], 1, target["id"]]) in [
        (a, args) for a, args, _ in queued_jobs(redis_conn)]
    assert not [a for a, _, _ in queued_jobs(redis_conn) if a == "webhooks.fan_out"]
    assert audit(session, "webhook.test", target["id"])

    client.patch(f"/api/webhooks/{target['id']}", headers=admin_headers, json={"enabled": False})
    resp = client.post(f"/api/webhooks/{target['id']}/test", headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "webhook_disabled"


@pytest.mark.parametrize("role,read,write", [("admin", 200, 201), ("manager", 200, 201), ("agent", 403, 403),
                                             ("viewer", 403, 403)])
def test_permissions(client, session, org, role, read, write):
    headers = principal_headers(session, org, role)
    assert client.get("/api/webhooks", headers=headers).status_code == read
    assert client.post("/api/webhooks", json={"url": URL, "events": ["*"]}, headers=headers).status_code == write
    key_headers = api_key_headers(session, org, role)
    assert client.get("/api/webhooks", headers=key_headers).status_code == read


def test_unauthenticated_is_401(client):
    assert client.get("/api/webhooks").status_code == 401
    assert client.post("/api/webhook-deliveries/dlv_x/redeliver").status_code == 401


def test_another_organisation_sees_nothing(client, session, org, admin_headers):
    hook = create(client, admin_headers, events=["*"])
    event = f.make_webhook_event(session, organization_id=org.id, type="message.sent")
    dlv = f.make_webhook_delivery(session, webhook_id=hook["id"], event_id=event.id, status="succeeded")
    f.make_webhook_delivery_attempt(session, delivery_id=dlv.id)
    other = principal_headers(session, f.make_organization(session), "admin")
    base = f"/api/webhooks/{hook['id']}"
    assert client.get(base, headers=other).status_code == 404
    assert client.patch(base, json={"enabled": False}, headers=other).status_code == 404
    assert client.post(f"{base}/rotate-secret", headers=other).status_code == 404
    assert client.post(f"{base}/test", headers=other).status_code == 404
    assert client.get(f"{base}/deliveries", headers=other).status_code == 404
    assert client.get(f"/api/webhook-deliveries/{dlv.id}", headers=other).status_code == 404
    assert client.post(f"/api/webhook-deliveries/{dlv.id}/redeliver", headers=other).status_code == 404
    assert client.delete(base, headers=other).status_code == 404
    assert client.get("/api/webhooks", headers=other).get_json()["items"] == []
    assert client.get(base, headers=admin_headers).status_code == 200


def test_emit_delivers_to_each_subscribed_endpoint_of_the_organisation_once(session, org, redis_conn):
    sent = f.make_webhook(session, organization_id=org.id, events=["message.sent"])
    every = f.make_webhook(session, organization_id=org.id, events=["*"])
    f.make_webhook(session, organization_id=org.id, events=["message.read"])
    f.make_webhook(session, organization_id=org.id, events=["*"], enabled=False)
    f.make_webhook(session, organization_id=org.id, events=["*"], deleted_at=utcnow())
    f.make_webhook(session, events=["*"])  # another organisation
    event = emit(session, org.id, "message.sent", {"id": "msg_1", "status": "sent"})
    rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.event_id == event.id)).all()
    assert sorted(r.webhook_id for r in rows) == sorted([sent.id, every.id]), "written in the emitting transaction"
    assert all(r.status == "pending" and r.attempt == 0 and r.organization_id == org.id for r in rows)
    assert not queued_jobs(redis_conn), "nothing is sent before the commit"
    session.commit()
    jobs_ = [(actor, args) for actor, args, _ in queued_jobs(redis_conn)]
    assert sorted(jobs_) == sorted(("webhooks.deliver", [r.id, 1, r.webhook_id]) for r in rows), \
        "a job per delivery once committed, no fan-out hop"
    assert session.scalar(select(func.count()).select_from(JobOutbox)) == 0, \
        "no outbox row: a delivery whose job is lost is due again when its lease runs out"
    assert all(r.next_attempt_at > utcnow() for r in rows)
    assert events_module.fan_out(session, event.id) == 0, "fan-out is idempotent"


def test_many_endpoints_are_fanned_out_by_a_job(session, org):
    hooks = [f.make_webhook(session, organization_id=org.id, events=["*"])
             for _ in range(events_module.INLINE_FAN_OUT_MAX + 1)]
    event = emit(session, org.id, "client.qr", {"id": "cli_1", "status": "qr"})
    assert session.execute(select(JobOutbox.actor_name, JobOutbox.args)).all() == [("webhooks.fan_out", [event.id])]
    assert events_module.fan_out(session, event.id) == len(hooks)
    assert events_module.fan_out(session, event.id) == 0


def test_emit_enqueues_nothing_when_nobody_listens(session, org, redis_conn):
    def jobs_():
        session.commit()  # what the transaction sends, it sends once committed
        return session.scalar(select(func.count()).select_from(JobOutbox)) + len(queued_jobs(redis_conn))

    emit(session, org.id, "message.sent", {"id": "msg_1"})
    assert jobs_() == 0
    assert session.scalar(select(func.count()).select_from(WebhookEvent).where(WebhookEvent.organization_id == org.id)) == 1
    f.make_webhook(session, organization_id=org.id, events=["message.read"])
    f.make_webhook(session, organization_id=org.id, events=["*"], enabled=False)
    session.commit()  # a new transaction: the per-transaction answer is asked again
    emit(session, org.id, "message.sent", {"id": "msg_2"})
    assert jobs_() == 0 and session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
    emit(session, org.id, "message.read", {"id": "msg_3"})
    assert jobs_() == 1 and session.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
    with pytest.raises(ValueError):
        emit(session, org.id, "message.exploded", {})


def test_emit_normalises_data_to_json(session, org):
    now = utcnow()
    event = emit(session, org.id, "message.sent", {"id": "msg_1", "sent_at": now, "tags": ("a",)})
    session.flush()
    session.refresh(event)
    assert event.payload == {"id": "msg_1", "sent_at": now.isoformat(), "tags": ["a"]}


def test_delivery_log_lists_attempts_newest_first_with_a_cursor(client, session, org, admin_headers):
    hook = create(client, admin_headers, events=["*"])
    event = f.make_webhook_event(session, organization_id=org.id, type="message.sent")
    dlv = f.make_webhook_delivery(session, webhook_id=hook["id"], event_id=event.id, status="failed", attempt=3)
    due = utcnow() + timedelta(minutes=30)
    for n, code in ((1, 500), (2, None), (3, 503)):
        f.make_webhook_delivery_attempt(session, delivery_id=dlv.id, attempt=n, status_code=code,
                                        error=None if code else "timeout: no response within 15 s",
                                        next_attempt_at=due, response_excerpt="busy")
    page = client.get(f"/api/webhooks/{hook['id']}/deliveries?limit=2", headers=admin_headers).get_json()
    assert [i["attempt"] for i in page["items"]] == [3, 2]
    first = page["items"][0]
    assert {k: first[k] for k in ("id", "event_id", "event_type", "status_code", "response", "succeeded")} == {
        "id": dlv.id, "event_id": event.id, "event_type": "message.sent", "status_code": 503, "response": "busy",
        "succeeded": False}
    assert set(first) >= {"id", "event_id", "event_type", "attempt", "status_code", "duration_ms", "error",
                          "created_at", "next_attempt_at"}
    assert page["items"][1]["error"].startswith("timeout")
    rest = client.get(f"/api/webhooks/{hook['id']}/deliveries?limit=2&cursor={page['next_cursor']}",
                      headers=admin_headers).get_json()
    assert [i["attempt"] for i in rest["items"]] == [1] and rest["next_cursor"] is None
    assert client.get(f"/api/webhooks/{hook['id']}/deliveries?cursor=bad", headers=admin_headers).status_code == 422
    other_event = client.get(f"/api/webhooks/{hook['id']}/deliveries?event_id=evt_none",
                             headers=admin_headers).get_json()
    assert other_event["items"] == []

    one = client.get(f"/api/webhook-deliveries/{dlv.id}", headers=admin_headers).get_json()
    assert one["status"] == "failed" and [a["attempt"] for a in one["attempts"]] == [1, 2, 3]


def test_redeliver_resets_the_delivery_and_sends_it_now(client, session, org, admin_headers, redis_conn):
    hook = create(client, admin_headers, events=["*"])
    event = f.make_webhook_event(session, organization_id=org.id, type="message.sent")
    dlv = f.make_webhook_delivery(session, webhook_id=hook["id"], event_id=event.id, status="dead", attempt=10,
                                  last_error="HTTP 500", next_attempt_at=None)
    resp = client.post(f"/api/webhook-deliveries/{dlv.id}/redeliver", headers=admin_headers)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["status"] == "pending" and resp.get_json()["attempt"] == 0
    assert ("webhooks.deliver", [dlv.id, 1, hook["id"]]) in [(a, args) for a, args, _ in queued_jobs(redis_conn)]
    assert audit(session, "webhook_delivery.redeliver", dlv.id)

    client.patch(f"/api/webhooks/{hook['id']}", headers=admin_headers, json={"enabled": False})
    resp = client.post(f"/api/webhook-deliveries/{dlv.id}/redeliver", headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "webhook_disabled"


def test_redeliver_refuses_while_an_attempt_runs(client, session, org, admin_headers):
    hook = create(client, admin_headers, events=["*"])
    dlv = f.make_webhook_delivery(session, webhook_id=hook["id"], status="delivering", attempt=1,
                                  next_attempt_at=utcnow() + timedelta(seconds=60))
    resp = client.post(f"/api/webhook-deliveries/{dlv.id}/redeliver", headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "delivery_in_progress"


def test_an_organisation_has_at_most_50_endpoints(session, org):
    principal = SystemPrincipal(org.id)
    for _ in range(service.MAX_WEBHOOKS_PER_ORG):
        f.make_webhook(session, organization_id=org.id)
    from app.errors import Conflict

    with pytest.raises(Conflict):
        service.create_webhook(session, principal, url=URL, events=["*"])


def test_deliveries_of_a_deleted_endpoint_are_gone(client, session, org, admin_headers):
    hook = create(client, admin_headers, events=["*"])
    dlv = f.make_webhook_delivery(session, webhook_id=hook["id"], status="dead")
    assert client.get(f"/api/webhook-deliveries/{dlv.id}", headers=admin_headers).status_code == 200
    client.delete(f"/api/webhooks/{hook['id']}", headers=admin_headers)
    assert client.get(f"/api/webhook-deliveries/{dlv.id}", headers=admin_headers).status_code == 404
    assert client.post(f"/api/webhook-deliveries/{dlv.id}/redeliver", headers=admin_headers).status_code == 404
    assert client.get(f"/api/webhooks/{hook['id']}/deliveries", headers=admin_headers).status_code == 404
