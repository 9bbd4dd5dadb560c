"""WhatsApp accounts (clients), their proxies, session state, status history and alerts."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.columns import CID, ORG_FK, TS
from app.db import Base, new_id


class Proxy(Base):
    __tablename__ = "proxies"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("prx"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    name: Mapped[str | None] = mapped_column(Text)
    scheme: Mapped[str] = mapped_column(Text)  # http | https | socks5
    host: Mapped[str] = mapped_column(Text)
    port: Mapped[int] = mapped_column(Integer)
    username: Mapped[str | None] = mapped_column(Text)
    password_encrypted: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="unchecked")  # unchecked | ok | failing | dead
    last_checked_at: Mapped[datetime | None] = mapped_column(TS)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)


class Client(Base):
    """A WhatsApp account. The API's ``limits`` object is the five per_*/..._gap_ms columns."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("cli"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    name: Mapped[str] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(Text)  # sim | cloud | web
    config: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    secrets_encrypted: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="created")
    status_changed_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    per_minute: Mapped[int] = mapped_column(Integer, server_default="20")
    per_hour: Mapped[int] = mapped_column(Integer, server_default="100")
    per_day: Mapped[int] = mapped_column(Integer, server_default="1000")
    min_gap_ms: Mapped[int] = mapped_column(Integer, server_default="2000")
    max_gap_ms: Mapped[int] = mapped_column(Integer, server_default="5000")
    proxy_id: Mapped[str | None] = mapped_column(CID, ForeignKey("proxies.id", ondelete="SET NULL"))
    paused: Mapped[bool] = mapped_column(Boolean, server_default=sqltext("false"))
    qr: Mapped[str | None] = mapped_column(Text)
    qr_expires_at: Mapped[datetime | None] = mapped_column(TS)
    last_seen_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    deleted_at: Mapped[datetime | None] = mapped_column(TS)

    proxy: Mapped[Proxy | None] = relationship()


class ClientStatusHistory(Base):
    __tablename__ = "client_status_history"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"))
    from_status: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class ClientSession(Base):
    """Encrypted login state of a stateful (web) session and the session host leasing it."""

    __tablename__ = "client_sessions"

    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    state_encrypted: Mapped[str | None] = mapped_column(Text)
    host_id: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TS)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class BanAlert(Base):
    """An alert for a human: banned, logged_out, disconnected, proxy_dead, rate_limited,
    session_failed, webhook_disabled, quota_exceeded. ``client_id`` is null for non-client alerts."""

    __tablename__ = "ban_alerts"

    id: Mapped[str] = mapped_column(CID, primary_key=True, default=lambda: new_id("alr"))
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str | None] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)
    details: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    acknowledged_at: Mapped[datetime | None] = mapped_column(TS)
    acknowledged_by: Mapped[str | None] = mapped_column(CID, ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
