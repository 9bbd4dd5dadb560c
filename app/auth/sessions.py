"""Refresh token families: revoking a user's sessions and purging expired tokens.

Used by login and logout (``app.auth.service``) and by the team when a user is disabled, deleted or
loses a role (``app.team.service``), so it depends on neither.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.auth.models import RefreshToken
from app.db import rowcount, utcnow
from app.security.auth import deny_session


def revoke_family(session: Session, family_id: str, reason: str) -> int:
    """Revoke a refresh token family and refuse the access tokens issued for it."""
    result = session.execute(update(RefreshToken).where(
        RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None)
    ).values(revoked_at=utcnow(), revoked_reason=reason))
    deny_session(family_id)
    return rowcount(result) or 0


def revoke_user_sessions(session: Session, user_id: str, reason: str, *, except_family: str | None = None) -> int:
    """Revoke every live refresh token of a user (disabled, deleted, password changed) and refuse
    the access tokens issued for them. Returns how many tokens were revoked."""
    stmt = select(RefreshToken.family_id).where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
    if except_family:
        stmt = stmt.where(RefreshToken.family_id != except_family)
    families = set(session.scalars(stmt))
    return sum(revoke_family(session, family, reason) for family in families)


#: expired refresh tokens are kept this long (for the audit trail of a login), then deleted
EXPIRED_TOKENS_KEPT = timedelta(days=7)
PURGE_BATCH = 10_000


def purge_expired_refresh_tokens(session: Session, limit: int = PURGE_BATCH) -> int:
    """Delete refresh tokens that expired more than EXPIRED_TOKENS_KEPT ago (at most ``limit``)."""
    old = (select(RefreshToken.id).where(RefreshToken.expires_at < utcnow() - EXPIRED_TOKENS_KEPT)
           .limit(limit).scalar_subquery())
    return rowcount(session.execute(delete(RefreshToken).where(RefreshToken.id.in_(old))))
