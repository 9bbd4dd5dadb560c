"""Message templates with ``{{variable}}`` placeholders (unique name+language among live rows)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Text, func, text as sqltext
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id

CID = Text(collation="C")
TS = DateTime(timezone=True)


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


# Foreign keys name tables of other domains: importing any models module registers them all.
import app.models  # noqa: E402,F401
