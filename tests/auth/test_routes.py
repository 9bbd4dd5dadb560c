"""Sign-up, login (and its throttling), refresh token rotation, logout, me, and the access token checks."""
from __future__ import annotations

import time
from datetime import timedelta

import jwt
import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.auth.models import RefreshToken
from app.db import utcnow
from app.security import tokens
from app.team.models import Organization, User
from config import settings
from tests import factories as f
from tests.auth_helpers import PASSWORD, api_key_headers, bearer, make_user_with_password


def audit_rows(session, action, **where):
    stmt = select(AuditLog).where(AuditLog.action == action)
    for key, value in where.items():
        stmt = stmt.where(getattr(AuditLog, key) == value)
    return list(session.scalars(stmt.order_by(AuditLog.id)))


def login(client, email, password=PASSWORD, ip="127.0.0.1"):
    return client.post("/api/auth/login", json={"email": email, "password": password},
                       environ_base={"REMOTE_ADDR": ip})


def me(client, headers):
    return client.get("/api/auth/me", headers=headers)


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def error_code(resp):
    return resp.get_json()["error"]["code"]


# ----------------------------------------------------------------------------- register


REGISTRATION = {"organization": "Acme", "name": "Ada Admin", "email": "ada@acme.test", "password": "a long passphrase"}


def test_register_creates_the_organisation_and_its_admin_then_login_works(client, session):
    resp = client.post("/api/auth/register", json=REGISTRATION)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["status"] == "accepted" and "POST /api/auth/login" in resp.get_json()["message"]
    user = session.scalar(select(User).where(User.email == "ada@acme.test"))
    assert user.role == "admin" and user.name == "Ada Admin"
    assert user.password_hash.startswith("$2") and PASSWORD not in user.password_hash
    created = audit_rows(session, "organization.create", organization_id=user.organization_id)
    assert created and created[0].actor_id == user.id and created[0].actor_type == "user"

    body = login(client, "ada@acme.test", REGISTRATION["password"]).get_json()
    assert body["user"]["id"] == user.id and body["user"]["role"] == "admin"
    assert body["expires_in"] == settings.ACCESS_TOKEN_TTL and body["refresh_token"].startswith("rt_")
    who = me(client, auth(body["access_token"])).get_json()
    assert who["organization"]["name"] == "Acme" and who["organization"]["id"] == user.organization_id


def test_register_answers_a_taken_email_exactly_like_a_free_one(client, session, monkeypatch):
    """It used to answer 409 email_taken (40x faster): a free oracle of who has an account."""
    import bcrypt

    from app.security import passwords

    hashed = []
    real = bcrypt.hashpw
    monkeypatch.setattr(passwords.bcrypt, "hashpw", lambda pw, salt: hashed.append(salt[:7]) or real(pw, salt))
    f.make_user(session, email="ada@acme.test")
    taken = client.post("/api/auth/register", json={**REGISTRATION, "email": "Ada@ACME.test"})
    free = client.post("/api/auth/register", json={**REGISTRATION, "email": "grace@acme.test"})
    assert taken.status_code == free.status_code == 202
    assert taken.get_json() == free.get_json()
    assert {k: v for k, v in taken.headers if k not in ("X-Request-ID",)} == \
        {k: v for k, v in free.headers if k not in ("X-Request-ID",)}
    assert len(hashed) == 2 and hashed[0] == hashed[1], "both cost one bcrypt hash of the same cost"
    assert session.scalar(select(func.count()).select_from(User).where(func.lower(User.email) == "ada@acme.test")) == 1
    assert login(client, "ada@acme.test", REGISTRATION["password"]).status_code == 401, "the account is not touched"


def test_register_racing_another_for_the_same_address_answers_the_same(client, session, monkeypatch):
    from app.team import service as team

    f.make_user(session, email="ada@acme.test")
    monkeypatch.setattr(team, "email_taken", lambda *a, **k: False)  # checked just before the other committed
    resp = client.post("/api/auth/register", json=REGISTRATION)
    assert resp.status_code == 202 and resp.get_json()["status"] == "accepted"


def test_register_is_refused_when_signup_is_off(client, override_settings):
    override_settings(ALLOW_SIGNUP=False)
    resp = client.post("/api/auth/register", json=REGISTRATION)
    assert resp.status_code == 403
    assert error_code(resp) == "signup_disabled"


