"""Request and response schemas of messages."""
from __future__ import annotations

from datetime import datetime

import marshmallow as ma
from marshmallow import fields, validate

from app.fields import UtcDateTime
from app.messages.statuses import STATUSES
from app.pagination import ListArgs

TEXT_MAX = 4096        # WhatsApp's limit for a text message
CAPTION_MAX = 1024     # WhatsApp's limit for a media caption
BATCH_MAX = 1000
TYPES = ("text", "image", "video", "audio", "document", "sticker", "voice", "template")
MEDIA_TYPES = ("image", "video", "audio", "document", "sticker", "voice")
#: the media types WhatsApp shows a caption with
CAPTIONED_TYPES = ("image", "video", "document")
DIRECTIONS = ("outbound", "inbound")


class ErrorSchema(ma.Schema):
    code = fields.String()
    message = fields.String(allow_none=True)


class MessageSchema(ma.Schema):
    """A message as the API returns it (and as webhook events carry it)."""

    id = fields.String()
    client_id = fields.String()
    direction = fields.String(metadata={"description": "outbound | inbound"})
    to = fields.String(attribute="to_phone", allow_none=True)
    from_ = fields.String(data_key="from", attribute="from_phone", allow_none=True)
    contact_id = fields.String(allow_none=True)
    type = fields.String(metadata={"description": " | ".join(TYPES)})
    text = fields.String(allow_none=True)
    media_id = fields.String(allow_none=True)
    caption = fields.String(allow_none=True)
    template_id = fields.String(allow_none=True)
    variables = fields.Dict()
    status = fields.String(metadata={"description": "queued → sending → sent → delivered → read, or failed, "
                                                    "or cancelled; unknown while it cannot be told whether a send "
                                                    "that ended in doubt reached WhatsApp (never resent; the first "
                                                    "receipt moves it on); inbound messages are received"})
    error = fields.Method("dump_error", metadata={"description": "{code, message} when failed, else null"})
    attempts = fields.Integer(metadata={"description": "transport attempts so far"})
    campaign_id = fields.String(allow_none=True)
    scheduled_at = fields.DateTime(allow_none=True, metadata={"description": "the time asked for, if any"})
    scheduled_for = fields.DateTime(allow_none=True, metadata={
        "description": "the pacing slot: when the account's limits let this message go"})
    created_at = fields.DateTime()
    queued_at = fields.DateTime(allow_none=True)
    sending_at = fields.DateTime(allow_none=True)
    sent_at = fields.DateTime(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    read_at = fields.DateTime(allow_none=True)
    failed_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)

    def dump_error(self, message):
        code = message["error_code"] if isinstance(message, dict) else message.error_code
        if not code:
            return None
        text = message["error_message"] if isinstance(message, dict) else message.error_message
        return {"code": code, "message": text}


class SendMessageSchema(ma.Schema):
    """The v2.0 clients' body of ``POST /api/clients/{id}/send-message``."""

    to = fields.String(required=True, validate=validate.Length(max=32), metadata={"description": "E.164"})
    message = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=TEXT_MAX), metadata={
        "description": "The text (the caption with media_id)."})
    media_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    template_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    variables = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=None, allow_none=True)


class SendMessageResultSchema(ma.Schema):
    messageId = fields.String(metadata={"description": "the message id (v2.0 name)"})
    id = fields.String()
    status = fields.String()


class MessageItemSchema(ma.Schema):
    """One message to send (the body of POST /api/messages without client_id, or a batch item)."""

    to = fields.String(required=True, validate=validate.Length(max=32), metadata={"description": "E.164"})
    type = fields.String(load_default=None, validate=validate.OneOf(TYPES), metadata={
        "description": "Default: template with template_id, the media's kind with media_id, else text."})
    text = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=TEXT_MAX))
    media_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    caption = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=CAPTION_MAX))
    template_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64))
    variables = fields.Dict(keys=fields.String(validate=validate.Length(max=64)), load_default=None, allow_none=True)
    scheduled_at = UtcDateTime(load_default=None, allow_none=True,
                               metadata={"description": "Send no earlier than this (ISO 8601)."})


