"""Request and response schemas of contacts."""
from __future__ import annotations

import json

import marshmallow as ma
from flask_smorest.fields import Upload
from marshmallow import fields, validate

from app.contacts.statuses import IMPORT_STATUSES
from app.pagination import ListArgs

MAX_TAGS = 50
MAX_MEMBER_IDS = 1000
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
    list_id = fields.String(validate=validate.Length(min=1, max=64),
                            metadata={"description": "Members of this contact list (422 if there is no such list)."})


# ----------------------------------------------------------------------------- imports


class ImportErrorSchema(ma.Schema):
    line = fields.Integer(metadata={"description": "Line of the file the row starts on (the header is line 1)."})
    reason = fields.String()


class ContactImportSchema(ma.Schema):
    id = fields.String()
    status = fields.String(metadata={"description": "queued, running, completed or failed."})
    filename = fields.String(allow_none=True)
    list_id = fields.String(allow_none=True, metadata={"description": "Every imported contact is added to this list."})
    default_region = fields.String(allow_none=True)
    total = fields.Integer(attribute="total_rows", metadata={
        "description": "Rows read so far: created + updated + duplicates + invalid."})
    created = fields.Integer(attribute="created_count",
                             metadata={"description": "New contacts (or deleted ones revived)."})
    updated = fields.Integer(attribute="updated_count", metadata={"description": "Contacts that existed."})
    invalid = fields.Integer(attribute="invalid_count", metadata={"description": "Rows not imported (see errors)."})
    duplicates = fields.Integer(attribute="duplicate_count", metadata={
        "description": "Rows repeating a number seen earlier in the file (merged into that contact)."})
    errors = fields.List(fields.Nested(ImportErrorSchema), metadata={"description": "The first 100 invalid rows."})
    error = fields.String(attribute="error_message", allow_none=True,
                          metadata={"description": "Why the import failed (status failed)."})
    size_bytes = fields.Integer()
    processed_bytes = fields.Integer(metadata={"description": "Bytes of the file read so far (progress)."})
    progress = fields.Method("_progress", metadata={"description": "processed_bytes / size_bytes, 0 to 1."})
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    completed_at = fields.DateTime(allow_none=True)
    updated_at = fields.DateTime()

    def _progress(self, obj) -> float:
        if obj.status == "completed" or not obj.size_bytes:
            return 1.0 if obj.status == "completed" else 0.0
        return round(min(1.0, obj.processed_bytes / obj.size_bytes), 4)


class ContactImportUploadSchema(ma.Schema):
    """The multipart body of an import: the file and the form fields beside it."""

    file = Upload(required=True, metadata={"description": "The CSV file (UTF-8, `,` or `;` between fields)."})
    mapping = fields.String(load_default=None, validate=validate.Length(max=16384), metadata={
        "description": 'JSON object: CSV header -> "phone", "name", "tags", "attributes.<key>" or null (left out).'})
    list_id = fields.String(load_default=None, validate=validate.Length(min=1, max=64),
                            metadata={"description": "A contact list every imported contact joins."})
    default_region = fields.String(load_default=None, validate=validate.Length(max=8), metadata={
        "description": "Region of numbers written without + (e.g. US); default CONTACT_IMPORT_DEFAULT_REGION."})


class ContactImportListArgs(ListArgs):
    status = fields.String(validate=validate.OneOf(IMPORT_STATUSES))


# ----------------------------------------------------------------------------- lists


class ContactListSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    description = fields.String(allow_none=True)
    member_count = fields.Integer(metadata={"description": "Members that are contacts (deleted contacts not counted)."})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ContactListCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    description = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=1000))


class ContactListUpdateSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    description = fields.String(allow_none=True, validate=validate.Length(max=1000))


class ContactListMembersSchema(ma.Schema):
    contact_ids = fields.List(fields.String(validate=validate.Length(min=1, max=64)), required=True,
                              validate=validate.Length(min=1, max=MAX_MEMBER_IDS),
                              metadata={"description": f"Contact ids, at most {MAX_MEMBER_IDS}."})


class ContactListMembersResultSchema(ma.Schema):
    added = fields.Integer(metadata={"description": "Contacts that were not members yet."})
    removed = fields.Integer(metadata={"description": "Contacts that were members."})
    member_count = fields.Integer()
