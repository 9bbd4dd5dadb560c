"""API keys: create (secret shown once), list, revoke."""
from __future__ import annotations

from datetime import datetime

from app.apikeys.models import ApiKey
from app.audit.service import record
from app.errors import Forbidden, ValidationError
from app.security.keys import generate_key, hash_key
from app.security.principal import ROLE_RANK, Principal


def create_api_key(session, principal: Principal, *, name: str, role: str,
                   expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """Returns the row and the plaintext key, which is never stored nor shown again."""
    if role not in ROLE_RANK:
        raise ValidationError(details={"role": [f"Must be one of: {', '.join(ROLE_RANK)}."]})
    if not principal.outranks_or_equals(role) or (role == "admin" and principal.role != "admin"):
        raise Forbidden("You cannot create a key with a role above your own", code="role_above_own")
    name = (name or "").strip()
    if not name or len(name) > 100:
        raise ValidationError(details={"name": ["Give a name of 1 to 100 characters."]})
    if expires_at is not None:
        from app.db import utcnow

        if expires_at <= utcnow():
            raise ValidationError(details={"expires_at": ["Must be in the future."]})
    secret, prefix = generate_key()
    key = ApiKey(organization_id=principal.organization_id, name=name, role=role, prefix=prefix,
                 key_hash=hash_key(secret), expires_at=expires_at,
                 created_by=principal.id if principal.kind == "user" else None)
    session.add(key)
    session.flush()
    record(session, principal, "api_key.create", target_type="api_key", target_id=key.id,
           changes={"name": name, "role": role, "expires_at": expires_at.isoformat() if expires_at else None})
    return key, secret