@pytest.mark.parametrize("password, problem", [
    ("short1", "at least 10"),
    ("ada@acme.test", "email"),
    ("1234567890", "most common"),
    ("qwertyuiop", "most common"),
    ("Password123", "most common"),
    ("password1234", "easy to guess"),
    ("adaadmin2024", "easy to guess"),
])
def test_register_enforces_the_password_policy(client, session, password, problem):
    resp = client.post("/api/auth/register", json={**REGISTRATION, "password": password})
    assert resp.status_code == 422
    assert problem in " ".join(resp.get_json()["error"]["details"]["password"])
    assert session.scalar(select(User).where(User.email == "ada@acme.test")) is None


def test_strong_passwords_pass_the_policy():
    from app.security.passwords import check_policy

    for password in ("correct horse battery staple", "a long passphrase", "Tr0ub4dor&3-xylophone", "zq8#Lm2@vK"):
        check_policy(password, "ada@acme.test", "Ada Admin")


@pytest.mark.parametrize("extra", [{"role": "viewer"}, {"organization_id": "org_x"}, {"status": "active"}])
def test_register_rejects_unknown_fields(client, extra):
    resp = client.post("/api/auth/register", json={**REGISTRATION, **extra})
    assert resp.status_code == 422
    assert set(extra) <= set(resp.get_json()["error"]["details"])


# ----------------------------------------------------------------------------- login


def test_login_returns_tokens_and_audits(client, session):
    user = make_user_with_password(session, role="manager")
    resp = client.post("/api/auth/login", json={"email": user.email.upper(), "password": PASSWORD},
                       headers={"User-Agent": "curl/8", "X-Request-ID": "req-login-1"})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["user"]["id"] == user.id and body["user"]["role"] == "manager"
    assert body["token_type"] == "Bearer"
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == user.id and claims["org"] == user.organization_id
    assert claims["iss"] == settings.JWT_ISSUER and claims["aud"] == settings.JWT_AUDIENCE
    assert claims["exp"] - claims["iat"] == settings.ACCESS_TOKEN_TTL and claims["jti"]
    assert me(client, auth(body["access_token"])).status_code == 200
    [row] = audit_rows(session, "auth.login", actor_id=user.id)
    assert (row.ip, row.user_agent, row.request_id) == ("127.0.0.1", "curl/8", "req-login-1")
    session.refresh(user)
    assert user.last_login_at is not None


def test_wrong_password_and_unknown_email_get_the_same_answer(client, session):
    user = make_user_with_password(session)
    wrong = login(client, user.email, "not the password!")
    unknown = login(client, "nobody@nowhere.test", "not the password!")
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert error_code(wrong) == "invalid_credentials"
    # the refusal is audited although the request rolled back
    [row] = audit_rows(session, "auth.login_failed", target_id=user.id)
    assert row.changes["reason"] == "bad_credentials" and row.organization_id == user.organization_id
    assert "password" not in row.changes


def test_unknown_email_costs_one_bcrypt_check_like_a_wrong_password(client, session, monkeypatch):
    """Same timing: both paths verify one bcrypt hash of the same cost (behaviour, not a clock)."""
    import bcrypt

    from app.security import passwords

    user = make_user_with_password(session)
    calls = []
    real = bcrypt.checkpw
    monkeypatch.setattr(passwords.bcrypt, "checkpw", lambda pw, h: calls.append(h[:7]) or real(pw, h))
    login(client, user.email, "wrong password here")
    login(client, "ghost@nowhere.test", "wrong password here")
    assert len(calls) == 2
    assert calls[0] == calls[1], "the dummy hash must have the same bcrypt cost as real ones"


def test_a_disabled_user_cannot_log_in(client, session):
    user = make_user_with_password(session, status="disabled")
    resp = login(client, user.email)
    assert resp.status_code == 401 and error_code(resp) == "invalid_credentials"
    assert audit_rows(session, "auth.login_failed", target_id=user.id)[0].changes["reason"] == "disabled"


def test_login_is_throttled_per_account_and_source_with_retry_after(client, session, override_settings):
    override_settings(LOGIN_FAILURES_PER_ACCOUNT="3 per 15 minutes")
    user = make_user_with_password(session)
    for _ in range(3):
        assert login(client, user.email, "wrong password!", ip="203.0.113.66").status_code == 401
    resp = login(client, user.email, ip="203.0.113.66")  # even the right password, until the window ends
    assert resp.status_code == 429
    assert error_code(resp) == "login_throttled"
    assert 0 < int(resp.headers["Retry-After"]) <= 900
    assert audit_rows(session, "auth.login_failed", target_id=user.id)[-1].changes["reason"] == "throttled"
    other = make_user_with_password(session)
    assert login(client, other.email, ip="203.0.113.66").status_code == 200  # other accounts are not affected


