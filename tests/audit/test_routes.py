"""The audit log: what a row records, GET /api/audit-logs with its filters and pagination, and
that no request can change or delete a row."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.audit.service import record
from app.db import utcnow
from app.security.principal import Principal
from tests import factories as f
from tests.auth_helpers import api_key_with_headers, user_with_headers


@pytest.fixture
def admin_and_headers(session, org):
    """An admin user of ``org`` and its Bearer headers."""
    return user_with_headers(session, org, "admin")


def ids(resp):
    assert resp.status_code == 200, resp.get_json()
    return [row["id"] for row in resp.get_json()["items"]]


def test_a_row_records_actor_target_request_and_changes(client, session, org, admin_and_headers):
    user, headers = admin_and_headers
    resp = client.post("/api/users", headers={**headers, "User-Agent": "ops-script/1.0", "X-Request-ID": "req-42"},
                       json={"email": "eve@example.test", "name": "Eve", "password": "a long passphrase", "role": "viewer"},
                       environ_base={"REMOTE_ADDR": "10.20.30.40"})
    assert resp.status_code == 201
    [row] = client.get("/api/audit-logs?action=user.create", headers=headers).get_json()["items"]
    assert row["actor_type"] == "user" and row["actor_id"] == user.id
    assert row["target_type"] == "user" and row["target_id"] == resp.get_json()["id"]
    assert (row["ip"], row["user_agent"], row["request_id"]) == ("10.20.30.40", "ops-script/1.0", "req-42")
    assert row["changes"] == {"email": "eve@example.test", "name": "Eve", "role": "viewer"}
    assert row["created_at"]


def test_an_api_key_is_recorded_as_the_actor(client, session, org):
    key, headers = api_key_with_headers(session, org, "admin")
    client.post("/api/api-keys", json={"name": "child", "role": "viewer"}, headers=headers)
    rows = client.get("/api/audit-logs?action=api_key.create", headers=headers).get_json()["items"]
    assert rows[0]["actor_type"] == "api_key" and rows[0]["actor_id"] == key.id


def test_secrets_never_reach_the_changes(session, org):
    principal = Principal(organization_id=org.id, kind="system", id=None, role="admin")
    row = record(session, principal, "test.secret", changes={
        "password": "hunter2hunter2", "name": "ok", "config": {"access_token": "EAAB...", "phone": "+1"},
        "items": [{"secret": "whsec_x"}]})
    session.flush()
    text = str(row.changes)
    for secret in ("hunter2hunter2", "EAAB...", "whsec_x"):
        assert secret not in text
    assert row.changes["name"] == "ok" and row.changes["config"]["phone"] == "+1"


def test_filters_by_actor_action_since_and_target(client, session, org, admin_and_headers):
    user, headers = admin_and_headers
    other = f.make_user(session, organization_id=org.id)
    old = f.make_audit_log(session, organization_id=org.id, action="user.update", actor_type="user",
                           actor_id=other.id, target_id="usr_target", created_at=utcnow() - timedelta(days=3))
    mine = f.make_audit_log(session, organization_id=org.id, action="user.delete", actor_type="user", actor_id=user.id)
    system = f.make_audit_log(session, organization_id=org.id, action="client.start", actor_type="system")

    assert ids(client.get(f"/api/audit-logs?actor={other.id}", headers=headers)) == [old.id]
    assert ids(client.get("/api/audit-logs?actor=system", headers=headers)) == [system.id]
    assert ids(client.get("/api/audit-logs?action=user.delete", headers=headers)) == [mine.id]
    assert ids(client.get("/api/audit-logs?action=user.*", headers=headers)) == [mine.id, old.id]
    assert ids(client.get("/api/audit-logs?target=usr_target", headers=headers)) == [old.id]
    since = (utcnow() - timedelta(days=1)).isoformat()
    recent = ids(client.get("/api/audit-logs", query_string={"since": since}, headers=headers))
    assert old.id not in recent and {mine.id, system.id} <= set(recent)
    combined = client.get("/api/audit-logs", query_string={"since": since, "action": "user.*", "actor": user.id},
                          headers=headers)
    assert ids(combined) == [mine.id]
    assert client.get("/api/audit-logs?since=yesterday", headers=headers).status_code == 422


def test_action_prefix_is_literal(client, session, org, admin_and_headers):
    _, headers = admin_and_headers
    f.make_audit_log(session, organization_id=org.id, action="userXcreate")
    assert ids(client.get("/api/audit-logs?action=user_*", headers=headers)) == []


def test_cursor_pagination_newest_first(client, session, org, admin_and_headers):
    _, headers = admin_and_headers
    made = [f.make_audit_log(session, organization_id=org.id, action="test.page").id for _ in range(5)]
    seen, cursor = [], None
    while True:
        query = {"action": "test.page", "limit": 2, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/audit-logs", query_string=query, headers=headers).get_json()
        seen += [r["id"] for r in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(made, reverse=True)  # ids sort by creation time (ms), then randomly


def test_other_organisations_rows_are_never_listed(client, session, org, admin_and_headers):
    _, headers = admin_and_headers
    foreign = f.make_audit_log(session, action="user.create")
    listed = ids(client.get("/api/audit-logs?limit=500", headers=headers))
    assert foreign.id not in listed
    assert ids(client.get(f"/api/audit-logs?target={foreign.target_id or 'none'}&action=user.create", headers=headers)) == []


@pytest.mark.parametrize("role, status", [("admin", 200), ("manager", 200), ("agent", 403), ("viewer", 403)])
def test_admins_and_managers_read_the_log(client, session, org, role, status):
    _, headers = user_with_headers(session, org, role)
    assert client.get("/api/audit-logs", headers=headers).status_code == status


def test_rows_cannot_be_changed_or_deleted_through_the_api(app, client, session, org, admin_and_headers):
    _, headers = admin_and_headers
    row = f.make_audit_log(session, organization_id=org.id, action="user.create")
    for method in ("put", "patch", "delete", "post"):
        assert getattr(client, method)("/api/audit-logs", json={}, headers=headers).status_code == 405
        assert getattr(client, method)(f"/api/audit-logs/{row.id}", json={}, headers=headers).status_code in (404, 405)
    spec = client.get("/api/openapi.json").get_json()
    audit_ops = {(path, m) for path, ops in spec["paths"].items() if path.startswith("/api/audit")
                 for m in ops if m in ("get", "put", "patch", "post", "delete")}
    assert audit_ops == {("/api/audit-logs", "get")}
    # and no route anywhere takes an audit row id
    assert not [rule.rule for rule in app.url_map.iter_rules() if "audit" in rule.rule and "<" in rule.rule]
    session.refresh(row)
    assert row.action == "user.create"
