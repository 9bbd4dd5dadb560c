"""Cross-cutting tables, and the one import that registers every model.

``import app.models`` maps the complete schema (schema.sql) on ``app.db.Base.metadata``: the
domain modules below are imported for that side effect. Views (v_client_stats,
v_organization_stats, v_campaign_progress) are not mapped.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Integer, Text, func, text as sqltext
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

# Every domain's models, so that the metadata is complete whatever is imported first.
from app.team.models import Organization, OrganizationSettings, User, UserClient  # noqa: F401,E402
from app.auth.models import RefreshToken  # noqa: F401,E402
from app.apikeys.models import ApiKey  # noqa: F401,E402
from app.audit.models import AuditLog  # noqa: F401,E402
from app.clients.models import BanAlert, Client, ClientSession, ClientStatusHistory, Proxy  # noqa: F401,E402
from app.contacts.models import Contact, ContactImport, ContactList, ContactListMember  # noqa: F401,E402
from app.templates.models import Template  # noqa: F401,E402
from app.media.models import Media  # noqa: F401,E402
from app.messages.models import Message, MessageStatusHistory  # noqa: F401,E402
from app.campaigns.models import Campaign, CampaignClient, CampaignRecipient  # noqa: F401,E402
from app.automations.models import Automation, AutomationRun  # noqa: F401,E402
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent  # noqa: F401,E402
from app.inbox.models import TransportEvent  # noqa: F401,E402
from app.analytics.models import AnalyticsDaily, AnalyticsHourly  # noqa: F401,E402

CID = Text(collation="C")
TS = DateTime(timezone=True)


class SchemaVersion(Base):
    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())


class JobOutbox(Base):
    """Jobs written in the caller's transaction and sent to the broker after commit (app/outbox.py)."""

    __tablename__ = "job_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    actor_name: Mapped[str] = mapped_column(Text)
    queue_name: Mapped[str] = mapped_column(Text)
    args: Mapped[list] = mapped_column(JSONB, server_default=sqltext("'[]'::jsonb"))
    kwargs: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    options: Mapped[dict] = mapped_column(JSONB, server_default=sqltext("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    dispatched_at: Mapped[datetime | None] = mapped_column(TS)
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")


class IdempotencyKey(Base):
    """``Idempotency-Key`` of a creating POST: in_flight, then completed with the first response."""

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    organization_id: Mapped[str] = mapped_column(CID, ForeignKey("organizations.id", ondelete="CASCADE"))
    principal_id: Mapped[str] = mapped_column(CID)
    key: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default="in_flight")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict | list | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(TS, server_default=sqltext("now() + interval '24 hours'"))
