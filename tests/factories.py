"""One factory per model: ``make_<snake_name>(session, **overrides)``.

Each builds a valid row with sensible defaults, ``session.add()``s it, flushes and returns it.
Overrides are column values (``organization_id=...``, ``client_id=...``, ``status=...``). Required
parents that are not given are created through the other factories, in the same organisation:
the organisation is ``organization_id`` if given, else that of a given parent, else a new one.
"""
from __future__ import annotations

import hashlib
import itertools
import secrets
from datetime import timedelta

from app.db import new_id, utcnow
from app.models import (
    AnalyticsDaily,
    AnalyticsExport,
    AnalyticsHourly,
    AnalyticsTotalsDaily,
    AnalyticsTotalsHourly,
    AnalyticsWatermark,
    ApiKey,
    AuditLog,
    Automation,
    AutomationRun,
    BanAlert,
    Campaign,
    CampaignClient,
    CampaignRecipient,
    Client,
    ClientSession,
    ClientStatusHistory,
    Contact,
    ContactImport,
    ContactList,
    ContactListMember,
    IdempotencyKey,
    JobOutbox,
    Media,
    Message,
    MessageStatusHistory,
    Organization,
    OrganizationSettings,
    Proxy,
    RefreshToken,
    SchemaVersion,
    Template,
    TemplateApproval,
    User,
    UserClient,
    Webhook,
    WebhookDelivery,
    WebhookDeliveryAttempt,
    WebhookEvent,
)

# Not a real hash: the auth code brings bcrypt; tests that log in set their own hash.
PASSWORD_HASH_PLACEHOLDER = "$2b$12$placeholderplaceholderplaceholderplaceholderpla"

# random start so that rows committed by parallel test processes do not collide
_seq = itertools.count(secrets.randbelow(10**6) * 1000)


def _n() -> int:
    return next(_seq)


def _hex(nbytes: int = 32) -> str:
    return secrets.token_hex(nbytes)


def _phone() -> str:
    return f"+1555{_n() % 10**7:07d}"


def _save(session, model, defaults: dict, overrides: dict):
    obj = model(**{**defaults, **overrides})
    session.add(obj)
    session.flush()
    return obj


def _org(session, overrides: dict, *parents: tuple[str, type]) -> str:
    """The organisation of the new row (also written into ``overrides``)."""
    org_id = overrides.get("organization_id")
    if org_id is None:
        for key, model in parents:
            if overrides.get(key) is not None:
                org_id = session.get(model, overrides[key]).organization_id
                break
    if org_id is None:
        org_id = make_organization(session).id
    overrides["organization_id"] = org_id
    return org_id


def _parent(session, overrides: dict, key: str, factory, **kw) -> str:
    """The id of a required parent: the one given, or a new one in the row's organisation."""
    if overrides.get(key) is None:
        overrides[key] = factory(session, organization_id=overrides["organization_id"], **kw).id
    return overrides[key]


# --- team -------------------------------------------------------------------------------------

def make_organization(session, **overrides) -> Organization:
    return _save(session, Organization, {"id": new_id("org"), "name": f"Org {_n()}"}, overrides)


def make_organization_settings(session, **overrides) -> OrganizationSettings:
    _org(session, overrides)
    return _save(session, OrganizationSettings, {"timezone": "UTC"}, overrides)


def make_user(session, **overrides) -> User:
    _org(session, overrides)
    n = _n()
    return _save(session, User, {
        "id": new_id("usr"), "email": f"user{n}@example.test", "password_hash": PASSWORD_HASH_PLACEHOLDER,
        "name": f"User {n}", "role": "admin", "status": "active",
    }, overrides)


def make_user_client(session, **overrides) -> UserClient:
    _org(session, overrides, ("user_id", User), ("client_id", Client))
    _parent(session, overrides, "user_id", make_user, role="agent")
    _parent(session, overrides, "client_id", make_client)
    return _save(session, UserClient, {}, overrides)


# --- auth, keys, audit ------------------------------------------------------------------------

