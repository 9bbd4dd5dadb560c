"""Request and response schemas of templates."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.pagination import ListArgs
from app.templates.statuses import REVIEW_STATUSES

CATEGORIES = ("marketing", "utility", "authentication")


class HeaderSchema(ma.Schema):
    type = fields.String(required=True, validate=validate.OneOf(("text", "image", "video", "document")))
    text = fields.String(validate=validate.Length(max=200), metadata={
        "description": "A text header: at most 60 characters and one placeholder."})
    media_id = fields.String(validate=validate.Length(max=64), metadata={
        "description": "An image, video or document header: a file of `/api/media`."})


class ButtonSchema(ma.Schema):
    type = fields.String(required=True, validate=validate.OneOf(("quick_reply", "url", "phone")))
    text = fields.String(required=True, validate=validate.Length(max=100), metadata={
        "description": "The label, at most 25 characters."})
    url = fields.String(validate=validate.Length(max=2000), metadata={
        "description": "url buttons: http(s), with at most one placeholder at its end (`https://x.test/o/{{1}}`)."})
    phone_number = fields.String(validate=validate.Length(max=32), metadata={"description": "phone buttons: E.164."})


class ApprovalSchema(ma.Schema):
    client_id = fields.String()
    transport = fields.String()
    status = fields.String(metadata={"description": " | ".join(REVIEW_STATUSES)})
    reason = fields.String(allow_none=True, metadata={"description": "Meta's reason of a rejection or pause."})
    meta_template_id = fields.String(allow_none=True)
    submitted_at = fields.DateTime(allow_none=True)
    reviewed_at = fields.DateTime(allow_none=True)


class TemplateSchema(ma.Schema):
    id = fields.String()
    name = fields.String()
    language = fields.String()
    category = fields.String(allow_none=True)
    body = fields.String()
    header = fields.Nested(HeaderSchema, allow_none=True)
    footer = fields.String(allow_none=True)
    buttons = fields.List(fields.Nested(ButtonSchema))
    variables = fields.List(fields.String(), metadata={
        "description": "The placeholders a send must give values for (header, body, buttons), in order."})
    meta_status = fields.String(allow_none=True, metadata={
        "description": "The least advanced review among the organisation's cloud clients (null: none)."})
    approvals = fields.List(fields.Nested(ApprovalSchema), metadata={
        "description": "The review on each client that needs one before it sends the template."})
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


_EXAMPLES = fields.Dict(keys=fields.String(validate=validate.Length(max=100)),
                        values=fields.String(validate=validate.Length(max=200)), metadata={
    "description": "Sample values of the placeholders, for Meta's review."})


class TemplateCreateSchema(ma.Schema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=512), metadata={
        "description": "Lowercase letters, digits and underscores; unique with its language."})
    language = fields.String(load_default="en", validate=validate.Length(max=16), metadata={
        "description": "en, en_US, pt_BR..."})
    category = fields.String(required=True, validate=validate.OneOf(CATEGORIES))
    body = fields.String(required=True, validate=validate.Length(max=4096), metadata={
        "description": "At most 1024 characters with `{{name}}` (or `{{1}}`) placeholders; `{{attributes.city}}` "
                       "takes a contact's attribute in campaigns and previews."})
    header = fields.Nested(HeaderSchema, load_default=None, allow_none=True)
    footer = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=200))
    buttons = fields.List(fields.Nested(ButtonSchema), load_default=list, validate=validate.Length(max=20))
    examples = _EXAMPLES


class TemplateUpdateSchema(ma.Schema):
    name = fields.String(validate=validate.Length(min=1, max=512))
    language = fields.String(validate=validate.Length(max=16))
    category = fields.String(validate=validate.OneOf(CATEGORIES))
    body = fields.String(validate=validate.Length(max=4096))
    header = fields.Nested(HeaderSchema, allow_none=True)
    footer = fields.String(allow_none=True, validate=validate.Length(max=200))
    buttons = fields.List(fields.Nested(ButtonSchema), validate=validate.Length(max=20))
    examples = _EXAMPLES


class TemplateListArgs(ListArgs):
    q = fields.String(validate=validate.Length(min=1, max=100), metadata={"description": "Part of the name or body."})
    category = fields.String(validate=validate.OneOf(CATEGORIES))
    language = fields.String(validate=validate.Length(max=16))


class PreviewSchema(ma.Schema):
    variables = fields.Dict(keys=fields.String(validate=validate.Length(max=100)),
                            values=fields.Raw(), load_default=dict, metadata={
        "description": "Values of the placeholders; they win over the contact's fields."})
    contact_id = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=64), metadata={
        "description": "Fill `{{name}}`, `{{phone}}` and `{{attributes.<key>}}` from this contact."})


class PreviewResultSchema(ma.Schema):
    text = fields.String(metadata={
        "description": "The whole message as text (what a transport without templates sends)."})
    body = fields.String()
    header = fields.String(allow_none=True)
    footer = fields.String(allow_none=True)
    buttons = fields.List(fields.Nested(ButtonSchema))
    variables = fields.Dict(metadata={"description": "The value each placeholder took."})


class SubmitSchema(ma.Schema):
    client_ids = fields.List(fields.String(validate=validate.Length(max=64)), load_default=None,
                             validate=validate.Length(max=100), metadata={
        "description": "The clients to submit to (default: every client that needs a review)."})
