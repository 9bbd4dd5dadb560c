"""Response schema and filters of the audit log."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.fields import UtcDateTime
from app.pagination import ListArgs


class AuditLogSchema(ma.Schema):
    id = fields.String()
    actor_type = fields.String(metadata={"description": "`user`, `api_key` or `system`."})
    actor_id = fields.String(allow_none=True)
    action = fields.String(metadata={"description": "`<domain>.<verb>`, e.g. `user.update`, `auth.login_failed`."})
    target_type = fields.String(allow_none=True)
    target_id = fields.String(allow_none=True)
    ip = fields.String(allow_none=True)
    user_agent = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    changes = fields.Dict(metadata={"description": "The fields changed (`{field: {from, to}}`) or the "
                                                   "action's details; never secrets."})
    created_at = fields.DateTime()


class AuditLogListArgs(ListArgs):
    actor = fields.String(validate=validate.Length(max=64),
                          metadata={"description": "A user or API key id, or `system`."})
    action = fields.String(validate=validate.Length(max=100),
                           metadata={"description": "An action, or a prefix ending in `*` (`user.*`)."})
    since = UtcDateTime(metadata={"description": "Only rows at or after this time (ISO 8601)."})
    target = fields.String(validate=validate.Length(max=64), metadata={"description": "A target id."})