def make_refresh_token(session, **overrides) -> RefreshToken:
    _org(session, overrides, ("user_id", User))
    _parent(session, overrides, "user_id", make_user)
    return _save(session, RefreshToken, {
        "id": new_id("rtk"), "token_hash": hashlib.sha256(_hex().encode()).hexdigest(),
        "family_id": new_id("rtf"), "expires_at": utcnow() + timedelta(days=30),
        "user_agent": "pytest", "ip": "127.0.0.1",
    }, overrides)


def make_api_key(session, **overrides) -> ApiKey:
    _org(session, overrides)
    return _save(session, ApiKey, {
        "id": new_id("key"), "name": f"key {_n()}", "prefix": f"sk_{_hex(6)}", "key_hash": _hex(),
        "role": "admin",
    }, overrides)


def make_audit_log(session, **overrides) -> AuditLog:
    _org(session, overrides)
    return _save(session, AuditLog, {
        "id": new_id("aud"), "actor_type": "system", "action": "test.action", "changes": {},
    }, overrides)


# --- clients ----------------------------------------------------------------------------------

def make_proxy(session, **overrides) -> Proxy:
    _org(session, overrides)
    return _save(session, Proxy, {
        "id": new_id("prx"), "name": f"proxy {_n()}", "scheme": "http", "host": "proxy.example.test", "port": 8080,
    }, overrides)


def make_client(session, **overrides) -> Client:
    _org(session, overrides)
    return _save(session, Client, {
        "id": new_id("cli"), "name": f"Client {_n()}", "transport": "sim", "config": {}, "status": "created",
    }, overrides)


def make_client_status_history(session, **overrides) -> ClientStatusHistory:
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    return _save(session, ClientStatusHistory, {"from_status": "created", "status": "starting"}, overrides)


def make_client_session(session, **overrides) -> ClientSession:
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client, transport="web")
    return _save(session, ClientSession, {"state_encrypted": None, "host_id": "host-test"}, overrides)


def make_ban_alert(session, **overrides) -> BanAlert:
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    return _save(session, BanAlert, {"id": new_id("alr"), "kind": "banned", "details": {}}, overrides)


# --- contacts ---------------------------------------------------------------------------------

def make_contact(session, **overrides) -> Contact:
    _org(session, overrides)
    n = _n()
    return _save(session, Contact, {
        "id": new_id("ctc"), "phone": _phone(), "name": f"Contact {n}", "tags": [], "attributes": {},
    }, overrides)


def make_contact_list(session, **overrides) -> ContactList:
    _org(session, overrides)
    return _save(session, ContactList, {"id": new_id("lst"), "name": f"List {_n()}"}, overrides)


def make_contact_list_member(session, **overrides) -> ContactListMember:
    _org(session, overrides, ("list_id", ContactList), ("contact_id", Contact))
    _parent(session, overrides, "list_id", make_contact_list)
    _parent(session, overrides, "contact_id", make_contact)
    return _save(session, ContactListMember, {}, overrides)


def make_contact_import(session, **overrides) -> ContactImport:
    _org(session, overrides)
    return _save(session, ContactImport, {
        "id": new_id("imp"), "filename": "contacts.csv", "storage_key": f"imports/{_hex(8)}.csv", "status": "queued",
    }, overrides)


# --- templates, media -------------------------------------------------------------------------

def make_template(session, **overrides) -> Template:
    _org(session, overrides)
    return _save(session, Template, {
        "id": new_id("tpl"), "name": f"template_{_n()}", "language": "en", "body": "Hello {{name}}!",
        "variables": ["name"],
    }, overrides)


def make_template_approval(session, **overrides) -> TemplateApproval:
    """A template's review on a client (approved unless told)."""
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "template_id", make_template)
    _parent(session, overrides, "client_id", make_client)
    return _save(session, TemplateApproval, {"status": "approved"}, overrides)


