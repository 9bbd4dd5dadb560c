"""Webhook endpoints, the event outbox, deliveries (one per webhook x event) and their attempts."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("whk"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=sqltext("'{}'"))
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=sqltext("true"))
    secret_encrypted: Mapped[str] = mapped_column(Text)
    previous_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(TS)
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column(TS)
    consecutive_failures: Mapped[int] = mapped_column(Integer, server_default="0")
    last_success_at: Mapped[datetime | None] = mapped_column(TS)
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class WebhookEvent(Base):
    """``payload`` is the delivered body's ``data``."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("evt"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    type: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class WebhookDelivery(Base):
    """pending | delivering | succeeded | failed | dead; ``attempt`` = attempts made so far."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("dlv"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    event_id: Mapped[str] = mapped_column(CID, ForeignKey("webhook_events.id", ondelete="CASCADE"))
    webhook_id: Mapped[str] = mapped_column(CID, ForeignKey("webhooks.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    attempt: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime | None] = mapped_column(TS)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())

    event: Mapped[WebhookEvent] = relationship()
    webhook: Mapped[Webhook] = relationship()


class WebhookDeliveryAttempt(Base):
    __tablename__ = "webhook_delivery_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    delivery_id: Mapped[str] = mapped_column(CID, ForeignKey("webhook_deliveries.id", ondelete="CASCADE"))
    webhook_id: Mapped[str] = mapped_column(CID, ForeignKey("webhooks.id", ondelete="CASCADE"))
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    response_excerpt: Mapped[str | None] = mapped_column(Text)  # at most delivery.EXCERPT_CHARS characters
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    next_attempt_at: Mapped[datetime | None] = mapped_column(TS)