def test_someone_elses_failures_never_lock_the_owner_out(client, session, override_settings):
    """Five wrong passwords used to lock the real owner out for 15 minutes, from anywhere."""
    override_settings(LOGIN_FAILURES_PER_ACCOUNT="5 per 15 minutes")
    user = make_user_with_password(session)
    for attacker in ("203.0.113.66", "198.51.100.7", "2001:db8:66::1"):
        for _ in range(5):
            login(client, user.email, "wrong password!", ip=attacker)
        assert login(client, user.email, ip=attacker).status_code == 429, "each guessing source is stopped"
    resp = login(client, user.email, ip="192.0.2.10")  # the owner, from their own address
    assert resp.status_code == 200, resp.get_json()
    assert login(client, user.email, ip="203.0.113.66").status_code == 429, "the owner's login does not free them"


def test_an_unknown_email_is_throttled_like_a_known_one(client, override_settings):
    override_settings(LOGIN_FAILURES_PER_ACCOUNT="2 per 15 minutes")
    answers = [login(client, "ghost@nowhere.test", "wrong password!").status_code for _ in range(3)]
    assert answers == [401, 401, 429]
    assert login(client, "ghost@nowhere.test", "wrong password!", ip="192.0.2.99").status_code == 401


def test_login_is_throttled_per_ip(client, session, override_settings):
    override_settings(LOGIN_FAILURES_PER_IP="3 per 15 minutes")
    user = make_user_with_password(session)
    for n in range(3):
        assert login(client, f"guess{n}@acme.test", "wrong password!", ip="10.0.0.7").status_code == 401
    resp = login(client, user.email, ip="10.0.0.7")
    assert resp.status_code == 429 and "Retry-After" in resp.headers
    assert login(client, user.email, ip="10.0.0.8").status_code == 200


def test_a_successful_login_clears_the_account_failures(client, session, override_settings):
    override_settings(LOGIN_FAILURES_PER_ACCOUNT="2 per 15 minutes")
    user = make_user_with_password(session)
    assert login(client, user.email, "wrong password!").status_code == 401
    assert login(client, user.email).status_code == 200
    assert login(client, user.email, "wrong password!").status_code == 401
    assert login(client, user.email).status_code == 200


# ----------------------------------------------------------------------------- refresh and logout


def _signed_in(client, session, **overrides):
    user = make_user_with_password(session, **overrides)
    body = login(client, user.email).get_json()
    return user, body


def test_refresh_rotates_the_refresh_token(client, session):
    user, first = _signed_in(client, session)
    resp = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert resp.status_code == 200, resp.get_json()
    second = resp.get_json()
    assert second["refresh_token"] != first["refresh_token"] and second["access_token"] != first["access_token"]
    assert me(client, auth(second["access_token"])).status_code == 200
    rows = list(session.scalars(select(RefreshToken).where(RefreshToken.user_id == user.id).order_by(RefreshToken.id)))
    assert len(rows) == 2 and rows[0].family_id == rows[1].family_id
    assert rows[0].revoked_reason == "rotated" and rows[0].replaced_by == rows[1].id
    assert rows[1].revoked_at is None and rows[1].parent_id == rows[0].id
    assert tokens.hash_refresh_token(second["refresh_token"]) == rows[1].token_hash  # stored hashed only


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(client, session):
    user, first = _signed_in(client, session)
    second = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]}).get_json()
    other_session = login(client, user.email).get_json()  # another login: another family

    replay = client.post("/api/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert error_code(replay) == "refresh_token_reused"
    # the legitimate successor is revoked too, and the family's access tokens are refused
    again = client.post("/api/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert again.status_code == 401 and error_code(again) == "refresh_token_revoked"
    assert error_code(me(client, auth(second["access_token"]))) == "token_revoked"
    assert error_code(me(client, auth(first["access_token"]))) == "token_revoked"
    family = session.scalars(select(RefreshToken).where(
        RefreshToken.token_hash == tokens.hash_refresh_token(second["refresh_token"]))).one().family_id
    reasons = {r.revoked_reason for r in session.scalars(select(RefreshToken).where(RefreshToken.family_id == family))}
    assert reasons == {"rotated", "reuse_detected"}
    assert audit_rows(session, "auth.refresh_reuse", actor_id=user.id)
    # another login of the same user is untouched
    assert me(client, auth(other_session["access_token"])).status_code == 200
    assert client.post("/api/auth/refresh", json={"refresh_token": other_session["refresh_token"]}).status_code == 200


def test_an_expired_refresh_token_is_refused(client, session):
    _, body = _signed_in(client, session)
    row = session.scalars(select(RefreshToken).where(
        RefreshToken.token_hash == tokens.hash_refresh_token(body["refresh_token"]))).one()
    row.expires_at = utcnow() - timedelta(seconds=1)
    session.flush()
    resp = client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert resp.status_code == 401 and error_code(resp) == "refresh_token_expired"


def test_refresh_tokens_expired_over_a_week_are_purged_hourly(session):
    import jobs  # noqa: F401  (declares the periodic jobs)
    from app.auth.sessions import purge_expired_refresh_tokens
    from jobs.periodic import PERIODIC

    user = f.make_user(session)
    live = f.make_refresh_token(session, user_id=user.id)
    recent = f.make_refresh_token(session, user_id=user.id, expires_at=utcnow() - timedelta(days=6))
    old = f.make_refresh_token(session, user_id=user.id, expires_at=utcnow() - timedelta(days=8),
                               replaced_by=recent.id)
    recent.parent_id = old.id
    session.flush()
    assert purge_expired_refresh_tokens(session) == 1
    session.expire_all()
    left = set(session.scalars(select(RefreshToken.id).where(RefreshToken.user_id == user.id)))
    assert left == {live.id, recent.id}
    assert session.get(RefreshToken, recent.id).parent_id is None
    assert ("auth.purge_expired_tokens", 3600) in [(p.actor_name, p.every_s) for p in PERIODIC]


def test_an_unknown_refresh_token_is_refused(client):
    resp = client.post("/api/auth/refresh", json={"refresh_token": "rt_made-up"})
    assert resp.status_code == 401 and error_code(resp) == "invalid_refresh_token"


def test_refresh_is_refused_for_a_disabled_user(client, session):
    user, body = _signed_in(client, session)
    user.status = "disabled"
    session.flush()
    resp = client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert resp.status_code == 401


def test_logout_revokes_the_access_token_and_the_session(client, session):
    user, body = _signed_in(client, session)
    resp = client.post("/api/auth/logout", json={}, headers=auth(body["access_token"]))
    assert resp.status_code == 204
    revoked = me(client, auth(body["access_token"]))
    assert revoked.status_code == 401 and error_code(revoked) == "token_revoked"
    again = client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]})
    assert again.status_code == 401 and error_code(again) == "refresh_token_revoked"
    assert audit_rows(session, "auth.logout", actor_id=user.id)


