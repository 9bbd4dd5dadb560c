"""Authenticating a request: ``Authorization: Bearer <jwt>`` or ``X-API-Key: sk_...``.

The principal is resolved once per request and cached on ``flask.g``. Users and keys are
re-read from the database on every request, so a role change, a disabled user or a revoked key
takes effect at once; an access token revoked by logout is refused through a Redis deny-list.
"""
from __future__ import annotations

import logging

from flask import g, request
from sqlalchemy import select

from app.errors import Unauthorized
from app.security.principal import Principal

log = logging.getLogger(__name__)

KEY_TOUCH_EVERY_S = 60
DENYLIST_PREFIX = "wa:jwt:deny:"


def current_principal() -> Principal:
    principal = g.get("principal")
    if principal is None:
        principal = _authenticate()
        g.principal = principal
    return principal


def optional_principal() -> Principal | None:
    try:
        return current_principal()
    except Unauthorized:
        return None


def _authenticate() -> Principal:
    from app.db import request_session

    api_key = request.headers.get("X-API-Key")
    auth = request.headers.get("Authorization", "")
    if api_key:
        return principal_for_api_key(request_session(), api_key.strip())
    if auth.lower().startswith("bearer "):
        return principal_for_access_token(request_session(), auth[7:].strip())
    raise Unauthorized("Authenticate with a Bearer token or an X-API-Key header", code="unauthorized",
                       headers={"WWW-Authenticate": 'Bearer realm="api"'})


def _agent_clients(session, user_id: str | None) -> frozenset[str]:
    from app.team.models import UserClient

    if not user_id:
        return frozenset()
    return frozenset(session.scalars(select(UserClient.client_id).where(UserClient.user_id == user_id)))


def principal_for_access_token(session, token: str) -> Principal:
    from app.kv import redis_client
    from app.security.tokens import decode_access_token
    from app.team.models import User

    claims = decode_access_token(token)
    if redis_client().exists(DENYLIST_PREFIX + claims["jti"]):
        raise Unauthorized("Access token revoked", code="token_revoked")
    user = session.get(User, claims["sub"])
    if user is None or user.deleted_at is not None or user.status != "active" \
            or user.organization_id != claims.get("org"):
        raise Unauthorized("Invalid access token", code="invalid_token")
    return Principal(organization_id=user.organization_id, kind="user", id=user.id, role=user.role,
                     client_ids=_agent_clients(session, user.id) if user.role == "agent" else None,
                     email=user.email, name=user.name, extra={"jti": claims["jti"], "exp": claims["exp"]})


def principal_for_api_key(session, key: str) -> Principal:
    from app.apikeys.models import ApiKey
    from app.db import utcnow
    from app.kv import redis_client
    from app.security.keys import key_matches, lookup_prefix

    prefix = lookup_prefix(key)
    row = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first() if prefix else None
    if row is None or not key_matches(key, row.key_hash):
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    now = utcnow()
    if row.revoked_at is not None:
        raise Unauthorized("API key revoked", code="api_key_revoked")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthorized("API key expired", code="api_key_expired")
    # last_used_at: at most one write per key per minute, whichever api process sees it first
    try:
        if redis_client().set(f"wa:key:touch:{row.id}", 1, nx=True, ex=KEY_TOUCH_EVERY_S):
            row.last_used_at = now
    except Exception:
        log.debug("could not throttle last_used_at", exc_info=True)
    return Principal(organization_id=row.organization_id, kind="api_key", id=row.id, role=row.role,
                     client_ids=_agent_clients(session, row.created_by) if row.role == "agent" else None,
                     name=row.name)


def deny_access_token(jti: str, exp: int) -> None:
    """Refuse an access token until it would have expired anyway (logout)."""
    import time

    from app.kv import redis_client

    ttl = max(1, int(exp - time.time()) + 5)
    redis_client().set(DENYLIST_PREFIX + jti, 1, ex=ttl)
