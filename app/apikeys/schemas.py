"""Request and response schemas of API keys."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.fields import UtcDateTime
from app.pagination import ListArgs
from app.security.permissions import ROLES


class ApiKeySchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    role = fields.String(metadata={"description": "The role the key was created with."})
    effective_role = fields.String(allow_none=True, metadata={
        "description": "The role the key acts with now: its role, capped at its creator's current role; "
                       "null while its creator is disabled (the key is refused)."})
    prefix = fields.String(metadata={"description": "The first characters of the key, to recognise it."})
    created_by = fields.String(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True,
                                   metadata={"description": "Updated at most once a minute."})
    created_at = fields.DateTime()


class ApiKeyCreatedSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    role = fields.String()
    prefix = fields.String()
    key = fields.String(metadata={"description": "The key (`sk_...`): shown only in this response."})
    expires_at = fields.DateTime(allow_none=True)
    created_by = fields.String(allow_none=True)
    created_at = fields.DateTime()


class ApiKeyCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    expires_at = UtcDateTime(load_default=None, allow_none=True,
                             metadata={"description": "ISO 8601; without an offset, UTC."})


class ApiKeyListArgs(ListArgs):
    include_revoked = fields.Boolean(load_default=False)
