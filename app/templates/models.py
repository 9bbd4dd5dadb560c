"""Message templates with ``{{variable}}`` placeholders (unique name+language among live rows), and
their review per client that needs one (Meta's for ``cloud``, a simulated one for ``sim``)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, ORG_FK, TS
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
    header: Mapped[dict | None] = mapped_column(JSONB)
    footer: Mapped[str | None] = mapped_column(Text)
    buttons: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"), default=list)
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class TemplateApproval(Base):
    """pending | approved | rejected | paused | disabled | error (the submission itself failed)."""

    __tablename__ = "template_approvals"

    template_id: Mapped[str] = mapped_column(CID, ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    meta_template_id: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime | None] = mapped_column(TS)
    reviewed_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