def make_media(session, **overrides) -> Media:
    from app.media.checks import natural_kind

    _org(session, overrides)
    overrides.setdefault("kind", natural_kind(overrides.get("mime_type", "image/png")))
    return _save(session, Media, {
        "id": new_id("med"), "filename": "image.png", "mime_type": "image/png", "size_bytes": 1234,
        "sha256": hashlib.sha256(_hex().encode()).hexdigest(), "storage_key": f"media/{_hex(8)}", "status": "ready",
    }, overrides)


# --- messages ---------------------------------------------------------------------------------

def make_message(session, **overrides) -> Message:
    """An outbound text message, queued; ``direction="inbound"`` gives a received one."""
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    if overrides.get("direction") == "inbound":
        defaults = {"from_phone": _phone(), "status": "received"}
    else:
        defaults = {"direction": "outbound", "to_phone": _phone(), "status": "queued", "queued_at": utcnow()}
    return _save(session, Message, {
        "id": new_id("msg"), "type": "text", "text": "hello", "variables": {}, **defaults,
    }, overrides)


def make_message_status_history(session, **overrides) -> MessageStatusHistory:
    _org(session, overrides, ("message_id", Message))
    _parent(session, overrides, "message_id", make_message)
    return _save(session, MessageStatusHistory, {"status": "queued", "details": {}}, overrides)


# --- campaigns --------------------------------------------------------------------------------

def make_campaign(session, **overrides) -> Campaign:
    _org(session, overrides)
    return _save(session, Campaign, {
        "id": new_id("cmp"), "name": f"Campaign {_n()}", "status": "draft", "message": "Hello!",
        "audience": {"tags": ["test"]},
    }, overrides)


def make_campaign_client(session, **overrides) -> CampaignClient:
    _org(session, overrides, ("campaign_id", Campaign), ("client_id", Client))
    _parent(session, overrides, "campaign_id", make_campaign)
    _parent(session, overrides, "client_id", make_client)
    return _save(session, CampaignClient, {}, overrides)


def make_campaign_recipient(session, **overrides) -> CampaignRecipient:
    _org(session, overrides, ("campaign_id", Campaign), ("contact_id", Contact))
    _parent(session, overrides, "campaign_id", make_campaign)
    _parent(session, overrides, "contact_id", make_contact)
    return _save(session, CampaignRecipient, {"status": "pending"}, overrides)


# --- automations ------------------------------------------------------------------------------

def make_automation(session, **overrides) -> Automation:
    _org(session, overrides)
    return _save(session, Automation, {
        "id": new_id("aut"), "name": f"Automation {_n()}", "trigger_type": "keyword",
        "trigger": {"type": "keyword", "keywords": ["hello"]},
        "action": {"type": "reply", "message": "Hi! We'll get back to you."},
        "actions": [{"type": "reply", "message": "Hi! We'll get back to you."}], "enabled": True,
    }, overrides)


def make_automation_run(session, **overrides) -> AutomationRun:
    _org(session, overrides, ("automation_id", Automation))
    _parent(session, overrides, "automation_id", make_automation)
    return _save(session, AutomationRun, {"status": "fired"}, overrides)


# --- webhooks ---------------------------------------------------------------------------------

def make_webhook(session, **overrides) -> Webhook:
    _org(session, overrides)
    return _save(session, Webhook, {
        "id": new_id("whk"), "url": "https://hooks.example.test/wa", "events": ["*"], "enabled": True,
        # placeholder: real rows hold the output of the field-encryption helper
        "secret_encrypted": f"test-unencrypted:whsec_{_hex(24)}",
    }, overrides)


def make_webhook_event(session, **overrides) -> WebhookEvent:
    _org(session, overrides)
    return _save(session, WebhookEvent, {"id": new_id("evt"), "type": "webhook.test", "payload": {}}, overrides)


def make_webhook_delivery(session, **overrides) -> WebhookDelivery:
    _org(session, overrides, ("webhook_id", Webhook), ("event_id", WebhookEvent))
    _parent(session, overrides, "webhook_id", make_webhook)
    _parent(session, overrides, "event_id", make_webhook_event)
    return _save(session, WebhookDelivery, {
        "id": new_id("dlv"), "status": "pending", "attempt": 0, "next_attempt_at": utcnow(),
    }, overrides)


