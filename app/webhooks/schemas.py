"""Request and response schemas of webhooks, their deliveries and delivery attempts."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.pagination import ListArgs
from app.webhooks.events import EVENT_TYPES

MAX_DESCRIPTION = 500
EVENTS_DOC = f"Event types to receive (exact names: {', '.join(EVENT_TYPES)}), or `[\"*\"]` for all."


class WebhookSchema(ma.Schema):
    id = fields.String()
    url = fields.String()
    events = fields.List(fields.String())
    description = fields.String(allow_none=True)
    enabled = fields.Boolean()
    disabled_reason = fields.String(allow_none=True, metadata={
        "description": "Why the platform disabled the endpoint (410 Gone, or failing for 5 days); null otherwise."})
    failing_since = fields.DateTime(allow_none=True, metadata={
        "description": "First failed attempt since the last success; null while healthy."})
    consecutive_failures = fields.Integer()
    last_success_at = fields.DateTime(allow_none=True)
    previous_secret_expires_at = fields.DateTime(allow_none=True, metadata={
        "description": "Until then the previous secret signs alongside the current one (after a rotation)."})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class WebhookWithSecretSchema(WebhookSchema):
    secret = fields.String(metadata={
        "description": "`whsec_` + base64 of 32 random bytes. Shown only on create and on rotate."})


class WebhookCreateSchema(ma.Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048),
                        metadata={"description": "http(s) URL on a public address."})
    events = fields.List(fields.String(validate=validate.Length(max=64)), required=True,
                         validate=validate.Length(min=1, max=len(EVENT_TYPES) + 1),
                         metadata={"description": EVENTS_DOC})
    description = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION))


class WebhookUpdateSchema(ma.Schema):
    url = fields.String(validate=validate.Length(min=1, max=2048))
    events = fields.List(fields.String(validate=validate.Length(max=64)),
                         validate=validate.Length(min=1, max=len(EVENT_TYPES) + 1),
                         metadata={"description": EVENTS_DOC})
    enabled = fields.Boolean(metadata={"description": "Re-enabling redelivers nothing by itself; use redeliver."})
    description = fields.String(allow_none=True, validate=validate.Length(max=MAX_DESCRIPTION))


class WebhookListArgs(ListArgs):
    enabled = fields.Boolean(load_default=None, allow_none=True)


class DeliveryAttemptSchema(ma.Schema):
    id = fields.String(metadata={"description": "The delivery (`dlv_...`): what redeliver takes."})
    attempt_id = fields.Integer(metadata={"description": "This attempt's own id."})
    event_id = fields.String()
    event_type = fields.String()
    attempt = fields.Integer(metadata={"description": "1 for the first try; a redelivery starts again at 1."})
    status_code = fields.Integer(allow_none=True, metadata={
        "description": "null: no HTTP answer (timeout, connection error, refused address)."})
    duration_ms = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True)
    response = fields.String(allow_none=True, metadata={"description": "The first 2 KB of the response body."})
    succeeded = fields.Boolean()
    created_at = fields.DateTime()
    next_attempt_at = fields.DateTime(allow_none=True,
                                      metadata={"description": "When the next try is scheduled, if any."})


class DeliveryAttemptListArgs(ListArgs):
    event_id = fields.String(load_default=None, validate=validate.Length(max=64))


class DeliverySchema(ma.Schema):
    id = fields.String()
    webhook_id = fields.String()
    event_id = fields.String()
    event_type = fields.String()
    status = fields.String(metadata={
        "description": "pending, delivering, failed (a retry is scheduled), succeeded or dead."})
    attempt = fields.Integer(metadata={"description": "Attempts made so far (since the last redelivery)."})
    next_attempt_at = fields.DateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    attempts = fields.List(fields.Nested(DeliveryAttemptSchema), metadata={"description": "Oldest first."})


class WebhookTestResultSchema(ma.Schema):
    event_id = fields.String()
    delivery_id = fields.String()
    type = fields.String()
