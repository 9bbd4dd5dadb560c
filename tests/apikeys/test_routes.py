"""API keys: created and shown once, stored as an HMAC, role-capped, expiring, revocable, and
refused when unknown, revoked, expired or used on another organisation's objects."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from app.apikeys.models import ApiKey
from app.audit.models import AuditLog
from app.db import utcnow
from app.security import keys as key_material
from app.security.auth import forget_api_key, forget_key_touches
from tests import factories as f
from tests.auth_helpers import api_key_with_headers, user_with_headers


def me(client, headers):
    return client.get("/api/auth/me", headers=headers)


def test_create_shows_the_key_once_and_stores_only_an_hmac(client, session, org, admin_headers):
    resp = client.post("/api/api-keys", json={"name": "CI", "role": "manager"}, headers=admin_headers)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert set(body) >= {"id", "name", "role", "prefix", "key"}
    secret = body["key"]
    assert secret.startswith("sk_") and len(secret) >= 3 + 43 and body["prefix"] == secret[:len(body["prefix"])]
    row = session.get(ApiKey, body["id"])
    assert row.key_hash == key_material.hash_key(secret) and secret not in row.key_hash
    assert row.key_hash != __import__("hashlib").sha256(secret.encode()).hexdigest()  # peppered
    # never shown again
    listed = client.get("/api/api-keys", headers=admin_headers).get_json()["items"]
    assert [k["id"] for k in listed] == [body["id"]] and "key" not in listed[0] and "key_hash" not in listed[0]
    assert secret not in str(listed)
    # it works, with its own role
    who = me(client, {"X-API-Key": secret}).get_json()
    assert who["kind"] == "api_key" and who["id"] == body["id"] and who["role"] == "manager"
    [audit] = session.scalars(select(AuditLog).where(AuditLog.action == "api_key.create", AuditLog.target_id == body["id"]))
    assert secret not in str(audit.changes) and audit.changes["role"] == "manager"


def test_key_lookup_is_by_unique_prefix(session, org):
    row, headers = api_key_with_headers(session, org, "viewer")
    secret = headers["X-API-Key"]
    assert key_material.lookup_prefix(secret) == row.prefix
    assert key_material.lookup_prefix("sk_short") is None and key_material.lookup_prefix("pk_" + "a" * 40) is None


@pytest.mark.parametrize("role, allowed", [("manager", {"manager", "agent", "viewer"}), ("admin", {"admin", "manager", "agent", "viewer"})])
def test_a_key_role_is_at_most_the_creators(client, session, org, role, allowed):
    _, headers = user_with_headers(session, org, role)
    for key_role in ("admin", "manager", "agent", "viewer"):
        resp = client.post("/api/api-keys", json={"name": key_role, "role": key_role}, headers=headers)
        assert resp.status_code == (201 if key_role in allowed else 403), (key_role, resp.get_json())


def test_a_manager_cannot_revoke_an_admin_key(client, session, org):
    _, headers = user_with_headers(session, org, "manager")
    admin_key, _ = api_key_with_headers(session, org, "admin")
    viewer_key, _ = api_key_with_headers(session, org, "viewer")
    assert client.delete(f"/api/api-keys/{admin_key.id}", headers=headers).status_code == 403
    assert client.delete(f"/api/api-keys/{viewer_key.id}", headers=headers).status_code == 204


def test_create_validates_the_body(client, admin_headers):
    assert client.post("/api/api-keys", json={"name": "x", "role": "owner"}, headers=admin_headers).status_code == 422
    assert client.post("/api/api-keys", json={"role": "viewer"}, headers=admin_headers).status_code == 422
    past = (utcnow() - timedelta(minutes=1)).isoformat()
    resp = client.post("/api/api-keys", json={"name": "x", "role": "viewer", "expires_at": past}, headers=admin_headers)
    assert resp.status_code == 422 and "expires_at" in resp.get_json()["error"]["details"]
    resp = client.post("/api/api-keys", json={"name": "x", "role": "viewer", "key_hash": "mine"}, headers=admin_headers)
    assert resp.status_code == 422 and "key_hash" in resp.get_json()["error"]["details"]


def test_an_unknown_key_is_refused(client, session, org):
    _, headers = api_key_with_headers(session, org, "admin")
    secret = headers["X-API-Key"]
    for candidate in ("sk_" + "A" * 43, secret[:-2] + ("AA" if not secret.endswith("AA") else "BB"), "garbage", ""):
        resp = me(client, {"X-API-Key": candidate})
        assert resp.status_code == 401, candidate


def test_a_revoked_key_is_refused_at_once(client, session, org, admin_headers):
    row, headers = api_key_with_headers(session, org, "viewer")
    assert me(client, headers).status_code == 200
    assert client.delete(f"/api/api-keys/{row.id}", headers=admin_headers).status_code == 204
    resp = me(client, headers)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "api_key_revoked"
    assert client.delete(f"/api/api-keys/{row.id}", headers=admin_headers).status_code == 404
    assert [k["id"] for k in client.get("/api/api-keys", headers=admin_headers).get_json()["items"]] == []
    listed = client.get("/api/api-keys?include_revoked=true", headers=admin_headers).get_json()["items"]
    assert listed[0]["id"] == row.id and listed[0]["revoked_at"]
    assert session.scalars(select(AuditLog).where(AuditLog.action == "api_key.revoke", AuditLog.target_id == row.id)).one()


def test_an_expired_key_is_refused(client, session, org, admin_headers):
    expires = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    resp = client.post("/api/api-keys", json={"name": "temp", "role": "viewer", "expires_at": expires.isoformat()},
                       headers=admin_headers)
    body = resp.get_json()
    assert resp.status_code == 201 and body["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M:%S"))
    headers = {"X-API-Key": body["key"]}
    assert me(client, headers).status_code == 200
    row = session.get(ApiKey, body["id"])
    row.expires_at = utcnow() - timedelta(seconds=1)  # the API cannot change a key: edit the row,
    session.flush()
    forget_api_key(row.prefix)  # and drop the copy cached by the call above
    resp = me(client, headers)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "api_key_expired"


def test_a_key_of_one_organisation_gets_404_on_another_organisations_objects(client, session, org):
    other = f.make_organization(session)
    _, foreign = api_key_with_headers(session, other, "admin")
    user = f.make_user(session, organization_id=org.id, role="viewer")
    key, _ = api_key_with_headers(session, org, "viewer")
    assert client.get(f"/api/users/{user.id}", headers=foreign).status_code == 404
    assert client.patch(f"/api/users/{user.id}", json={"name": "x"}, headers=foreign).status_code == 404
    assert client.delete(f"/api/users/{user.id}", headers=foreign).status_code == 404
    assert client.delete(f"/api/api-keys/{key.id}", headers=foreign).status_code == 404
    assert session.get(ApiKey, key.id).revoked_at is None
    assert key.id not in str(client.get("/api/api-keys", headers=foreign).get_json())


def test_last_used_at_is_written_at_most_once_a_minute(client, session, org):
    forget_key_touches()
    row, headers = api_key_with_headers(session, org, "viewer")
    assert row.last_used_at is None
    assert me(client, headers).status_code == 200
    session.refresh(row)
    first = row.last_used_at
    assert first is not None
    for _ in range(3):
        me(client, headers)
    session.refresh(row)
    assert row.last_used_at == first  # throttled: no write per request


def test_a_cached_key_still_needs_the_whole_secret(client, session, org):
    _, headers = api_key_with_headers(session, org, "viewer")
    secret = headers["X-API-Key"]
    assert me(client, headers).status_code == 200  # now cached under its prefix
    forged = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    resp = me(client, {"X-API-Key": forged})
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "invalid_api_key"


def test_a_revoked_key_cannot_be_cached_again_by_a_late_reader(session, org, redis_conn):
    """A request that read the row just before the revocation committed must not put it back."""
    from app.security.auth import KEY_CACHE_PREFIX, _load_key

    row, _ = api_key_with_headers(session, org, "viewer")
    forget_api_key(row.prefix)  # what the revocation does after its commit
    assert _load_key(session, row.prefix)["id"] == row.id  # a late reader still sees the old row...
    assert redis_conn.get(KEY_CACHE_PREFIX + row.prefix) is None  # ...but cannot cache it


# ----------------------------------------------------------------------------- keys and their creator

def _key_of(client, headers, role):
    resp = client.post("/api/api-keys", json={"name": f"{role} key", "role": role}, headers=headers)
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"], {"X-API-Key": resp.get_json()["key"]}


def test_a_key_acts_with_at_most_its_creators_current_role(client, session, org, admin_headers):
    manager, manager_headers = user_with_headers(session, org, "manager")
    key_id, key = _key_of(client, manager_headers, "manager")
    assert me(client, key).get_json()["role"] == "manager"
    assert client.post("/api/webhooks", json={"url": "https://hooks.example.test/in", "events": ["*"]},
                       headers=key).status_code == 201

    resp = client.patch(f"/api/users/{manager.id}", json={"role": "viewer"}, headers=admin_headers)
    assert resp.status_code == 200
    who = me(client, key).get_json()
    assert who["role"] == "viewer" and who["api_key"]["role"] == "manager"
    assert who["api_key"]["created_by"] == manager.id
    refused = client.post("/api/webhooks", json={"url": "https://hooks.example.test/in2", "events": ["*"]}, headers=key)
    assert refused.status_code == 403, "the demoted creator's key lost the manager's rights at once"
    [listed] = [k for k in client.get("/api/api-keys", headers=admin_headers).get_json()["items"] if k["id"] == key_id]
    assert (listed["role"], listed["effective_role"]) == ("manager", "viewer")

    client.patch(f"/api/users/{manager.id}", json={"role": "manager"}, headers=admin_headers)
    assert me(client, key).get_json()["role"] == "manager", "promoted again: the key's own role is back"


def test_a_disabled_creators_keys_stop_working_until_enabled(client, session, org, admin_headers):
    manager, manager_headers = user_with_headers(session, org, "manager")
    key_id, key = _key_of(client, manager_headers, "viewer")
    assert me(client, key).status_code == 200
    client.patch(f"/api/users/{manager.id}", json={"status": "disabled"}, headers=admin_headers)
    resp = me(client, key)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "api_key_creator_inactive"
    [listed] = [k for k in client.get("/api/api-keys", headers=admin_headers).get_json()["items"] if k["id"] == key_id]
    assert listed["effective_role"] is None
    client.patch(f"/api/users/{manager.id}", json={"status": "active"}, headers=admin_headers)
    assert me(client, key).status_code == 200


def test_a_deleted_creators_keys_are_revoked_with_an_audit_entry(client, session, org, admin_headers):
    manager, manager_headers = user_with_headers(session, org, "manager")
    key_id, key = _key_of(client, manager_headers, "manager")
    platform_key, platform_headers = api_key_with_headers(session, org, "admin")
    assert me(client, key).status_code == 200
    assert client.delete(f"/api/users/{manager.id}", headers=admin_headers).status_code == 204
    resp = me(client, key)
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "api_key_revoked"
    assert session.get(ApiKey, key_id).revoked_at is not None
    [audit] = session.scalars(select(AuditLog).where(AuditLog.action == "api_key.revoke", AuditLog.target_id == key_id))
    assert audit.changes["reason"] == "creator_deleted" and audit.changes["created_by"] == manager.id
    assert me(client, platform_headers).get_json()["role"] == "admin", "keys made by the platform have no creator"


def test_a_key_made_by_a_key_answers_to_the_same_person(client, session, org, admin_headers):
    manager, manager_headers = user_with_headers(session, org, "manager")
    _, key = _key_of(client, manager_headers, "manager")
    child_id, child = _key_of(client, key, "manager")
    assert session.get(ApiKey, child_id).created_by == manager.id
    client.patch(f"/api/users/{manager.id}", json={"role": "agent"}, headers=admin_headers)
    assert me(client, child).get_json()["role"] == "agent"
    assert me(client, key).get_json()["client_ids"] == [], "an agent's key acts on the agent's clients only"
