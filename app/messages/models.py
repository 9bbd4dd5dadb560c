"""Messages (both directions) and their status history.

API names: ``to`` = ``to_phone``, ``from`` = ``from_phone``, ``error`` = ``error_code`` + ``error_message``.
Inbound messages have status ``received``.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("msg"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"))
    direction: Mapped[str] = mapped_column(Text)  # outbound | inbound
    contact_id: Mapped[str | None] = mapped_column(CID, ForeignKey("contacts.id", ondelete="SET NULL"))
    to_phone: Mapped[str | None] = mapped_column(Text)
    from_phone: Mapped[str | None] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text, server_default="text")
    text: Mapped[str | None] = mapped_column(Text)
    media_id: Mapped[str | None] = mapped_column(CID, ForeignKey("media.id", ondelete="SET NULL"))
    caption: Mapped[str | None] = mapped_column(Text)
    template_id: Mapped[str | None] = mapped_column(CID, ForeignKey("templates.id", ondelete="SET NULL"))
    variables: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    error_code: Mapped[str | None] = mapped_column(Text)
    error_message: Mapped[str | None] = mapped_column(Text)
    external_id: Mapped[str | None] = mapped_column(CID)
    campaign_id: Mapped[str | None] = mapped_column(CID, ForeignKey("campaigns.id", ondelete="SET NULL"))
    automation_id: Mapped[str | None] = mapped_column(CID, ForeignKey("automations.id", ondelete="SET NULL"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    scheduled_at: Mapped[datetime | None] = mapped_column(TS)
    scheduled_for: Mapped[datetime | None] = mapped_column(TS)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    queued_at: Mapped[datetime | None] = mapped_column(TS)
    sending_at: Mapped[datetime | None] = mapped_column(TS)
    sent_at: Mapped[datetime | None] = mapped_column(TS)
    delivered_at: Mapped[datetime | None] = mapped_column(TS)
    read_at: Mapped[datetime | None] = mapped_column(TS)
    failed_at: Mapped[datetime | None] = mapped_column(TS)
    cancelled_at: Mapped[datetime | None] = mapped_column(TS)

    status_history: Mapped[list[MessageStatusHistory]] = relationship(
        order_by="MessageStatusHistory.id", passive_deletes=True)


class MessageStatusHistory(Base):
    __tablename__ = "message_status_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    message_id: Mapped[str] = mapped_column(CID, ForeignKey("messages.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    details: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
