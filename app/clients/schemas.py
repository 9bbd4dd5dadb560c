"""Request and response schemas of clients (WhatsApp accounts), their sim hooks, and proxies."""
from __future__ import annotations

import json

import marshmallow as ma
from marshmallow import fields, validate

from app.clients.statuses import PROXY_STATUSES, STATUSES
from app.pagination import ListArgs

TRANSPORTS = ("sim", "cloud", "web")
#: config keys that are secrets: stored encrypted in clients.secrets_encrypted, never returned
SECRET_CONFIG_KEYS = ("access_token", "app_secret", "verify_token")
MAX_CONFIG_BYTES = 16 * 1024
MAX_SECRET_CHARS = 4096

PROXY_SCHEMES = ("http", "https", "socks5")
HOSTNAME = validate.Regexp(r"^[A-Za-z0-9._:\-\[\]]{1,253}$", error="Must be a host name or an IP address.")
E164 = validate.Regexp(r"^\+[1-9]\d{6,14}$", error="Must be a phone number in E.164 (+14155550123).")


def _config_size(value: dict) -> None:
    if len(json.dumps(value, separators=(",", ":"), default=str)) > MAX_CONFIG_BYTES:
        raise ma.ValidationError(f"At most {MAX_CONFIG_BYTES} bytes of JSON.")
    if len(value) > 50:
        raise ma.ValidationError("At most 50 keys.")
    for key, secret in value.items():
        if len(key) > 64:
            raise ma.ValidationError("Keys are at most 64 characters.")
        if key in SECRET_CONFIG_KEYS and secret is not None and (
                not isinstance(secret, str) or not 1 <= len(secret) <= MAX_SECRET_CHARS):
            raise ma.ValidationError({key: [f"Must be a string of 1 to {MAX_SECRET_CHARS} characters."]})


CONFIG_DOC = ("Transport settings. The secret keys (access_token, app_secret, verify_token) are stored encrypted "
              "and never returned; on PATCH the object is merged into the stored one and a null value removes a key.")


# ------------------------------------------------------------------------------------- clients

class LimitsSchema(ma.Schema):
    """Sending limits of the account (defaults 20/min, 100/h, 1000/day, a 2-5 s gap between sends)."""

    per_minute = fields.Integer(validate=validate.Range(1, 100_000))
    per_hour = fields.Integer(validate=validate.Range(1, 1_000_000))
    per_day = fields.Integer(validate=validate.Range(1, 10_000_000))
    min_gap_ms = fields.Integer(validate=validate.Range(0, 3_600_000))
    max_gap_ms = fields.Integer(validate=validate.Range(0, 3_600_000))


class ClientSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    transport = fields.String()
    status = fields.String(metadata={"description": " | ".join(STATUSES)})
    phone = fields.String(allow_none=True)
    limits = fields.Method("dump_limits")
    proxy_id = fields.String(allow_none=True)
    paused = fields.Boolean(metadata={"description": "Outbound sending held (after a ban or a logout from the phone)."})
    config = fields.Dict(metadata={"description": "The non-secret transport settings."})
    last_error = fields.String(allow_none=True)
    status_changed_at = fields.DateTime()
    created_at = fields.DateTime()
    last_seen_at = fields.DateTime(allow_none=True)

    def dump_limits(self, client) -> dict:
        return {name: getattr(client, name) for name in LimitsSchema._declared_fields}


class ClientCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    transport = fields.String(validate=validate.OneOf(TRANSPORTS), load_default=None,
                              metadata={"description": "Default: the DEFAULT_TRANSPORT setting (sim)."})
    config = fields.Dict(keys=fields.String(), load_default=dict, validate=_config_size,
                         metadata={"description": CONFIG_DOC})
    limits = fields.Nested(LimitsSchema, load_default=None)
    proxy_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))


class ClientUpdateSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=100))
    config = fields.Dict(keys=fields.String(), validate=_config_size, metadata={"description": CONFIG_DOC})
    limits = fields.Nested(LimitsSchema)
    proxy_id = fields.String(allow_none=True, validate=validate.Length(max=64),
                             metadata={"description": "null detaches the proxy."})


