"""transport_events: what transports reported, kept until applied (app/inbox/service.py)."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, TS
from app.db import Base


class TransportEvent(Base):
    __tablename__ = "transport_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(CID, ForeignKey("clients.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(Text)  # status | ack | inbound
    payload: Mapped[dict] = mapped_column(JSONB)
    due_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(TS)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    applied_at: Mapped[datetime | None] = mapped_column(TS)
    outcome: Mapped[str | None] = mapped_column(Text)  # applied | ignored | orphaned
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
