"""Campaigns, the clients they send through, and one recipient row per (campaign, contact)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, Text, func, select
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from app.clients.models import Client
from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Campaign(Base):
    """The ``*_count`` columns are kept by the database's triggers from the recipients (schema.sql)."""

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("cmp"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="draft")
    template_id: Mapped[str | None] = mapped_column(CID, ForeignKey("templates.id", ondelete="SET NULL"))
    message: Mapped[str | None] = mapped_column(Text)
    variables: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    media_id: Mapped[str | None] = mapped_column(CID, ForeignKey("media.id", ondelete="SET NULL"))
    audience: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    scheduled_at: Mapped[datetime | None] = mapped_column(TS)
    started_at: Mapped[datetime | None] = mapped_column(TS)
    paused_at: Mapped[datetime | None] = mapped_column(TS)
    completed_at: Mapped[datetime | None] = mapped_column(TS)
    cancelled_at: Mapped[datetime | None] = mapped_column(TS)
    last_error: Mapped[str | None] = mapped_column(Text)
    send_window: Mapped[dict | None] = mapped_column(JSONB)
    frequency_cap: Mapped[dict | None] = mapped_column(JSONB)
    recipient_variables: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"), default=dict)
    fanout_cursor: Mapped[str | None] = mapped_column(Text)
    fanout_done_at: Mapped[datetime | None] = mapped_column(TS)
    total_count: Mapped[int] = mapped_column(Integer, server_default="0")
    pending_count: Mapped[int] = mapped_column(Integer, server_default="0")
    queued_count: Mapped[int] = mapped_column(Integer, server_default="0")
    sent_count: Mapped[int] = mapped_column(Integer, server_default="0")
    delivered_count: Mapped[int] = mapped_column(Integer, server_default="0")
    read_count: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_count: Mapped[int] = mapped_column(Integer, server_default="0")
    skipped_count: Mapped[int] = mapped_column(Integer, server_default="0")
    cancelled_count: Mapped[int] = mapped_column(Integer, server_default="0")
    replied_count: Mapped[int] = mapped_column(Integer, server_default="0")
    created_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)

    clients: Mapped[list[CampaignClient]] = relationship(passive_deletes=True)


class CampaignClient(Base):
    __tablename__ = "campaign_clients"

    campaign_id: Mapped[str] = mapped_column(CID, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class CampaignRecipient(Base):
    """pending | queued | sent | delivered | read | failed | skipped | cancelled; unique (campaign_id,
    contact_id). A recipient's status follows its message's (a trigger)."""

    __tablename__ = "campaign_recipients"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    campaign_id: Mapped[str] = mapped_column(CID, ForeignKey("campaigns.id", ondelete="CASCADE"))
    contact_id: Mapped[str] = mapped_column(CID, ForeignKey("contacts.id", ondelete="CASCADE"))
    client_id: Mapped[str | None] = mapped_column(CID, ForeignKey("clients.id", ondelete="SET NULL"))
    message_id: Mapped[str | None] = mapped_column(CID, ForeignKey("messages.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(Text, server_default="pending")
    reason: Mapped[str | None] = mapped_column(Text)
    replied_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


def client_ids_of(session: Session, campaign_id: str) -> list[str]:
    """A campaign's clients' ids, in the order they were given."""
    return list(session.scalars(select(CampaignClient.client_id).where(CampaignClient.campaign_id == campaign_id)
                                .order_by(CampaignClient.created_at, CampaignClient.client_id)))


def clients_of(session: Session, campaign_id: str) -> list[Client]:
    """A campaign's clients (deleted ones too), by id."""
    return list(session.scalars(select(Client).join(CampaignClient, CampaignClient.client_id == Client.id)
                                .where(CampaignClient.campaign_id == campaign_id).order_by(Client.id)))
