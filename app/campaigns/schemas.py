"""Request and response schemas of campaigns."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.campaigns.statuses import CAMPAIGN_STATUSES, RECIPIENT_STATUSES
from app.fields import UtcDateTime
from app.pagination import ListArgs

ID = fields.String(validate=validate.Length(min=1, max=64))
TAG = fields.String(validate=validate.Length(min=1, max=64))


class AudienceSchema(ma.Schema):
    all = fields.Boolean(metadata={"description": "Every contact of the organisation."})
    tags = fields.List(TAG, metadata={"description": "Contacts with these tags (`tags_match`: any or all)."})
    tags_match = fields.String(load_default="any", validate=validate.OneOf(("any", "all")))
    contact_ids = fields.List(ID)
    list_ids = fields.List(ID, metadata={"description": "Members of these contact lists."})
    attributes = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), values=fields.Raw(), metadata={
        "description": "Only contacts whose attribute has this value (or one of these values)."})
    exclude_tags = fields.List(TAG, metadata={"description": "Never contacts with one of these tags."})


class SendWindowSchema(ma.Schema):
    start = fields.String(required=True, metadata={"description": "HH:MM, in the recipient's time zone."})
    end = fields.String(required=True, metadata={"description": "HH:MM, after start."})
    days = fields.List(fields.String(), metadata={"description": "mon..sun (default every day)."})
    timezone = fields.String(allow_none=True, metadata={
        "description": "For recipients without a `timezone` attribute (default: the organisation's)."})


class FrequencyCapSchema(ma.Schema):
    max = fields.Integer(required=True, metadata={"description": "Campaign messages per contact..."})
    hours = fields.Integer(required=True, metadata={"description": "...in this many hours, across campaigns."})


_VARIABLES = fields.Dict(keys=fields.String(validate=validate.Length(max=100)), values=fields.Raw(), metadata={
    "description": "Template values for every recipient (a contact's own fields fill `{{name}}`, "
                   "`{{attributes.<key>}}`)."})
_RECIPIENT_VARIABLES = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), values=fields.Dict(),
                                   metadata={"description": "Per recipient (contact id or phone): template values "
                                                            "that win over `variables`."})


class CampaignCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    client_ids = fields.List(ID, required=True, validate=validate.Length(min=1, max=50), metadata={
        "description": "The clients to send from; recipients are spread over them."})
    template_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    message = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=4096), metadata={
        "description": "The text, when no template is used; it may hold placeholders too (`Hi {{name}}`)."})
    variables = _VARIABLES
    recipient_variables = _RECIPIENT_VARIABLES
    audience = fields.Nested(AudienceSchema, required=True)
    scheduled_at = UtcDateTime(load_default=None, allow_none=True, metadata={
        "description": "When `start` should send it (else at once)."})
    send_window = fields.Nested(SendWindowSchema, load_default=None, allow_none=True)
    frequency_cap = fields.Nested(FrequencyCapSchema, load_default=None, allow_none=True)


class CampaignUpdateSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    client_ids = fields.List(ID, validate=validate.Length(min=1, max=50))
    template_id = fields.String(allow_none=True, validate=validate.Length(max=64))
    message = fields.String(allow_none=True, validate=validate.Length(min=1, max=4096))
    variables = _VARIABLES
    recipient_variables = _RECIPIENT_VARIABLES
    audience = fields.Nested(AudienceSchema)
    scheduled_at = UtcDateTime(allow_none=True)
    send_window = fields.Nested(SendWindowSchema, allow_none=True)
    frequency_cap = fields.Nested(FrequencyCapSchema, allow_none=True)


class ProgressSchema(ma.Schema):
    total = fields.Integer(metadata={"description": "Recipients written so far."})
    queued = fields.Integer(metadata={"description": "Not sent yet."})
    sent = fields.Integer(metadata={"description": "Sent (delivered and read ones included)."})
    delivered = fields.Integer(metadata={"description": "Delivered (read ones included)."})
    read = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer(metadata={"description": "Opted out, over the frequency cap, or without a variable."})
    cancelled = fields.Integer()
    replied = fields.Integer(metadata={"description": "Recipients who wrote back after their message."})


class EtaClientSchema(ma.Schema):
    client_id = fields.String()
    recipients = fields.Integer()
    seconds = fields.Float(allow_none=True)


class EtaSchema(ma.Schema):
    recipients = fields.Integer(metadata={"description": "Messages still to send."})
    seconds = fields.Float(allow_none=True, metadata={"description": "How long they take at the clients' limits."})
    finishes_at = fields.DateTime(allow_none=True)
    clients = fields.List(fields.Nested(EtaClientSchema))
    skipped = fields.Integer(metadata={"description": "Contacts of the audience that will be skipped (opted out)."})


class CampaignSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    status = fields.String(metadata={"description": " | ".join(CAMPAIGN_STATUSES)})
    client_ids = fields.List(fields.String())
    template_id = fields.String(allow_none=True)
    message = fields.String(allow_none=True)
    variables = fields.Dict()
    audience = fields.Dict()
    scheduled_at = fields.DateTime(allow_none=True)
    send_window = fields.Dict(allow_none=True)
    frequency_cap = fields.Dict(allow_none=True)
    progress = fields.Nested(ProgressSchema)
    eta = fields.Nested(EtaSchema, allow_none=True, metadata={
        "description": "While scheduled, running or paused: how long what is left takes."})
    started_at = fields.DateTime(allow_none=True)
    paused_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class CampaignListArgs(ListArgs):
    status = fields.String(validate=validate.OneOf(CAMPAIGN_STATUSES))


class RecipientSchema(ma.Schema):
    id = fields.Integer()
    contact_id = fields.String()
    phone = fields.String()
    name = fields.String(allow_none=True)
    client_id = fields.String(allow_none=True)
    message_id = fields.String(allow_none=True)
    status = fields.String(metadata={"description": " | ".join(RECIPIENT_STATUSES)})
    reason = fields.String(allow_none=True, metadata={"description": "Why skipped or failed."})
    replied_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class RecipientListArgs(ListArgs):
    status = fields.String(validate=validate.OneOf(RECIPIENT_STATUSES))


class TestSendSchema(ma.Schema):
    to = fields.String(required=True, validate=validate.Length(max=32), metadata={"description": "E.164."})
    client_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64), metadata={
        "description": "One of the campaign's clients (default: the first)."})