def test_logout_with_the_refresh_token_alone(client, session):
    _, body = _signed_in(client, session)
    assert client.post("/api/auth/logout", json={"refresh_token": body["refresh_token"]}).status_code == 204
    assert client.post("/api/auth/refresh", json={"refresh_token": body["refresh_token"]}).status_code == 401
    assert error_code(me(client, auth(body["access_token"]))) == "token_revoked"


def test_logout_without_credentials_is_401(client):
    assert client.post("/api/auth/logout", json={}).status_code == 401


# ----------------------------------------------------------------------------- access tokens


def _claims(user, **changes):
    now = int(time.time())
    claims = {"iss": settings.JWT_ISSUER, "aud": settings.JWT_AUDIENCE, "sub": user.id, "org": user.organization_id,
              "role": user.role, "iat": now, "nbf": now, "exp": now + 600, "jti": "j" * 22}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(claims, key=None, alg="HS256"):
    return jwt.encode(claims, key or tokens.secret_key(), algorithm=alg)


def test_a_well_formed_token_is_accepted(client, session):
    user = f.make_user(session)
    assert me(client, auth(_sign(_claims(user)))).status_code == 200


@pytest.mark.parametrize("case, code", [
    ("expired", "token_expired"),
    ("wrong_audience", "invalid_token"),
    ("wrong_issuer", "invalid_token"),
    ("other_key", "invalid_token"),
    ("tampered", "invalid_token"),
    ("alg_none", "invalid_token"),
    ("no_jti", "invalid_token"),
    ("no_exp", "invalid_token"),
    ("other_org", "invalid_token"),
    ("garbage", "invalid_token"),
])
def test_bad_access_tokens_are_refused(client, session, case, code):
    user = f.make_user(session)
    now = int(time.time())
    token = {
        "expired": lambda: _sign(_claims(user, iat=now - 1000, nbf=now - 1000, exp=now - 60)),
        "wrong_audience": lambda: _sign(_claims(user, aud="another-api")),
        "wrong_issuer": lambda: _sign(_claims(user, iss="someone-else")),
        "other_key": lambda: _sign(_claims(user), key="x" * 48),
        "tampered": lambda: _tamper(_sign(_claims(user, role="viewer"))),
        "alg_none": lambda: jwt.encode(_claims(user), None, algorithm="none"),
        "no_jti": lambda: _sign(_claims(user, jti=None)),
        "no_exp": lambda: _sign(_claims(user, exp=None)),
        "other_org": lambda: _sign(_claims(user, org=f.make_organization(session).id)),
        "garbage": lambda: "not.a.jwt",
    }[case]()
    resp = me(client, auth(token))
    assert resp.status_code == 401
    assert error_code(resp) == code


