"""Message templates with ``{{variable}}`` placeholders (unique name+language among live rows)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, TS
from app.db import Base, new_id


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("tpl"))
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(Text, server_default="en")
    body: Mapped[str] = mapped_column(Text)
    variables: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=sqltext("'{}'"))
    category: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)
