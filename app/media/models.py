"""Uploaded media files (the bytes live in media storage under ``storage_key``)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, TS
from app.db import Base, new_id


class Media(Base):
    """API ``size`` = ``size_bytes``."""

    __tablename__ = "media"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("med"))
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(Text)
    mime_type: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(Text)  # lowercase hex
    storage_key: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="ready")  # processing | ready | failed
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)