def make_webhook_delivery_attempt(session, **overrides) -> WebhookDeliveryAttempt:
    _org(session, overrides, ("delivery_id", WebhookDelivery))
    if overrides.get("delivery_id") is None:
        delivery = make_webhook_delivery(session, organization_id=overrides["organization_id"],
                                         **({"webhook_id": overrides["webhook_id"]} if overrides.get("webhook_id") else {}))
    else:
        delivery = session.get(WebhookDelivery, overrides["delivery_id"])
    overrides.setdefault("delivery_id", delivery.id)
    overrides.setdefault("webhook_id", delivery.webhook_id)
    return _save(session, WebhookDeliveryAttempt, {
        "attempt": 1, "status_code": 200, "duration_ms": 12, "response_excerpt": "ok",
    }, overrides)


# --- analytics --------------------------------------------------------------------------------

def make_analytics_hourly(session, **overrides) -> AnalyticsHourly:
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    bucket = utcnow().replace(minute=0, second=0, microsecond=0)
    return _save(session, AnalyticsHourly, {
        "bucket": bucket, "sent": 10, "delivered": 8, "read": 5, "failed": 1, "received": 3,
        "response_seconds_sum": 120.0, "response_count": 3,
    }, overrides)


def make_analytics_daily(session, **overrides) -> AnalyticsDaily:
    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    return _save(session, AnalyticsDaily, {
        "bucket": utcnow().date(), "sent": 10, "delivered": 8, "read": 5, "failed": 1, "received": 3,
        "response_seconds_sum": 120.0, "response_count": 3,
    }, overrides)


def make_analytics_watermark(session, **overrides) -> AnalyticsWatermark:
    return _save(session, AnalyticsWatermark, {"name": f"test-{_n()}", "safe_id": 0, "seen_id": 0, "seen_xmax": 0},
                 overrides)


def make_analytics_totals_hourly(session, **overrides) -> AnalyticsTotalsHourly:
    _org(session, overrides)
    bucket = utcnow().replace(minute=0, second=0, microsecond=0)
    return _save(session, AnalyticsTotalsHourly, {"client_id": "", "bucket": bucket, "sent": 10, "delivered": 8},
                 overrides)


def make_analytics_totals_daily(session, **overrides) -> AnalyticsTotalsDaily:
    _org(session, overrides)
    return _save(session, AnalyticsTotalsDaily, {"client_id": "", "bucket": utcnow().date(), "sent": 10,
                                                 "delivered": 8}, overrides)


def make_analytics_export(session, **overrides) -> AnalyticsExport:
    _org(session, overrides)
    return _save(session, AnalyticsExport, {
        "id": new_id("exp"), "what": "rollups", "format": "csv", "status": "queued",
        "params": {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-02T00:00:00+00:00"},
    }, overrides)


# --- cross-cutting ----------------------------------------------------------------------------

def make_transport_event(session, **overrides):
    from app.inbox.models import TransportEvent

    _org(session, overrides, ("client_id", Client))
    _parent(session, overrides, "client_id", make_client)
    return _save(session, TransportEvent, {"kind": "status", "payload": {"status": "ready", "detail": {}}}, overrides)


def make_schema_version(session, **overrides) -> SchemaVersion:
    """A made-up later version (schema.sql inserts version 1)."""
    return _save(session, SchemaVersion, {"version": 1_000_000 + _n()}, overrides)


def make_job_outbox(session, **overrides) -> JobOutbox:
    return _save(session, JobOutbox, {
        "actor_name": "test.noop", "queue_name": "default", "args": [], "kwargs": {}, "options": {},
    }, overrides)


def make_idempotency_key(session, **overrides) -> IdempotencyKey:
    _org(session, overrides)
    return _save(session, IdempotencyKey, {
        "principal_id": new_id("usr"), "key": _hex(16), "method": "POST", "path": "/api/messages",
        "request_hash": _hex(), "status": "in_flight", "expires_at": utcnow() + timedelta(hours=24),
    }, overrides)