def _tamper(token: str) -> str:
    """Change the payload (role viewer -> admin) and keep the original signature."""
    import base64
    import json

    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_a_token_stops_working_when_its_user_is_disabled_or_deleted(client, session):
    user = f.make_user(session)
    headers = bearer(user)
    assert me(client, headers).status_code == 200
    user.status = "disabled"
    session.flush()
    assert me(client, headers).status_code == 401
    user.status, user.deleted_at = "active", utcnow()
    session.flush()
    assert me(client, headers).status_code == 401


def test_a_suspended_organisation_is_locked_out(client, session):
    org = f.make_organization(session)
    user = f.make_user(session, organization_id=org.id)
    headers, key_headers = bearer(user), api_key_headers(session, org, "admin")
    session.get(Organization, org.id).status = "suspended"
    session.flush()
    assert me(client, headers).status_code == 401
    assert me(client, key_headers).status_code == 401


def test_the_role_is_read_from_the_user_not_the_token(client, session):
    """A demoted user's old token carries the old role in its claims; the current one applies."""
    user = f.make_user(session, role="admin")
    headers = bearer(user)
    user.role = "viewer"
    session.flush()
    assert me(client, headers).get_json()["role"] == "viewer"
    assert client.get("/api/users", headers=headers).status_code == 403


def test_no_credentials_is_401_with_www_authenticate(client):
    resp = client.get("/api/auth/me")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def test_permission_is_checked_before_the_body_is_validated(client, session):
    """A caller without the right learns nothing about the body: 401/403 come before 422."""
    viewer = f.make_user(session, role="viewer")
    assert client.post("/api/users", json={"bogus": 1}).status_code == 401
    assert client.post("/api/users", json={"bogus": 1}, headers=bearer(viewer)).status_code == 403


# ----------------------------------------------------------------------------- me and password


def test_me_describes_a_user(client, session):
    org = f.make_organization(session, name="Globex")
    client_row = f.make_client(session, organization_id=org.id)
    agent = f.make_user(session, organization_id=org.id, role="agent", name="Al", email="al@globex.test")
    f.make_user_client(session, user_id=agent.id, client_id=client_row.id)
    body = me(client, bearer(agent)).get_json()
    assert body["kind"] == "user" and body["id"] == agent.id and body["email"] == "al@globex.test"
    assert body["role"] == "agent" and body["organization"] == {"id": org.id, "name": "Globex"}
    assert body["client_ids"] == [client_row.id]
    assert "messages:send" in body["permissions"] and "users:write" not in body["permissions"]


def test_me_describes_an_api_key(client, session):
    org = f.make_organization(session, name="Initech")
    body = me(client, api_key_headers(session, org, "viewer", name="reporting")).get_json()
    assert body["kind"] == "api_key" and body["id"].startswith("key_") and body["name"] == "reporting"
    assert body["role"] == "viewer" and body["organization"]["name"] == "Initech"
    assert body["client_ids"] is None and body["api_key"]["prefix"].startswith("sk_")


def test_a_user_changes_their_own_password(client, session):
    user, body = _signed_in(client, session, role="viewer")
    _, other = _signed_in_again(client, user)
    resp = client.post("/api/auth/password", headers=auth(body["access_token"]),
                       json={"current_password": PASSWORD, "new_password": "another long secret"})
    assert resp.status_code == 204
    assert login(client, user.email).status_code == 401
    assert login(client, user.email, "another long secret").status_code == 200
    # this session goes on; the other one ended
    assert me(client, auth(body["access_token"])).status_code == 200
    assert client.post("/api/auth/refresh", json={"refresh_token": other["refresh_token"]}).status_code == 401
    assert audit_rows(session, "auth.password_change", actor_id=user.id)


def _signed_in_again(client, user):
    return user, login(client, user.email).get_json()


def test_password_change_needs_the_current_password_and_the_policy(client, session):
    user = make_user_with_password(session)
    headers = bearer(user)
    wrong = client.post("/api/auth/password", headers=headers,
                        json={"current_password": "not it at all", "new_password": "another long secret"})
    assert wrong.status_code == 422 and "current_password" in wrong.get_json()["error"]["details"]
    weak = client.post("/api/auth/password", headers=headers,
                       json={"current_password": PASSWORD, "new_password": "short"})
    assert weak.status_code == 422 and "password" in weak.get_json()["error"]["details"]
