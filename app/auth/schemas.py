"""Request and response schemas of sign-up, login, refresh, logout and ``me``."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.team.schemas import EMAIL, NAME, PASSWORD, UserSchema


class RegisterSchema(ma.Schema):
    organization = fields.String(required=True, **NAME)
    name = fields.String(required=True, **NAME)
    email = fields.Email(required=True, **EMAIL)
    password = fields.String(required=True, **PASSWORD)


class LoginSchema(ma.Schema):
    # not fields.Email: a malformed address gets the same 401 as any other unknown one
    email = fields.String(required=True, **EMAIL)
    password = fields.String(required=True, **PASSWORD)


class RefreshSchema(ma.Schema):
    refresh_token = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=200))


class LogoutSchema(ma.Schema):
    refresh_token = fields.String(load_only=True, validate=validate.Length(min=1, max=200),
                                  metadata={"description": "The session's refresh token; optional when the "
                                                           "request carries the session's access token."})


class PasswordChangeSchema(ma.Schema):
    current_password = fields.String(required=True, **PASSWORD)
    new_password = fields.String(required=True, **PASSWORD)


class TokensSchema(ma.Schema):
    access_token = fields.String()
    refresh_token = fields.String()
    token_type = fields.String(metadata={"description": "Always `Bearer`."})
    expires_in = fields.Integer(metadata={"description": "Seconds until the access token expires."})
    refresh_expires_in = fields.Integer(metadata={"description": "Seconds until the refresh token expires."})
    user = fields.Nested(UserSchema)


class OrganizationRefSchema(ma.Schema):
    id = fields.String()
    name = fields.String()


class RegisterResponseSchema(ma.Schema):
    status = fields.String(metadata={"description": "Always `accepted`."})
    message = fields.String(metadata={"description": "What to do next: sign in with POST /api/auth/login."})


class MeKeySchema(ma.Schema):
    prefix = fields.String()
    role = fields.String(metadata={"description": "The role the key was created with; `role` above is the one "
                                                  "it acts with now (at most its creator's current role)."})
    created_by = fields.String(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime()


class MeSchema(ma.Schema):
    kind = fields.String(metadata={"description": "`user` or `api_key`."})
    id = fields.String()
    name = fields.String(allow_none=True)
    email = fields.String(allow_none=True)
    role = fields.String()
    organization = fields.Nested(OrganizationRefSchema)
    client_ids = fields.List(fields.String(), allow_none=True,
                             metadata={"description": "Clients an agent may use; null for other roles."})
    permissions = fields.List(fields.String())
    api_key = fields.Nested(MeKeySchema, allow_none=True)
