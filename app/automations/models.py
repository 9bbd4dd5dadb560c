"""Automations (a trigger on inbound messages, conditions, actions) and their runs."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Automation(Base):
    """``trigger`` is the API's trigger object (type included); ``trigger_type`` copies its type.
    ``actions`` is the list of actions; ``action`` keeps the first (the API's singular field).
    ``fire_count`` and ``last_fired_at`` of the API are counted from its runs."""

    __tablename__ = "automations"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("aut"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str | None] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)
    trigger_type: Mapped[str] = mapped_column(Text)
    trigger: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    action: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    actions: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    conditions: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=sqltext("true"))
    priority: Mapped[int] = mapped_column(Integer, server_default="100")
    stop_processing: Mapped[bool] = mapped_column(Boolean, server_default=sqltext("false"))
    cooldown_seconds: Mapped[int] = mapped_column(Integer, server_default="60")
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class AutomationRun(Base):
    """fired | skipped | failed; unique (automation_id, trigger_message_id). ``actions``: what each
    action did."""

    __tablename__ = "automation_runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    automation_id: Mapped[str] = mapped_column(CID, ForeignKey("automations.id", ondelete="CASCADE"))
    client_id: Mapped[str | None] = mapped_column(CID, ForeignKey("clients.id", ondelete="SET NULL"))
    contact_id: Mapped[str | None] = mapped_column(CID, ForeignKey("contacts.id", ondelete="SET NULL"))
    trigger_message_id: Mapped[str | None] = mapped_column(CID, ForeignKey("messages.id", ondelete="SET NULL"))
    reply_message_id: Mapped[str | None] = mapped_column(CID, ForeignKey("messages.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    actions: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
