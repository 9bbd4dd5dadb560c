"""Contacts (tags are a ``text[]`` column), contact lists and CSV imports."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, Text, func
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
    #: the last CSV import that wrote the contact: a later row of the same file is a repeat
    last_import_id: Mapped[str | None] = mapped_column(CID)


class ContactList(Base):
    __tablename__ = "contact_lists"
    #: not a column: the live members, set by app/contacts/lists.py where a list is shown
    member_count = 0

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
    """One CSV import (app/contacts/imports.py): queued -> running -> completed | failed, with counts.

    A worker commits every batch together with the counts and ``processed_bytes`` / ``lines_read``,
    so a crashed import resumes where its last batch ended and counts nothing twice."""

    __tablename__ = "contact_imports"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("imp"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    filename: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    total_rows: Mapped[int] = mapped_column(Integer, server_default="0")
    created_count: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_count: Mapped[int] = mapped_column(Integer, server_default="0")
    duplicate_count: Mapped[int] = mapped_column(Integer, server_default="0")
    invalid_count: Mapped[int] = mapped_column(Integer, server_default="0")
    errors: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    error_message: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None] = mapped_column(TS)
    completed_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    list_id: Mapped[str | None] = mapped_column(CID, ForeignKey("contact_lists.id", ondelete="SET NULL"))
    delimiter: Mapped[str] = mapped_column(Text, server_default=",")
    column_plan: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    default_region: Mapped[str | None] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    processed_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    lines_read: Mapped[int] = mapped_column(Integer, server_default="0")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(TS)