class FastItemLoader:
    """``MessageItemSchema().load`` for the hot path of batches: the same result for every item,
    computed directly for the common shape (known fields, strings within their lengths, variables
    an object with short keys), and by the schema itself for anything else, so every refusal is the
    schema's own error (tests/messages/test_schemas.py compares both on many inputs)."""

    _STRINGS = (("to", 32), ("text", TEXT_MAX), ("media_id", 64), ("caption", CAPTION_MAX), ("template_id", 64))
    _FIELDS = frozenset(("to", "type", "text", "media_id", "caption", "template_id", "variables", "scheduled_at"))

    def __init__(self) -> None:
        self.schema = MessageItemSchema()
        self._scheduled_at = self.schema.fields["scheduled_at"]

    def load(self, raw) -> dict:
        """The loaded item; raises marshmallow's ``ValidationError`` exactly as the schema does."""
        item = self._fast(raw)
        return self.schema.load(raw) if item is None else item

    def _fast(self, raw) -> dict | None:
        """The item, or None when this shape is left to the schema (it may be valid or not)."""
        if type(raw) is not dict or not self._FIELDS.issuperset(raw) or type(raw.get("to")) is not str:
            return None
        out: dict = {}
        for name, longest in self._STRINGS:
            value = raw.get(name)
            if value is not None and (type(value) is not str or len(value) > longest):
                return None
            out[name] = value
        kind = raw.get("type")
        if kind is not None and (type(kind) is not str or kind not in TYPES):
            return None
        out["type"] = kind
        variables = raw.get("variables")
        if variables is not None:
            if type(variables) is not dict or any(type(k) is not str or len(k) > 64 for k in variables):
                return None
            variables = dict(variables)
        out["variables"] = variables
        when = raw.get("scheduled_at")
        if when is not None:
            try:
                when = self._scheduled_at.deserialize(when, "scheduled_at", raw)
            except ma.ValidationError:
                return None
        out["scheduled_at"] = when
        return out


class MessageCreateSchema(MessageItemSchema):
    client_id = fields.String(required=True, validate=validate.Length(max=64))


class BatchCreateSchema(ma.Schema):
    client_id = fields.String(required=True, validate=validate.Length(max=64))
    messages = fields.List(fields.Dict(), required=True, validate=validate.Length(min=1, max=BATCH_MAX), metadata={
        "description": f"Up to {BATCH_MAX} items shaped like POST /api/messages without client_id; an invalid "
                      "item gets its own error and does not fail the others."})


class BatchItemResultSchema(ma.Schema):
    id = fields.String()
    status = fields.String()
    scheduled_for = fields.DateTime(allow_none=True)
    error = fields.Dict(metadata={"description": "{code, message, details} of an item that was not accepted"})


class BatchResultSchema(ma.Schema):
    messages = fields.List(fields.Nested(BatchItemResultSchema))

    def dump(self, obj, *, many=None):
        """The schema's dump, computed directly for the shape ``create_batch`` answers (a thousand
        items per request); anything else goes through marshmallow (tests/messages/test_schemas.py
        compares both)."""
        fast = _fast_batch_dump(obj) if not many else None
        return super().dump(obj, many=many) if fast is None else fast


_ACCEPTED_KEYS = frozenset(("id", "status", "scheduled_for"))


def _fast_batch_dump(obj) -> dict | None:
    if type(obj) is not dict or obj.keys() != {"messages"} or type(obj["messages"]) is not list:
        return None
    out: list[dict] = []
    for item in obj["messages"]:
        if type(item) is not dict:
            return None
        if item.keys() == _ACCEPTED_KEYS:
            when = item["scheduled_for"]
            if type(item["id"]) is not str or type(item["status"]) is not str or not (
                    when is None or type(when) is datetime):
                return None
            out.append({"id": item["id"], "status": item["status"],
                        "scheduled_for": None if when is None else when.isoformat()})
        elif item.keys() == {"error"} and type(item["error"]) is dict:
            out.append({"error": dict(item["error"])})
        else:
            return None
    return {"messages": out}


class MessageListArgs(ListArgs):
    client_id = fields.String(validate=validate.Length(max=64))
    status = fields.String(validate=validate.OneOf(STATUSES))
    direction = fields.String(validate=validate.OneOf(DIRECTIONS))
    contact = fields.String(validate=validate.Length(max=64), metadata={
        "description": "a contact id (ctc_...) or its phone number"})
    since = UtcDateTime(metadata={"description": "created at or after"})
    until = UtcDateTime(metadata={"description": "created before"})
