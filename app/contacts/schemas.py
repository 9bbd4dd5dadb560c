"""Request and response schemas of contacts."""
from __future__ import annotations

import json

import marshmallow as ma
from marshmallow import fields, validate

from app.pagination import ListArgs

MAX_TAGS = 50
MAX_ATTRIBUTES_BYTES = 16 * 1024
TAG = fields.String(validate=validate.Length(min=1, max=64))


def _attributes_size(value: dict) -> None:
    if len(value) > 100:
        raise ma.ValidationError("At most 100 attributes.")
    if any(len(k) > 64 for k in value):
        raise ma.ValidationError("Attribute names are at most 64 characters.")
    if len(json.dumps(value, separators=(",", ":"), default=str)) > MAX_ATTRIBUTES_BYTES:
        raise ma.ValidationError(f"At most {MAX_ATTRIBUTES_BYTES} bytes of JSON.")


class ContactSchema(ma.Schema):
    id = fields.String()
    phone = fields.String(metadata={"description": "E.164, unique in the organisation."})
    name = fields.String(allow_none=True)
    tags = fields.List(fields.String())
    attributes = fields.Dict()
    opted_out = fields.Boolean(metadata={"description": "Sends to this contact are refused (422 contact_opted_out)."})
    opted_out_at = fields.DateTime(allow_none=True)
    opted_in_at = fields.DateTime(allow_none=True)
    last_inbound_at = fields.DateTime(allow_none=True)
    last_outbound_at = fields.DateTime(allow_none=True)
    assigned_user_id = fields.String(allow_none=True, metadata={
        "description": "The user in charge of the contact (set by an automation's `assign` action)."})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ContactCreateSchema(ma.Schema):
    phone = fields.String(required=True, validate=validate.Length(max=32),
                          metadata={"description": "E.164 (+14155550123)."})
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    tags = fields.List(TAG, load_default=list, validate=validate.Length(max=MAX_TAGS))
    attributes = fields.Dict(keys=fields.String(), load_default=dict, validate=_attributes_size)
    opted_out = fields.Boolean(load_default=None, metadata={
        "description": "Default false; re-creating a deleted contact keeps its opt-out unless given."})


class ContactUpdateSchema(ma.Schema):
    phone = fields.String(validate=validate.Length(max=32))
    name = fields.String(allow_none=True, validate=validate.Length(max=200))
    tags = fields.List(TAG, validate=validate.Length(max=MAX_TAGS), metadata={"description": "Replaces the tags."})
    attributes = fields.Dict(keys=fields.String(), validate=_attributes_size,
                             metadata={"description": "Replaces the attributes."})
    opted_out = fields.Boolean()


class ContactListArgs(ListArgs):
    tag = fields.String(validate=validate.Length(min=1, max=64), metadata={"description": "Contacts with this tag."})
    q = fields.String(validate=validate.Length(min=1, max=100),
                      metadata={"description": "Part of the name or of the phone number."})
    opted_out = fields.Boolean()
