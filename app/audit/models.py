"""The append-only audit log. ``actor_id``/``target_id`` are plain ids, not foreign keys."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, TS
from app.db import Base, new_id


class AuditLog(Base):
    __tablename__ = "audit_logs"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("aud"))
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    actor_type: Mapped[str] = mapped_column(Text)  # user | api_key | system
    actor_id: Mapped[str | None] = mapped_column(CID)
    action: Mapped[str] = mapped_column(Text)
    target_type: Mapped[str | None] = mapped_column(Text)
    target_id: Mapped[str | None] = mapped_column(CID)
    ip: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
    changes: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
