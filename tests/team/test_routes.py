"""Users: CRUD, the role ceiling, the last admin, client assignments, and their audit rows."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.auth.models import RefreshToken
from app.team.models import User, UserClient
from tests import factories as f
from tests.auth_helpers import PASSWORD, api_key_headers, bearer, make_user_with_password, user_with_headers


@pytest.fixture
def admin_user(session, org):
    """An admin user of ``org`` (``bearer(admin_user)`` for its headers)."""
    return f.make_user(session, organization_id=org.id, role="admin")


def audit(session, action, target_id):
    return list(session.scalars(select(AuditLog).where(AuditLog.action == action, AuditLog.target_id == target_id)))


NEW_USER = {"email": "new.person@example.test", "name": "New Person", "password": "a long passphrase", "role": "agent"}


def test_create_get_list_update_delete_a_user(client, session, admin_user):
    headers = bearer(admin_user)
    resp = client.post("/api/users", json=NEW_USER, headers=headers)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert created["email"] == NEW_USER["email"] and created["role"] == "agent" and created["status"] == "active"
    assert created["client_ids"] == [] and "password" not in created
    user_id = created["id"]
    assert audit(session, "user.create", user_id)[0].changes == {
        "email": NEW_USER["email"], "name": "New Person", "role": "agent"}

    assert client.get(f"/api/users/{user_id}", headers=headers).get_json()["name"] == "New Person"
    listed = client.get("/api/users", headers=headers).get_json()
    assert [u["id"] for u in listed["items"]] == [user_id, admin_user.id]  # newest first
    assert client.get("/api/users?role=agent", headers=headers).get_json()["items"][0]["id"] == user_id

    resp = client.patch(f"/api/users/{user_id}", json={"name": "Renamed", "role": "viewer"}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["role"] == "viewer" and resp.get_json()["client_ids"] is None
    [update] = audit(session, "user.update", user_id)
    assert update.changes == {"name": {"from": "New Person", "to": "Renamed"}, "role": {"from": "agent", "to": "viewer"}}
    assert audit(session, "user.role_change", user_id)[0].changes == {"role": {"from": "agent", "to": "viewer"}}

    assert client.delete(f"/api/users/{user_id}", headers=headers).status_code == 204
    assert client.get(f"/api/users/{user_id}", headers=headers).status_code == 404
    assert audit(session, "user.delete", user_id)
    assert session.get(User, user_id).deleted_at is not None  # kept for the audit trail


def test_the_new_user_can_log_in(client, session, admin_user):
    client.post("/api/users", json=NEW_USER, headers=bearer(admin_user))
    resp = client.post("/api/auth/login", json={"email": NEW_USER["email"], "password": NEW_USER["password"]})
    assert resp.status_code == 200 and resp.get_json()["user"]["role"] == "agent"


def test_the_password_policy_applies_and_is_never_returned_or_audited(client, session, admin_user):
    weak = client.post("/api/users", json={**NEW_USER, "password": "short"}, headers=bearer(admin_user))
    assert weak.status_code == 422 and "password" in weak.get_json()["error"]["details"]
    user = f.make_user(session, organization_id=admin_user.organization_id, role="viewer")
    resp = client.patch(f"/api/users/{user.id}", json={"password": "brand new passphrase"}, headers=bearer(admin_user))
    assert resp.status_code == 200 and "password" not in resp.get_json()
    [row] = audit(session, "user.update", user.id)
    assert row.changes == {"password_changed": True}
    assert "brand new" not in str(row.changes)


@pytest.mark.parametrize("field, value", [("organization_id", "org_other"), ("password_hash", "x"),
                                          ("created_at", "2020-01-01T00:00:00Z"), ("id", "usr_x")])
def test_unknown_fields_are_rejected(client, session, admin_user, field, value):
    headers = bearer(admin_user)
    assert client.post("/api/users", json={**NEW_USER, field: value}, headers=headers).status_code == 422
    resp = client.patch(f"/api/users/{admin_user.id}", json={field: value}, headers=headers)
    assert resp.status_code == 422 and field in resp.get_json()["error"]["details"]


def test_a_duplicate_email_is_409(client, session, admin_user):
    resp = client.post("/api/users", json={**NEW_USER, "email": admin_user.email.upper()}, headers=bearer(admin_user))
    assert resp.status_code == 409


@pytest.mark.parametrize("role, may_grant", [
    ("manager", {"manager", "agent", "viewer"}),
    ("agent", set()),
])
def test_nobody_grants_a_role_above_their_own(client, session, org, role, may_grant):
    creator, headers = user_with_headers(session, org, role)
    for target in ("admin", "manager", "agent", "viewer"):
        resp = client.post("/api/users", headers=headers,
                           json={**NEW_USER, "email": f"{role}-{target}@example.test", "role": target})
        assert (resp.status_code == 201) == (target in may_grant), (target, resp.get_json())
        if target not in may_grant:
            assert resp.status_code == 403


def test_a_manager_cannot_promote_to_admin_nor_touch_an_admin(client, session, org, admin_user):
    _, headers = user_with_headers(session, org, "manager")
    viewer = f.make_user(session, organization_id=org.id, role="viewer")
    resp = client.patch(f"/api/users/{viewer.id}", json={"role": "admin"}, headers=headers)
    assert resp.status_code == 403 and resp.get_json()["error"]["code"] == "role_above_own"
    assert client.patch(f"/api/users/{admin_user.id}", json={"name": "x"}, headers=headers).status_code == 403
    assert client.delete(f"/api/users/{admin_user.id}", headers=headers).status_code == 403
    assert client.patch(f"/api/users/{viewer.id}", json={"role": "manager"}, headers=headers).status_code == 200


def test_nobody_changes_their_own_role_or_status(client, session, org):
    manager, headers = user_with_headers(session, org, "manager")
    for change in ({"role": "viewer"}, {"status": "disabled"}):
        resp = client.patch(f"/api/users/{manager.id}", json=change, headers=headers)
        assert resp.status_code == 422 and set(change) <= set(resp.get_json()["error"]["details"])
    assert client.patch(f"/api/users/{manager.id}", json={"name": "Me"}, headers=headers).status_code == 200


def test_the_last_admin_cannot_be_demoted_disabled_or_removed(client, session, org, admin_user):
    f.make_user(session, organization_id=org.id, role="admin", status="disabled")  # does not count
    key = api_key_headers(session, org, "admin")
    for resp in (client.delete(f"/api/users/{admin_user.id}", headers=key),
                 client.patch(f"/api/users/{admin_user.id}", json={"role": "manager"}, headers=key),
                 client.patch(f"/api/users/{admin_user.id}", json={"status": "disabled"}, headers=key),
                 client.delete(f"/api/users/{admin_user.id}", headers=bearer(admin_user))):
        assert resp.status_code == 409, resp.get_json()
        assert resp.get_json()["error"]["code"] == "last_admin"
    assert session.get(User, admin_user.id).role == "admin" and session.get(User, admin_user.id).deleted_at is None

    second = f.make_user(session, organization_id=org.id, role="admin")
    assert client.patch(f"/api/users/{admin_user.id}", json={"role": "manager"}, headers=key).status_code == 200
    resp = client.delete(f"/api/users/{second.id}", headers=key)  # now `second` is the last one
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "last_admin"


def test_disabling_or_deleting_a_user_ends_their_sessions(client, session, org, admin_user):
    user = make_user_with_password(session, organization_id=org.id, role="viewer")
    tokens = client.post("/api/auth/login", json={"email": user.email, "password": PASSWORD}).get_json()
    resp = client.patch(f"/api/users/{user.id}", json={"status": "disabled"}, headers=bearer(admin_user))
    assert resp.status_code == 200
    assert client.get("/api/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).status_code == 401
    assert client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).status_code == 401
    reasons = set(session.scalars(select(RefreshToken.revoked_reason).where(RefreshToken.user_id == user.id)))
    assert reasons == {"user_disabled"}


def test_assigning_clients_to_an_agent(client, session, org, admin_user):
    c1, c2, c3 = (f.make_client(session, organization_id=org.id) for _ in range(3))
    agent = f.make_user(session, organization_id=org.id, role="agent")
    headers = bearer(admin_user)
    resp = client.put(f"/api/users/{agent.id}/clients", json={"client_ids": [c1.id, c2.id, c1.id]}, headers=headers)
    assert resp.status_code == 200 and resp.get_json()["client_ids"] == sorted([c1.id, c2.id])
    resp = client.put(f"/api/users/{agent.id}/clients", json={"client_ids": [c3.id]}, headers=headers)
    assert resp.get_json()["client_ids"] == [c3.id]
    assert set(session.scalars(select(UserClient.client_id).where(UserClient.user_id == agent.id))) == {c3.id}
    # the agent's principal follows at once
    assert client.get("/api/auth/me", headers=bearer(agent)).get_json()["client_ids"] == [c3.id]
    rows = audit(session, "user.assign_clients", agent.id)
    assert rows[-1].changes == {"client_ids": {"from": sorted([c1.id, c2.id]), "to": [c3.id]}}
    assert client.put(f"/api/users/{agent.id}/clients", json={"client_ids": []}, headers=headers).get_json()["client_ids"] == []


def test_clients_of_another_organisation_cannot_be_assigned(client, session, org, admin_user):
    agent = f.make_user(session, organization_id=org.id, role="agent")
    foreign = f.make_client(session)
    resp = client.put(f"/api/users/{agent.id}/clients", json={"client_ids": [foreign.id]}, headers=bearer(admin_user))
    assert resp.status_code == 404 and resp.get_json()["error"]["details"]["client_ids"] == [foreign.id]
    deleted = f.make_client(session, organization_id=org.id, deleted_at=f.utcnow())
    resp = client.put(f"/api/users/{agent.id}/clients", json={"client_ids": [deleted.id]}, headers=bearer(admin_user))
    assert resp.status_code == 404


def test_only_agents_are_assigned_clients(client, session, org, admin_user):
    viewer = f.make_user(session, organization_id=org.id, role="viewer")
    c = f.make_client(session, organization_id=org.id)
    resp = client.put(f"/api/users/{viewer.id}/clients", json={"client_ids": [c.id]}, headers=bearer(admin_user))
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "not_an_agent"


def test_an_agent_promoted_loses_the_assignment_rows(client, session, org, admin_user):
    c = f.make_client(session, organization_id=org.id)
    agent = f.make_user(session, organization_id=org.id, role="agent")
    f.make_user_client(session, user_id=agent.id, client_id=c.id)
    resp = client.patch(f"/api/users/{agent.id}", json={"role": "manager"}, headers=bearer(admin_user))
    assert resp.status_code == 200 and resp.get_json()["client_ids"] is None
    assert not list(session.scalars(select(UserClient).where(UserClient.user_id == agent.id)))


def test_users_of_another_organisation_are_invisible(client, session, admin_user):
    stranger = f.make_user(session)
    headers = bearer(admin_user)
    assert stranger.id not in [u["id"] for u in client.get("/api/users", headers=headers).get_json()["items"]]
    for resp in (client.get(f"/api/users/{stranger.id}", headers=headers),
                 client.patch(f"/api/users/{stranger.id}", json={"name": "x"}, headers=headers),
                 client.delete(f"/api/users/{stranger.id}", headers=headers),
                 client.put(f"/api/users/{stranger.id}/clients", json={"client_ids": []}, headers=headers)):
        assert resp.status_code == 404
    assert session.get(User, stranger.id).deleted_at is None


def test_users_are_paginated(client, session, org, admin_user):
    for _ in range(4):
        f.make_user(session, organization_id=org.id, role="viewer")
    headers = bearer(admin_user)
    first = client.get("/api/users?limit=2", headers=headers).get_json()
    second = client.get(f"/api/users?limit=2&cursor={first['next_cursor']}", headers=headers).get_json()
    third = client.get(f"/api/users?limit=2&cursor={second['next_cursor']}", headers=headers).get_json()
    ids = [u["id"] for page in (first, second, third) for u in page["items"]]
    assert len(ids) == 5 == len(set(ids)) and third["next_cursor"] is None


def test_two_admins_demoting_each_other_at_once_leave_one_admin(committed, committed_app):
    """Both requests really race (committed data, two threads); the admins are locked in order, so
    one wins and the other is refused, and the organisation keeps an admin."""
    import threading

    org = f.make_organization(committed)
    a = f.make_user(committed, organization_id=org.id, role="admin")
    b = f.make_user(committed, organization_id=org.id, role="admin")
    committed.commit()
    barrier, results = threading.Barrier(2), {}

    def demote(actor, target):
        client = committed_app.test_client()
        headers = bearer(actor)
        barrier.wait()
        results[actor.id] = client.patch(f"/api/users/{target.id}", json={"role": "manager"}, headers=headers).status_code

    threads = [threading.Thread(target=demote, args=pair) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    statuses = sorted(results.values())
    assert statuses[0] == 200 and statuses[1] in (403, 409), results
    committed.expire_all()
    admins = committed.scalars(select(User).where(User.organization_id == org.id, User.role == "admin")).all()
    assert len(admins) == 1
