"""Request and response schemas of the team: users and their client assignments."""
from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from app.pagination import ListArgs
from app.security.permissions import ROLES
from app.team.statuses import STATUSES

EMAIL: dict[str, Any] = {"validate": validate.Length(max=254)}
NAME: dict[str, Any] = {"validate": validate.Length(min=1, max=200)}
# the password policy (length >= 10, not the email) is checked by the service; this only bounds input
PASSWORD: dict[str, Any] = {"load_only": True, "validate": validate.Length(min=1, max=1000)}


class UserSchema(ma.Schema):
    id = fields.String(dump_only=True)
    organization_id = fields.String(dump_only=True)
    email = fields.String()
    name = fields.String()
    role = fields.String()
    status = fields.String()
    client_ids = fields.List(fields.String(), allow_none=True,
                             metadata={"description": "Clients an agent may use; null for other roles (every client)."})
    last_login_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class UserCreateSchema(ma.Schema):
    email = fields.Email(required=True, **EMAIL)
    name = fields.String(required=True, **NAME)
    password = fields.String(required=True, **PASSWORD)
    role = fields.String(required=True, validate=validate.OneOf(ROLES))


class UserUpdateSchema(ma.Schema):
    email = fields.Email(**EMAIL)
    name = fields.String(**NAME)
    password = fields.String(**PASSWORD)
    role = fields.String(validate=validate.OneOf(ROLES))
    status = fields.String(validate=validate.OneOf(STATUSES))


class UserClientsSchema(ma.Schema):
    client_ids = fields.List(fields.String(validate=validate.Length(min=1, max=64)), required=True,
                             validate=validate.Length(max=1000))


class UserListArgs(ListArgs):
    role = fields.String(validate=validate.OneOf(ROLES))
    status = fields.String(validate=validate.OneOf(STATUSES))
