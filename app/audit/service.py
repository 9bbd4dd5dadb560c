"""Writing and reading the audit log. ``record`` joins the caller's transaction, so an action and
its audit row commit or vanish together. Secrets never reach ``changes``."""
from __future__ import annotations

from flask import g, has_request_context, request
from sqlalchemy.orm import Session

from app.audit.models import AuditLog
from app.security.principal import Principal

SECRET_FIELDS = {"password", "password_hash", "key", "key_hash", "secret", "token", "access_token",
                 "refresh_token", "app_secret", "config_secrets", "secrets_encrypted", "state_encrypted",
                 "secret_encrypted", "previous_secret_encrypted", "password_encrypted", "verify_token"}


def _scrub(value):
    if isinstance(value, dict):
        return {k: ("[redacted]" if k in SECRET_FIELDS else _scrub(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _request_context() -> dict:
    if not has_request_context():
        return {}
    return {"ip": request.remote_addr, "user_agent": (request.user_agent.string or "")[:500] or None,
            "request_id": g.get("request_id")}


def record(session: Session, principal: Principal | None, action: str, *, organization_id: str | None = None,
           target_type: str | None = None, target_id: str | None = None, changes: dict | None = None,
           actor_type: str | None = None, actor_id: str | None = None) -> AuditLog:
    """Add an audit row for ``action`` (``<domain>.<verb>``, e.g. ``client.create``)."""
    row = AuditLog(
        organization_id=organization_id or principal.organization_id,
        actor_type=actor_type or (principal.kind if principal else "system"),
        actor_id=actor_id if actor_id is not None else (principal.id if principal else None),
        action=action, target_type=target_type, target_id=target_id, changes=_scrub(changes or {}),
        **_request_context(),
    )
    session.add(row)
    return row


def diff(obj, fields: dict) -> dict:
    """``{field: {"from": old, "to": new}}`` for the fields whose value changes."""
    out = {}
    for name, new in fields.items():
        old = getattr(obj, name, None)
        if old != new:
            out[name] = {"from": _jsonable(old), "to": _jsonable(new)}
    return out


def _jsonable(v):
    from datetime import datetime

    return v.isoformat() if isinstance(v, datetime) else v


def list_audit_logs(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                    actor: str | None = None, action: str | None = None, since=None,
                    target: str | None = None) -> dict:
    """The organisation's audit rows, newest first.

    ``actor``: a user or key id, or ``system``; ``action``: exact (``user.update``) or a prefix
    ending in ``*`` (``user.*``); ``since``: rows at or after this time; ``target``: a target id.
    """
    from app.db import scoped_select
    from app.pagination import paginate

    stmt = scoped_select(AuditLog, principal.organization_id)
    if actor == "system":
        stmt = stmt.where(AuditLog.actor_type == "system")
    elif actor:
        stmt = stmt.where(AuditLog.actor_id == actor)
    if action:
        if action.endswith("*"):
            prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            stmt = stmt.where(AuditLog.action.like(prefix + "%", escape="\\"))
        else:
            stmt = stmt.where(AuditLog.action == action)
    if since is not None:
        stmt = stmt.where(AuditLog.created_at >= since)
    if target:
        stmt = stmt.where(AuditLog.target_id == target)
    return paginate(session, stmt, AuditLog.id, limit=limit, cursor=cursor)
