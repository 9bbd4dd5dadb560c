"""The registry of every mapped table: ``import app.models`` maps the complete schema
(schema.sql) on ``app.db.Base.metadata``.

Only entry points import it (``create_app``, ``jobs``, the CLIs, migrations, the test suite):
domain code imports the models it uses from their domain, and foreign keys naming another
domain's table resolve once an entry point has registered them all. Views (v_client_stats,
v_organization_stats, v_campaign_progress) are not mapped.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Integer, func
from sqlalchemy.orm import Mapped, mapped_column

from app.analytics.models import (  # noqa: F401
    AnalyticsDaily,
    AnalyticsExport,
    AnalyticsHourly,
    AnalyticsTotalsDaily,
    AnalyticsTotalsHourly,
    AnalyticsWatermark,
)
from app.apikeys.models import ApiKey  # noqa: F401
from app.audit.models import AuditLog  # noqa: F401
from app.auth.models import RefreshToken  # noqa: F401
from app.automations.models import Automation, AutomationRun  # noqa: F401
from app.campaigns.models import Campaign, CampaignClient, CampaignRecipient  # noqa: F401
from app.clients.models import BanAlert, Client, ClientSession, ClientStatusHistory, Proxy  # noqa: F401
from app.columns import TS
from app.contacts.models import Contact, ContactImport, ContactList, ContactListMember  # noqa: F401
from app.db import Base
from app.idempotency import IdempotencyKey  # noqa: F401
from app.inbox.models import TransportEvent  # noqa: F401
from app.media.models import Media  # noqa: F401
from app.messages.models import Message, MessageStatusHistory  # noqa: F401
from app.outbox import JobOutbox  # noqa: F401
from app.team.models import Organization, OrganizationSettings, User, UserClient  # noqa: F401
from app.templates.models import Template, TemplateApproval  # noqa: F401
from app.webhooks.models import Webhook, WebhookDelivery, WebhookDeliveryAttempt, WebhookEvent  # noqa: F401


class SchemaVersion(Base):
    """The schema's version before migrations existed (a database that has it and no
    ``alembic_version`` is the baseline, see app/schema.py)."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime] = mapped_column(TS, server_default=func.now())
