"""Refresh tokens: stored hashed, rotated on use; reuse of a rotated token revokes its family."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, TS
from app.db import Base, new_id


class RefreshToken(Base):
    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("rtk"))
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(CID, ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(Text)
    family_id: Mapped[str] = mapped_column(CID)
    parent_id: Mapped[str | None] = mapped_column(CID, ForeignKey("refresh_tokens.id", ondelete="SET NULL"))
    replaced_by: Mapped[str | None] = mapped_column(CID, ForeignKey("refresh_tokens.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime] = mapped_column(TS)
    revoked_at: Mapped[datetime | None] = mapped_column(TS)
    # rotated | logout | reuse_detected | user_disabled | password_changed | admin
    revoked_reason: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    ip: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
