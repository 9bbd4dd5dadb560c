"""Per-client hourly and daily rollups (UTC buckets), upserted by the rollup job."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Double, Integer, func
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, CLIENT_FK, ORG_FK, TS
from app.db import Base


class AnalyticsHourly(Base):
    __tablename__ = "analytics_hourly"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, CLIENT_FK())
    bucket: Mapped[datetime] = mapped_column(TS)  # start of the hour
    sent: Mapped[int] = mapped_column(Integer, server_default="0")
    delivered: Mapped[int] = mapped_column(Integer, server_default="0")
    read: Mapped[int] = mapped_column(Integer, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, server_default="0")
    received: Mapped[int] = mapped_column(Integer, server_default="0")
    response_seconds_sum: Mapped[float] = mapped_column(Double, server_default="0")
    response_count: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class AnalyticsDaily(Base):
    __tablename__ = "analytics_daily"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, CLIENT_FK())
    bucket: Mapped[date] = mapped_column(Date)  # the UTC day
    sent: Mapped[int] = mapped_column(Integer, server_default="0")
    delivered: Mapped[int] = mapped_column(Integer, server_default="0")
    read: Mapped[int] = mapped_column(Integer, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, server_default="0")
    received: Mapped[int] = mapped_column(Integer, server_default="0")
    response_seconds_sum: Mapped[float] = mapped_column(Double, server_default="0")
    response_count: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
