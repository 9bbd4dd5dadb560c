"""Sign-up, login, refresh token rotation, logout, ``me`` and password change.

Sessions: a login starts a refresh token *family*; each refresh revokes the token it used
(``rotated``) and issues its successor in the same family. Presenting a rotated token again means
it was copied: the whole family is revoked (``reuse_detected``) and the family's access tokens are
refused from then on (their ``sid`` claim is the family id).

Login throttling counts attempts in Redis per email *and source address* and per source address
before the password is checked (so parallel guesses cannot slip past the count); a successful
login takes its attempt back. Beyond a limit the answer is 429 with ``Retry-After`` until the
window ends. Failures are never counted against the account alone: someone guessing a password
from their address locks out only themselves, and the owner signing in from another address gets
in. Guessing from many addresses is bounded by the per-address limits, bcrypt's cost and the
password policy (common passwords are refused). An unknown email, a wrong password and a disabled
account get the same 401 after the same bcrypt work.
"""
from __future__ import annotations

import hashlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.audit.service import record
from app.auth.models import RefreshToken
from app.auth.sessions import revoke_family, revoke_user_sessions
from app.db import new_id, utcnow
from app.errors import BadRequest, Forbidden, RateLimited, Unauthorized, ValidationError
from app.security.auth import after_refusal, deny_access_token, deny_session
from app.security.passwords import check_policy, hash_password, verify_password
from app.security.permissions import MATRIX
from app.security.principal import Principal
from app.security.tokens import hash_refresh_token, issue_access_token, new_refresh_token
from app.team import service as team
from app.team.models import Organization, User
from config import settings

log = logging.getLogger(__name__)

THROTTLE_PREFIX = "wa:login:attempts:"


# ----------------------------------------------------------------------------- request context


def _client() -> dict:
    """The caller's IP and user agent, when serving a request."""
    from flask import has_request_context, request

    if not has_request_context():
        return {"ip": None, "user_agent": None}
    return {"ip": request.remote_addr, "user_agent": (request.user_agent.string or "")[:500] or None}


# ----------------------------------------------------------------------------- sessions


def _start_session(session: Session, user: User, *, family_id: str | None = None,
                   parent: RefreshToken | None = None) -> dict:
    """A new refresh token (a new family unless ``family_id``) and an access token bound to it."""
    refresh = new_refresh_token()
    row = RefreshToken(organization_id=user.organization_id, user_id=user.id, token_hash=hash_refresh_token(refresh),
                       family_id=family_id or new_id("rtf"), parent_id=parent.id if parent else None,
                       expires_at=utcnow() + timedelta(seconds=settings.REFRESH_TOKEN_TTL), **_client())
    session.add(row)
    session.flush()
    access, ttl = issue_access_token(user.id, user.organization_id, user.role, session_id=row.family_id)
    return {"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": ttl,
            "refresh_expires_in": settings.REFRESH_TOKEN_TTL, "_row": row}


def _tokens_response(session: Session, user: User, tokens: dict) -> dict:
    tokens.pop("_row", None)
    return {**tokens, "user": team.with_client_ids(session, [user])[0]}


# ----------------------------------------------------------------------------- login throttling


def _throttle_keys(email: str, ip: str | None) -> list[tuple[str, int, int]]:
    """The two counters of an attempt: this email from this source, and this source."""
    from app.security.protection import client_ip_bucket

    source = client_ip_bucket(ip)
    account = hashlib.sha256(f"{email.strip().lower()}|{source}".encode()).hexdigest()[:40]
    return [(f"{THROTTLE_PREFIX}acct-src:{account}", *settings.LOGIN_FAILURES_PER_ACCOUNT),
            (f"{THROTTLE_PREFIX}ip:{source}", *settings.LOGIN_FAILURES_PER_IP)]


def _count_attempt(email: str, ip: str | None) -> list[tuple[str, int, int]]:
    """Count this attempt against the email and the IP; 429 when either is beyond its limit.
    Returns the counted keys so that a successful login can take its attempt back."""
    import redis

    from app.kv import redis_client

    keys = _throttle_keys(email, ip)
    try:
        pipe = redis_client().pipeline(transaction=True)
        for key, _, window in keys:
            pipe.set(key, 0, nx=True, ex=window)  # the window opens at the first attempt
            pipe.incr(key)
            pipe.ttl(key)
        replies = pipe.execute()
    except redis.exceptions.RedisError as exc:
        log.warning("login throttling skipped, Redis unavailable: %s", exc.__class__.__name__)
        return []
    for i, (_key, limit, window) in enumerate(keys):
        count, ttl = replies[3 * i + 1], replies[3 * i + 2]
        if count > limit:
            retry = max(1, ttl if ttl and ttl > 0 else window)
            raise RateLimited(f"Too many login attempts; retry in {retry} s", code="login_throttled",
                              details={"retry_after": retry}, headers={"Retry-After": str(retry)})
    return keys


