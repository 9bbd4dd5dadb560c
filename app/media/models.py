"""Media files of an organisation (the bytes live in media storage, ``app/storage``, under
``storage_key``; the copy sent under ``send_key`` when processing made one)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, Text, func
from sqlalchemy.dialects.postgresql import JSONB
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
    kind: Mapped[str] = mapped_column(Text, server_default="document")  # MediaKind
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(Text)  # lowercase hex
    storage_key: Mapped[str] = mapped_column(Text)
    send_key: Mapped[str | None] = mapped_column(Text)
    thumbnail_key: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="processing")  # MediaStatus
    error: Mapped[str | None] = mapped_column(Text)
    metadata_: Mapped[dict] = mapped_column("metadata", JSONB, server_default="{}")
    source: Mapped[str] = mapped_column(Text, server_default="upload")  # MediaSource
    source_url: Mapped[str | None] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(CID, ForeignKey("clients.id", ondelete="SET NULL"))
    fetch_ref: Mapped[dict | None] = mapped_column(JSONB)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    ready_at: Mapped[datetime | None] = mapped_column(TS)
    expires_at: Mapped[datetime | None] = mapped_column(TS)
    deleted_at: Mapped[datetime | None] = mapped_column(TS)
