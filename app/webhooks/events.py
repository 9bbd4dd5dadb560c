"""Emitting events: one ``webhook_events`` row in the caller's transaction (the event outbox), and
a fan-out job sent after commit that creates one delivery per subscribed endpoint.

Every event of API.md goes through ``emit``. ``data`` is the full resource as the API returns it.
"""
from __future__ import annotations

from app import outbox
from app.db import new_id

EVENT_TYPES = (
    "message.queued", "message.sent", "message.delivered", "message.read", "message.failed", "message.received",
    "client.qr", "client.connected", "client.disconnected", "client.banned",
    "campaign.started", "campaign.completed", "contact.opted_out", "webhook.test",
)


def emit(session, organization_id: str, event_type: str, data: dict):
    """Record ``event_type`` with ``data`` for ``organization_id``; deliveries follow the commit."""
    from app.webhooks.models import WebhookEvent

    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}; add it to EVENT_TYPES and API.md")
    event = WebhookEvent(id=new_id("evt"), organization_id=organization_id, type=event_type, payload=data)
    session.add(event)
    outbox.enqueue(session, "webhooks.fan_out", event.id, queue_name="webhooks")
    return event