def _forgive_attempt(keys: list[tuple[str, int, int]]) -> None:
    """After a successful login: forget this source's failures on the account, take this attempt off
    the source's count."""
    if not keys:
        return
    from app.kv import redis_client

    try:
        pipe = redis_client().pipeline(transaction=False)
        pipe.delete(keys[0][0])
        pipe.decr(keys[1][0])
        pipe.execute()
    except Exception:
        log.warning("could not reset login throttling", exc_info=True)


def _audit_refused_login(user: User | None, email: str, reason: str) -> None:
    """A refused login leaves an audit row although the request rolls back. An unknown email has
    no organisation to hold the row: it is logged instead."""
    if user is None:
        log.info("login refused for an unknown email", extra={"reason": reason})
        return
    org_id, user_id = user.organization_id, user.id

    def write(session: Session) -> None:
        record(session, None, "auth.login_failed", organization_id=org_id, actor_type="user", actor_id=user_id,
               target_type="user", target_id=user_id, changes={"email": email, "reason": reason})

    after_refusal(write)


# ----------------------------------------------------------------------------- the endpoints


SIGNUP_ACCEPTED = ("If this email address was not registered yet, the organisation and its admin account exist "
                   "now: sign in with POST /api/auth/login. If it was, sign in with that account's password.")


def register(session: Session, *, organization: str, name: str, email: str, password: str) -> dict:
    """Self-service sign-up: a new organisation and its first admin; then sign in (``login``).

    The answer and its cost are the same whether or not the email is taken (one bcrypt hash,
    ``202 accepted``), so sign-up cannot be used to learn who has an account. Every check that
    does not depend on existing accounts (the names, the password policy) is a 422 as usual."""
    if not settings.ALLOW_SIGNUP:
        raise Forbidden("Sign-up is closed on this server; ask an administrator for an account",
                        code="signup_disabled")
    from sqlalchemy.exc import IntegrityError

    org_name = team.checked_organization_name(organization)
    address = team.normalise_email(email)
    check_policy(password, address, name)
    password_hash = hash_password(password)  # the same work whether or not the address is free
    if team.email_taken(session, address):
        log.info("sign-up for an address that is registered already (answered as any other)")
    else:
        try:
            with session.begin_nested():
                team.create_organization(session, name=org_name, admin_email=address,
                                         admin_password_hash=password_hash, admin_name=name, signup=True)
        except IntegrityError:  # the same address signed up at the same moment: the same answer
            log.info("sign-up raced another one for the same address")
    return {"status": "accepted", "message": SIGNUP_ACCEPTED}


def login(session: Session, *, email: str, password: str) -> dict:
    ip = _client()["ip"]
    user = team.find_user_by_email(session, email)
    try:
        counted = _count_attempt(email, ip)
    except RateLimited:
        _audit_refused_login(user, email, "throttled")
        raise
    reason = None if verify_password(password, user.password_hash if user else None) else "bad_credentials"
    if reason is None:
        org = session.get(Organization, user.organization_id)
        if user.status != "active" or org is None or org.status != "active":
            reason = "disabled"
    if reason is not None:
        _audit_refused_login(user, email, reason)
        raise Unauthorized("Wrong email or password", code="invalid_credentials")
    _forgive_attempt(counted)
    user.last_login_at = utcnow()
    tokens = _start_session(session, user)
    record(session, _user_principal(user), "auth.login", target_type="user", target_id=user.id,
           changes={"session": tokens["_row"].family_id})
    return _tokens_response(session, user, tokens)