class ClientListArgs(ListArgs):
    status = fields.String(validate=validate.OneOf(STATUSES))
    transport = fields.String(validate=validate.OneOf(TRANSPORTS))


class QrSchema(ma.Schema):
    qr = fields.String(metadata={"description": "What the QR code encodes; scan it with WhatsApp (Linked devices)."})
    expires_at = fields.DateTime(allow_none=True)


# ------------------------------------------------------------------------------------- sim hooks

class SimInboundSchema(ma.Schema):
    from_ = fields.String(data_key="from", required=True, validate=E164)
    text = fields.String(load_default=None, validate=validate.Length(min=1, max=4096), metadata={
        "description": "The message, or the caption of media_id."})
    media_id = fields.String(load_default=None, validate=validate.Length(max=64), metadata={
        "description": "The contact sends a copy of this ready medium of the organisation (at most 16 MB)."})
    kind = fields.String(data_key="type", load_default=None, validate=validate.OneOf(
        ("image", "video", "audio", "voice", "document", "sticker")), metadata={
        "description": "With media_id: how it arrives (default the medium's kind; voice: a voice note)."})


class SimInboundResultSchema(ma.Schema):
    external_id = fields.String()


class SimFaultSchema(ma.Schema):
    type = fields.String(required=True, validate=validate.OneOf(("disconnect", "ban", "fail_next", "clear")),
                         metadata={"description": "disconnect: drop the connection (count: also refuse the next "
                                                  "count-1 reconnects); ban: ban the account; fail_next: fail the "
                                                  "next count sends; clear: lift every fault."})
    count = fields.Integer(load_default=1, validate=validate.Range(1, 10_000))
    permanent = fields.Boolean(load_default=False,
                               metadata={"description": "fail_next: fail permanently instead of transiently."})


class SimFaultsSchema(ma.Schema):
    banned = fields.Boolean()
    refuse_reconnects = fields.Integer()
    fail_next = fields.Integer()
    fail_next_permanent = fields.Boolean()


class SimNetworkSchema(ma.Schema):
    received = fields.Integer(metadata={"description": "sends the simulated network received from this client"})
    distinct = fields.Integer(metadata={"description": "distinct message ids among them"})
    duplicates = fields.Integer(metadata={"description": "extra copies: received - distinct"})
    faults = fields.Nested(SimFaultsSchema)


# ------------------------------------------------------------------------------------- proxies

class ProxySchema(ma.Schema):
    id = fields.String()
    name = fields.String(allow_none=True)
    scheme = fields.String()
    host = fields.String()
    port = fields.Integer()
    username = fields.String(allow_none=True)
    has_password = fields.Function(lambda p: p.password_encrypted is not None)
    status = fields.String(metadata={"description": " | ".join(PROXY_STATUSES)})
    last_checked_at = fields.DateTime(allow_none=True)
    last_error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


class ProxyCreateSchema(ma.Schema):
    name = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=100))
    scheme = fields.String(required=True, validate=validate.OneOf(PROXY_SCHEMES))
    host = fields.String(required=True, validate=HOSTNAME)
    port = fields.Integer(required=True, validate=validate.Range(1, 65535))
    username = fields.String(load_default=None, allow_none=True, validate=validate.Length(min=1, max=255))
    password = fields.String(load_default=None, allow_none=True, load_only=True,
                             validate=validate.Length(min=1, max=255))


class ProxyUpdateSchema(ma.Schema):
    name = fields.String(allow_none=True, validate=validate.Length(max=100))
    scheme = fields.String(validate=validate.OneOf(PROXY_SCHEMES))
    host = fields.String(validate=HOSTNAME)
    port = fields.Integer(validate=validate.Range(1, 65535))
    username = fields.String(allow_none=True, validate=validate.Length(min=1, max=255))
    password = fields.String(allow_none=True, load_only=True, validate=validate.Length(min=1, max=255),
                             metadata={"description": "null removes it."})


class ProxyListArgs(ListArgs):
    status = fields.String(validate=validate.OneOf(PROXY_STATUSES))
