"""Authenticating a request: ``Authorization: Bearer <jwt>`` or ``X-API-Key: sk_...``.

The principal is resolved once per request and cached on ``flask.g``. Users are re-read from the
database on every request, so a role change, a disabled user or a suspended organisation takes
effect at once; an access token revoked by logout (its ``jti``) or whose refresh token family was
revoked (its ``sid``) is refused through a Redis deny-list. API keys are read from a 60-second
Redis copy of their row (see "API key cache" below): revocation drops the copy, so it too takes
effect at once.

A key never has more rights than the user who created it has now: its effective role is the lower
of its own role and its creator's current one, and the keys of a disabled creator are refused
until the creator is enabled again (a deleted creator's keys are revoked: ``apikeys.service``).
Changing a user drops the cached copies of their keys (``forget_keys_of``). Keys made by the
platform (the CLI) have no creator and keep their role.

``app/security/guard.py`` installs the request hooks: the permission check before the view and
the writes that must outlive a refused request (``after_refusal`` / ``run_after_refusal``).
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from flask import g, request
from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.security.principal import Principal
from config import settings

log = logging.getLogger(__name__)

KEY_TOUCH_EVERY_S = 60
DENYLIST_PREFIX = "wa:jwt:deny:"
FAMILY_DENYLIST_PREFIX = "wa:jwt:deny-sid:"


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
    if api_key:  # the request's session is opened only if the key check needs the database
        return principal_for_api_key(request_session, api_key.strip())
    if auth[:7].lower() == "bearer ":
        return principal_for_access_token(request_session(), auth[7:].strip())
    raise Unauthorized("Authenticate with a Bearer token or an X-API-Key header", code="unauthorized",
                       headers={"WWW-Authenticate": 'Bearer realm="api"'})


def _agent_clients(session: Session, user_id: str | None) -> frozenset[str]:
    from app.team.models import UserClient

    if not user_id:
        return frozenset()
    return frozenset(session.scalars(select(UserClient.client_id).where(UserClient.user_id == user_id)))


def principal_for_access_token(session: Session, token: str) -> Principal:
    from app.kv import redis_client
    from app.security.tokens import decode_access_token
    from app.team.models import Organization, User

    claims = decode_access_token(token)
    denied = [DENYLIST_PREFIX + claims["jti"]]
    if claims.get("sid"):
        denied.append(FAMILY_DENYLIST_PREFIX + claims["sid"])
    if redis_client().exists(*denied):
        raise Unauthorized("Access token revoked", code="token_revoked")
    found = session.execute(
        select(User, Organization.name).join(Organization, Organization.id == User.organization_id)
        .where(User.id == claims["sub"], User.deleted_at.is_(None), User.status == "active",
               Organization.status == "active")).first()
    if found is None or found[0].organization_id != claims["org"]:
        raise Unauthorized("Invalid access token", code="invalid_token")
    user, org_name = found
    return Principal(organization_id=user.organization_id, kind="user", id=user.id, role=user.role,
                     client_ids=_agent_clients(session, user.id) if user.role == "agent" else None,
                     email=user.email, name=user.name,
                     extra={"jti": claims["jti"], "exp": claims["exp"], "sid": claims.get("sid"),
                            "organization_name": org_name})


def principal_for_api_key(session: Session | Callable[[], Session], key: str) -> Principal:
    """The principal of an API key. The key row is read from a short-lived Redis copy when there
    is one (one Redis round trip instead of a database transaction: the key check runs on every
    request), else from Postgres. The HMAC of the presented key is compared either way.

    ``session`` is a Session, or a function returning one that is called only when the database
    is needed (a cache miss, an agent key's clients, the once-a-minute ``last_used_at``)."""
    from app.db import utcnow
    from app.security.keys import key_matches, lookup_prefix

    db = session if callable(session) else (lambda: session)
    prefix = lookup_prefix(key)
    entry = (_cached_key(prefix) or _load_key(db(), prefix)) if prefix else None
    if entry is None or not key_matches(key, entry["hash"]):
        raise Unauthorized("Invalid API key", code="invalid_api_key")
    now = utcnow()
    if entry["revoked"]:
        raise Unauthorized("API key revoked", code="api_key_revoked")
    expires_at = _from_iso(entry["expires_at"])
    if expires_at is not None and expires_at <= now:
        raise Unauthorized("API key expired", code="api_key_expired")
    if entry["org_status"] != "active":
        raise Unauthorized("The organisation of this API key is suspended", code="organization_suspended")
    if entry["created_by"] and entry.get("creator_role") is None:
        raise Unauthorized("The user who created this API key is disabled or deleted: the key works again only "
                           "if that user is enabled", code="api_key_creator_inactive")
    role = effective_key_role(entry["role"], entry.get("creator_role") if entry["created_by"] else None)
    if _should_touch(entry["id"]):
        from app.apikeys.models import ApiKey

        db().execute(update(ApiKey).where(ApiKey.id == entry["id"]).values(last_used_at=now))
    return Principal(organization_id=entry["org"], kind="api_key", id=entry["id"], role=role,
                     client_ids=_agent_clients(db(), entry["created_by"]) if role == "agent" else None,
                     name=entry["name"],
                     extra={"organization_name": entry["org_name"], "prefix": prefix, "expires_at": expires_at,
                            "created_at": _from_iso(entry["created_at"]), "created_by": entry["created_by"],
                            "key_role": entry["role"]})


def effective_key_role(key_role: str, creator_role: str | None) -> str:
    """A key's rights: its own role, capped at its creator's current role (None: no creator)."""
    from app.security.principal import ROLE_RANK

    if creator_role is None or ROLE_RANK[key_role] <= ROLE_RANK[creator_role]:
        return key_role
    return creator_role


# ----------------------------------------------------------------------------- API key cache
#
# ``wa:apikey:<prefix>`` holds a JSON copy of a usable key row for KEY_CACHE_TTL_S seconds.
# Revoking a key (``forget_api_key`` after the commit) deletes the copy and, for a while, marks the
# prefix so that a request that read the row just before the commit cannot put a stale copy back
# (the fill is conditional on the mark, in one Lua call). A suspended organisation's keys stop
# working within KEY_CACHE_TTL_S; anything else about a key cannot change.

KEY_CACHE_TTL_S = 60
KEY_CACHE_PREFIX = "wa:apikey:v2:"  # v2: entries carry the creator's current role
KEY_FORGOTTEN_PREFIX = "wa:apikey-forgotten:"
_FILL_UNLESS_FORGOTTEN = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 1
"""
_fill_script = None


def _from_iso(value):
    from datetime import datetime

    return datetime.fromisoformat(value) if value else None


def _cached_key(prefix: str) -> dict | None:
    import json

    from app.kv import redis_client

    try:
        raw = redis_client().get(KEY_CACHE_PREFIX + prefix)
    except Exception:
        log.warning("API key cache unavailable", exc_info=True)
        return None
    return json.loads(raw) if raw else None


def _load_key(session: Session, prefix: str) -> dict | None:
    """The key row (and its organisation) from Postgres; cached when the key is usable."""
    import json

    from app.apikeys.models import ApiKey
    from app.kv import redis_client
    from app.team.models import Organization, User

    global _fill_script
    found = session.execute(
        select(ApiKey, Organization.name, Organization.status, User.role)
        .join(Organization, Organization.id == ApiKey.organization_id)
        .outerjoin(User, and_(User.id == ApiKey.created_by, User.status == "active", User.deleted_at.is_(None)))
        .where(ApiKey.prefix == prefix)).first()
    if found is None:
        return None
    row, org_name, org_status, creator_role = found
    entry = {"id": row.id, "org": row.organization_id, "role": row.role, "name": row.name, "hash": row.key_hash,
             "created_by": row.created_by, "creator_role": creator_role,
             "revoked": row.revoked_at is not None, "org_status": org_status,
             "org_name": org_name, "expires_at": row.expires_at.isoformat() if row.expires_at else None,
             "created_at": row.created_at.isoformat() if row.created_at else None}
    if not entry["revoked"] and org_status == "active":
        try:
            client = redis_client()
            if _fill_script is None:
                _fill_script = client.register_script(_FILL_UNLESS_FORGOTTEN)
            _fill_script(keys=[KEY_CACHE_PREFIX + prefix, KEY_FORGOTTEN_PREFIX + prefix],
                         args=[json.dumps(entry), KEY_CACHE_TTL_S], client=client)
        except Exception:
            log.warning("could not cache an API key", exc_info=True)
    return entry


def forget_api_key(prefix: str) -> None:
    """Drop the cached copy of a key (call after the change is committed: see the note above)."""
    from app.kv import redis_client

    pipe = redis_client().pipeline(transaction=True)
    pipe.set(KEY_FORGOTTEN_PREFIX + prefix, 1, ex=KEY_CACHE_TTL_S * 2)
    pipe.delete(KEY_CACHE_PREFIX + prefix)
    pipe.execute()


def forget_keys_of(session: Session, user_id: str) -> None:
    """Drop the cached copies of every key ``user_id`` created (their role or status changed), now
    and after the commit (see ``forget_api_key_after_commit``)."""
    from app.apikeys.models import ApiKey

    for prefix in session.scalars(select(ApiKey.prefix).where(ApiKey.created_by == user_id,
                                                              ApiKey.revoked_at.is_(None))):
        forget_api_key_after_commit(session, prefix)


def forget_api_key_after_commit(session: Session, prefix: str) -> None:
    """``forget_api_key`` once ``session`` commits (and at once, which costs nothing)."""
    from sqlalchemy import event

    forget_api_key(prefix)  # Redis down: the revocation fails (503) rather than leave a usable copy

    def after_commit(_session):
        try:
            forget_api_key(prefix)
        except Exception:  # the commit is done; the copy was dropped once already and expires anyway
            log.exception("could not drop the cached copy of a revoked API key")

    event.listen(session, "after_commit", after_commit, once=True)


_touched: dict[str, float] = {}
_touched_lock = threading.Lock()


def _should_touch(key_id: str) -> bool:
    """``last_used_at``: at most one write per key per minute across every api process. This
    process remembers its own recent touches, so the common case costs no Redis round trip; the
    Redis ``SET NX`` makes the first process to see the key after a minute the one that writes."""
    from app.kv import redis_client

    now = time.monotonic()
    with _touched_lock:
        if now - _touched.get(key_id, -KEY_TOUCH_EVERY_S) < KEY_TOUCH_EVERY_S:
            return False
        _touched[key_id] = now
        if len(_touched) > 10_000:
            _touched.clear()
    try:
        return bool(redis_client().set(f"wa:key:touch:{key_id}", 1, nx=True, ex=KEY_TOUCH_EVERY_S))
    except Exception:
        log.debug("could not throttle last_used_at", exc_info=True)
        return False


def forget_key_touches() -> None:
    """Tests: let the next request of every key write ``last_used_at`` again (with Redis flushed)."""
    with _touched_lock:
        _touched.clear()


def deny_access_token(jti: str, exp: int) -> None:
    """Refuse an access token until it would have expired anyway (logout)."""
    from app.kv import redis_client

    ttl = max(1, int(exp - time.time()) + 5)
    redis_client().set(DENYLIST_PREFIX + jti, 1, ex=ttl)


def deny_session(session_id: str) -> None:
    """Refuse every access token issued for a refresh token family (its ``sid``) from now on, for
    as long as such a token can live."""
    from app.kv import redis_client

    redis_client().set(FAMILY_DENYLIST_PREFIX + session_id, 1, ex=settings.ACCESS_TOKEN_TTL + 10)


# ----------------------------------------------------------------------------- refusals that write


def after_refusal(work) -> None:
    """Run ``work(session)`` in a transaction of its own once the request's transaction has ended.

    A refused request (4xx) rolls back everything it wrote, but some refusals must leave a trace:
    the audit row of a failed login, the revocation of a refresh token family whose old token was
    replayed. Outside a request ``work`` runs at once in its own transaction.
    """
    from flask import has_request_context

    if has_request_context():
        g.setdefault("after_refusal", []).append(work)
        return
    from app.db import job_session

    with job_session() as session:
        work(session)


def run_after_refusal(exc: BaseException | None) -> None:
    """teardown_request (installed by ``app.security.guard``): run the writes a refused request queued."""
    pending = g.pop("after_refusal", None)
    if not pending:
        return
    from app.db import end_request_session, job_session

    end_request_session(commit=False)  # no-op: the request's transaction has normally ended already
    for work in pending:
        try:
            with job_session() as session:
                work(session)
        except Exception:
            log.exception("a write that had to outlive a refused request failed")