def refresh(session: Session, *, refresh_token: str) -> dict:
    """Exchange a refresh token for a new pair; the presented token is revoked (rotated)."""
    row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(refresh_token))
                          .with_for_update()).first()
    if row is None:
        raise Unauthorized("Invalid refresh token", code="invalid_refresh_token")
    if row.revoked_at is not None:
        if row.revoked_reason == "rotated":
            _on_reuse(row)
            raise Unauthorized("This refresh token was already used; every session of this login is now "
                               "revoked: sign in again", code="refresh_token_reused")
        raise Unauthorized("Refresh token revoked", code="refresh_token_revoked")
    if row.expires_at <= utcnow():
        raise Unauthorized("Refresh token expired", code="refresh_token_expired")
    user = session.get(User, row.user_id)
    org = session.get(Organization, row.organization_id)
    if user is None or user.deleted_at is not None or user.status != "active" or org is None or org.status != "active":
        raise Unauthorized("Invalid refresh token", code="invalid_refresh_token")
    tokens = _start_session(session, user, family_id=row.family_id, parent=row)
    row.revoked_at = utcnow()
    row.revoked_reason = "rotated"
    row.replaced_by = tokens["_row"].id
    session.flush()
    return _tokens_response(session, user, tokens)


def _on_reuse(row: RefreshToken) -> None:
    """A rotated token came back: someone holds a copy. Revoke the family, durably."""
    family_id, org_id, user_id = row.family_id, row.organization_id, row.user_id
    deny_session(family_id)  # refuse the family's access tokens at once, whatever happens next

    def write(session: Session) -> None:
        revoked = revoke_family(session, family_id, "reuse_detected")
        record(session, None, "auth.refresh_reuse", organization_id=org_id, actor_type="user", actor_id=user_id,
               target_type="user", target_id=user_id, changes={"session": family_id, "revoked_tokens": revoked})

    after_refusal(write)


def logout(session: Session, principal: Principal | None, *, refresh_token: str | None = None) -> None:
    """End a session: the refresh token's family (the one given, or the one the access token was
    issued for) is revoked, and the presented access token is refused from now on."""
    family_ids = set()
    user_id = org_id = None
    if principal is not None and principal.kind == "user":
        deny_access_token(principal.extra["jti"], principal.extra["exp"])
        user_id, org_id = principal.id, principal.organization_id
        if principal.extra.get("sid"):
            family_ids.add(principal.extra["sid"])
    if refresh_token:
        row = session.scalars(select(RefreshToken).where(
            RefreshToken.token_hash == hash_refresh_token(refresh_token))).first()
        if row is not None:
            family_ids.add(row.family_id)
            user_id, org_id = user_id or row.user_id, org_id or row.organization_id
    if user_id is None:
        if principal is not None:
            raise BadRequest("API keys have no session to log out of; revoke the key instead", code="not_a_session")
        raise Unauthorized("Give the access token (Authorization: Bearer) or the refresh token to log out",
                           code="unauthorized")
    for family_id in family_ids:
        revoke_family(session, family_id, "logout")
    record(session, None, "auth.logout", organization_id=org_id, actor_type="user", actor_id=user_id,
           target_type="user", target_id=user_id, changes={"sessions": sorted(family_ids)})


def me(session: Session, principal: Principal) -> dict:
    """Who is calling: the user or key, its role, organisation and permissions."""
    org_name = principal.extra.get("organization_name")
    if org_name is None:
        org = session.get(Organization, principal.organization_id)
        org_name = org.name if org else None
    body: dict[str, Any] = {
        "kind": principal.kind, "id": principal.id, "name": principal.name, "email": principal.email,
        "role": principal.role, "organization": {"id": principal.organization_id, "name": org_name},
        "client_ids": sorted(principal.client_ids) if principal.client_ids is not None else None,
        "permissions": sorted(p for p, roles in MATRIX.items() if principal.role in roles)}
    if principal.kind == "api_key":
        body["api_key"] = {k: principal.extra.get(k) for k in ("prefix", "expires_at", "created_at", "created_by")}
        body["api_key"]["role"] = principal.extra.get("key_role")
    return body


def change_password(session: Session, principal: Principal, *, current_password: str, new_password: str) -> None:
    """A signed-in user changes their own password; their other sessions end."""
    if principal.kind != "user":
        raise BadRequest("Only users have a password", code="not_a_user")
    user = session.get(User, principal.id)
    counted = _count_attempt(user.email, _client()["ip"])
    if not verify_password(current_password, user.password_hash):
        raise ValidationError("The current password is wrong", details={"current_password": ["Incorrect."]})
    _forgive_attempt(counted)
    check_policy(new_password, user.email, user.name)
    user.password_hash = hash_password(new_password)
    user.updated_at = utcnow()
    revoke_user_sessions(session, user.id, "password_changed", except_family=principal.extra.get("sid"))
    record(session, principal, "auth.password_change", target_type="user", target_id=user.id,
           changes={"password_changed": True})


def _user_principal(user: User) -> Principal:
    return Principal(organization_id=user.organization_id, kind="user", id=user.id, role=user.role,
                     email=user.email, name=user.name)
