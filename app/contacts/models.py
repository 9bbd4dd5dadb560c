"""Contacts (tags are a ``text[]`` column), contact lists and CSV imports."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Contact(Base):
    """Unique per (organization_id, phone) including deleted rows: re-creating revives the row."""

    __tablename__ = "contacts"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("ctc"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    phone: Mapped[str] = mapped_column(Text)  # E.164
    name: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=sqltext("'{}'"))
    attributes: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    opted_out: Mapped[bool] = mapped_column(Boolean, server_default=sqltext("false"))
    opted_out_at: Mapped[datetime | None] = mapped_column(TS)
    opted_in_at: Mapped[datetime | None] = mapped_column(TS)
    last_inbound_at: Mapped[datetime | None] = mapped_column(TS)
    last_outbound_at: Mapped[datetime | None] = mapped_column(TS)
    assigned_user_id: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class ContactList(Base):
    __tablename__ = "contact_lists"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("lst"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class ContactListMember(Base):
    __tablename__ = "contact_list_members"

    list_id: Mapped[str] = mapped_column(CID, ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[str] = mapped_column(CID, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class ContactImport(Base):
    """One CSV import job: pending -> running -> completed | failed, with result counts."""

    __tablename__ = "contact_imports"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("imp"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    total_rows: Mapped[int] = mapped_column(Integer, server_default="0")
    created_count: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_count: Mapped[int] = mapped_column(Integer, server_default="0")
    skipped_count: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_count: Mapped[int] = mapped_column(Integer, server_default="0")
    errors: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(TS)
    completed_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
