"""Organisations, their settings, users and agent <-> client assignments (schema.sql: Team)."""
from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import BigInteger, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("org"))
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="active")
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())

    settings: Mapped[OrganizationSettings | None] = relationship(
        back_populates="organization", uselist=False, passive_deletes=True)


class OrganizationSettings(Base):
    """One row per organisation; opt-out/opt-in keywords are ``{language: [keyword, ...]}``."""

    __tablename__ = "organization_settings"

    organization_id: Mapped[str] = mapped_column(CID, ORG_FK(), primary_key=True)
    opt_out_keywords: Mapped[dict] = mapped_column(JSONB, server_default=sqltext(
        """'{"en": ["STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"], "es": ["BAJA", "PARAR", "CANCELAR"], """
        """"fr": ["ARRET", "STOP"], "de": ["STOPP", "ABMELDEN"], "pt": ["PARAR", "SAIR"]}'::jsonb"""))
    opt_in_keywords: Mapped[dict] = mapped_column(JSONB, server_default=sqltext(
        """'{"en": ["START", "UNSTOP", "SUBSCRIBE"], "es": ["ALTA"]}'::jsonb"""))
    timezone: Mapped[str] = mapped_column(Text, server_default="UTC")
    business_hours: Mapped[dict] = mapped_column(JSONB, server_default=sqltext(
        """'{"mon": [["09:00", "17:00"]], "tue": [["09:00", "17:00"]], "wed": [["09:00", "17:00"]], """
        """"thu": [["09:00", "17:00"]], "fri": [["09:00", "17:00"]]}'::jsonb"""))
    media_quota_bytes: Mapped[int | None] = mapped_column(BigInteger)  # None: MEDIA_QUOTA_BYTES
    media_quota_files: Mapped[int | None] = mapped_column(Integer)  # None: MEDIA_QUOTA_FILES
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())

    organization: Mapped[Organization] = relationship(back_populates="settings")


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("usr"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    email: Mapped[str] = mapped_column(Text)  # unique on lower(email) among users not deleted
    password_hash: Mapped[str] = mapped_column(Text)
    name: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text)  # admin | manager | agent | viewer
    status: Mapped[str] = mapped_column(Text, server_default="active")  # active | disabled
    last_login_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)

    if TYPE_CHECKING:  # not a column: app.team.service.with_client_ids sets it on the users it returns
        client_ids: list[str] | None


class UserClient(Base):
    """An agent may use this client (PUT /api/users/{id}/clients)."""

    __tablename__ = "user_clients"

    user_id: Mapped[str] = mapped_column(CID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
