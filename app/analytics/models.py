"""Rollups per organisation x client x campaign x UTC hour and day, written by the rollup job
(app/analytics/rollup.py), the job's watermark, and exports made by a worker (app/analytics/exports.py).
``campaign_id`` is '' outside campaigns."""
from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Double, Integer, Text, func
from sqlalchemy import text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.columns import CID, CLIENT_FK, ORG_FK, TS
from app.db import Base


class _Counts:
    """The numbers of a bucket (both tables have them all)."""

    sent: Mapped[int] = mapped_column(Integer, server_default="0")
    delivered: Mapped[int] = mapped_column(Integer, server_default="0")
    read: Mapped[int] = mapped_column(Integer, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, server_default="0")
    failures: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))  # {error code: count}
    received: Mapped[int] = mapped_column(Integer, server_default="0")
    replied: Mapped[int] = mapped_column(Integer, server_default="0")
    opted_out: Mapped[int] = mapped_column(Integer, server_default="0")
    response_seconds_sum: Mapped[float] = mapped_column(Double, server_default="0")
    response_count: Mapped[int] = mapped_column(Integer, server_default="0")
    #: {lower bound in seconds (RESPONSE_BOUNDS): count} of the response times: the p90 of a range
    response_buckets: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    delivery_seconds_sum: Mapped[float] = mapped_column(Double, server_default="0")
    delivery_count: Mapped[int] = mapped_column(Integer, server_default="0")
    read_seconds_sum: Mapped[float] = mapped_column(Double, server_default="0")
    read_count: Mapped[int] = mapped_column(Integer, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class AnalyticsHourly(_Counts, Base):
    __tablename__ = "analytics_hourly"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, CLIENT_FK())
    campaign_id: Mapped[str] = mapped_column(CID, server_default=sqltext("''"))
    bucket: Mapped[datetime] = mapped_column(TS)  # start of the hour


class AnalyticsDaily(_Counts, Base):
    __tablename__ = "analytics_daily"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, CLIENT_FK())
    campaign_id: Mapped[str] = mapped_column(CID, server_default=sqltext("''"))
    bucket: Mapped[date] = mapped_column(Date)  # the UTC day


class AnalyticsTotalsHourly(_Counts, Base):
    """``analytics_hourly`` with campaigns summed, per client and (``client_id`` '') per organisation."""

    __tablename__ = "analytics_totals_hourly"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, server_default=sqltext("''"))  # '' = the whole organisation
    bucket: Mapped[datetime] = mapped_column(TS)


class AnalyticsTotalsDaily(_Counts, Base):
    """``analytics_daily`` with campaigns summed, per client and (``client_id`` '') per organisation."""

    __tablename__ = "analytics_totals_daily"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    client_id: Mapped[str] = mapped_column(CID, server_default=sqltext("''"))
    bucket: Mapped[date] = mapped_column(Date)


class AnalyticsWatermark(Base):
    """How far the rollup job has read ``message_status_history`` (see app/analytics/rollup.py)."""

    __tablename__ = "analytics_watermarks"

    name: Mapped[str] = mapped_column(CID, primary_key=True)
    safe_id: Mapped[int] = mapped_column(BigInteger, server_default="0")
    seen_id: Mapped[int] = mapped_column(BigInteger, server_default="0")
    seen_xmax: Mapped[int] = mapped_column(BigInteger, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())



class AnalyticsExport(Base):
    """A CSV export made by the ``analytics.export`` job; the file is in media storage at ``storage_key``."""

    __tablename__ = "analytics_exports"

    id: Mapped[str] = mapped_column(CID, primary_key=True)
    organization_id: Mapped[str] = mapped_column(CID, ORG_FK())
    what: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(Text, server_default="csv")
    #: start / end (ISO 8601), client_id, and client_ids: the clients an agent may see (None: all)
    params: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(Text, server_default="queued")
    rows: Mapped[int | None] = mapped_column(BigInteger)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    storage_key: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(TS)
    created_by: Mapped[str | None] = mapped_column(CID)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(TS)
    finished_at: Mapped[datetime | None] = mapped_column(TS)
    expires_at: Mapped[datetime | None] = mapped_column(TS)
