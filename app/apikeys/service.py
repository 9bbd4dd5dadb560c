"""API keys: create (secret shown once), list, revoke.

A key is created with a role at most its creator's (a manager cannot mint admin keys, nor revoke
them), and acts with at most its creator's *current* role: demoting a user demotes their keys, a
disabled user's keys are refused, a deleted user's keys are revoked (``revoke_keys_of``). A key
created by another key has that key's creator. Revocation is effective on the next request.
"""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import quotas
from app.apikeys.models import ApiKey
from app.audit.service import record
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Forbidden, NotFound, ValidationError
from app.pagination import paginate
from app.security.auth import effective_key_role, forget_api_key_after_commit
from app.security.keys import generate_key, hash_key
from app.security.principal import ROLE_RANK, Principal
from app.team.models import User


def _check_role_ceiling(principal: Principal, role: str, verb: str) -> None:
    if not principal.outranks_or_equals(role):
        raise Forbidden(f"You cannot {verb} a key with a role ({role}) above your own ({principal.role})",
                        code="role_above_own")


def create_api_key(session: Session, principal: Principal, *, name: str, role: str,
                   expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is never stored nor shown again."""
    if role not in ROLE_RANK:
        raise ValidationError(details={"role": [f"Must be one of: {', '.join(ROLE_RANK)}."]})
    _check_role_ceiling(principal, role, "create")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError(details={"name": ["Give a name of 1 to 100 characters."]})
    if expires_at is not None:
        if expires_at.tzinfo is None:
            expires_at = expires_at.replace(tzinfo=UTC)
        if expires_at <= utcnow():
            raise ValidationError(details={"expires_at": ["Must be in the future."]})
    quotas.enforce(session, principal.organization_id, "api_keys", ApiKey, ApiKey.revoked_at.is_(None))
    secret, prefix = generate_key()
    creator = principal.id if principal.kind == "user" else principal.extra.get("created_by")
    key = ApiKey(organization_id=principal.organization_id, name=name, role=role, prefix=prefix,
                 key_hash=hash_key(secret), expires_at=expires_at, created_by=creator)
    session.add(key)
    session.flush()
    record(session, principal, "api_key.create", target_type="api_key", target_id=key.id,
           changes={"name": name, "role": role, "prefix": prefix,
                    "expires_at": expires_at.isoformat() if expires_at else None})
    return key, secret


def create_api_key_response(session: Session, principal: Principal, **fields) -> dict:
    """``create_api_key`` as the API answers it: the row's fields and, this once, the key."""
    key, secret = create_api_key(session, principal, **fields)
    return {"id": key.id, "name": key.name, "role": key.role, "prefix": key.prefix, "key": secret,
            "expires_at": key.expires_at, "created_by": key.created_by, "created_at": key.created_at or utcnow()}


def list_api_keys(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                  include_revoked: bool = False) -> dict:
    stmt = scoped_select(ApiKey, principal.organization_id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    page = paginate(session, stmt, ApiKey.id, limit=limit, cursor=cursor)
    creators = {k.created_by for k in page["items"] if k.created_by}
    roles = dict(session.execute(select(User.id, User.role).where(
        User.id.in_(creators), User.status == "active", User.deleted_at.is_(None))).all()) if creators else {}
    for key in page["items"]:
        active = key.created_by is None or key.created_by in roles
        key.effective_role = effective_key_role(key.role, roles.get(key.created_by)) if active else None
    return page


def revoke_api_key(session: Session, principal: Principal, key_id: str) -> None:
    key = get_scoped(session, ApiKey, principal.organization_id, key_id, for_update=True)
    if key.revoked_at is not None:
        raise NotFound("api key not found")
    _check_role_ceiling(principal, key.role, "revoke")
    key.revoked_at = key.updated_at = utcnow()
    session.flush()
    forget_api_key_after_commit(session, key.prefix)  # the cached copy goes: refused from the next request
    record(session, principal, "api_key.revoke", target_type="api_key", target_id=key.id,
           changes={"name": key.name, "role": key.role, "prefix": key.prefix})


def revoke_keys_of(session: Session, principal: Principal, user_id: str, reason: str) -> int:
    """Revoke every live key ``user_id`` created (the user was deleted), each with an audit row."""
    keys = session.scalars(select(ApiKey).where(ApiKey.organization_id == principal.organization_id,
                                                ApiKey.created_by == user_id, ApiKey.revoked_at.is_(None))
                           .with_for_update()).all()
    for key in keys:
        key.revoked_at = key.updated_at = utcnow()
        forget_api_key_after_commit(session, key.prefix)
        record(session, principal, "api_key.revoke", target_type="api_key", target_id=key.id,
               changes={"name": key.name, "role": key.role, "prefix": key.prefix, "reason": reason,
                        "created_by": user_id})
    session.flush()
    return len(keys)
