"""Request and response shapes of /api/media."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.media.service import VARIANTS
from app.media.statuses import MEDIA_KINDS, MEDIA_SOURCES, MEDIA_STATUSES
from app.pagination import ListArgs


class MediaSchema(ma.Schema):
    id = fields.String()
    kind = fields.String(validate=validate.OneOf(MEDIA_KINDS), metadata={
        "description": "What WhatsApp makes of it: image, video, audio, document or sticker."})
    mime_type = fields.String(metadata={"description": "Decided by the file's content, not its name."})
    size = fields.Integer(metadata={"description": "Bytes (0 until a fetched file arrives)."})
    sha256 = fields.String(allow_none=True)
    filename = fields.String()
    status = fields.String(validate=validate.OneOf(MEDIA_STATUSES), metadata={
        "description": "processing until a worker checked it; only a ready medium can be sent."})
    error = fields.String(allow_none=True, metadata={"description": "Why processing failed."})
    source = fields.String(validate=validate.OneOf(MEDIA_SOURCES))
    metadata = fields.Dict(metadata={
        "description": "What the format tells: width, height, duration_seconds, animated; `sent` when the copy "
                       "sent differs from the file (EXIF stripped, re-encoded); `stripped` lists what was removed."})
    thumbnail = fields.Boolean(metadata={"description": "Whether `/download?variant=thumbnail` has a JPEG."})
    created_at = fields.String()
    ready_at = fields.String(allow_none=True)
    expires_at = fields.String(allow_none=True, metadata={
        "description": "When the retention job deletes it (MEDIA_RETENTION_DAYS); null: never."})


class MediaListArgs(ListArgs):
    kind = fields.String(validate=validate.OneOf(MEDIA_KINDS))
    status = fields.String(validate=validate.OneOf(MEDIA_STATUSES))


class MediaFromUrlSchema(ma.Schema):
    url = fields.String(required=True, validate=validate.Length(min=1, max=2048), metadata={
        "description": "http(s) URL on a public address; a worker fetches it."})
    filename = fields.String(load_default=None, validate=validate.Length(max=255))
    kind = fields.String(load_default=None, validate=validate.OneOf(MEDIA_KINDS), metadata={
        "description": "Ask for a kind (e.g. sticker for a webp, document for anything); default: by content."})
    reencode = fields.Boolean(load_default=False, metadata={
        "description": "Accept an image up to 25 MB and re-encode it under WhatsApp's 5 MB."})


class MediaUploadSchema(ma.Schema):
    """The multipart form (documented; the body is read as a stream, fields first)."""

    kind = fields.String(validate=validate.OneOf(MEDIA_KINDS), metadata={
        "description": "Ask for a kind (sticker for a 512x512 webp; document for any file); default: by content."})
    reencode = fields.Boolean(metadata={
        "description": "true: accept an image up to 25 MB and re-encode it under WhatsApp's 5 MB."})
    filename = fields.String(metadata={"description": "The name to keep (default: the file part's)."})
    file = fields.Raw(required=True, metadata={"type": "string", "format": "binary"})


class MediaUsageSchema(ma.Schema):
    bytes = fields.Integer()
    files = fields.Integer()
    quota_bytes = fields.Integer()
    quota_files = fields.Integer()


class MediaLinkArgs(ma.Schema):
    variant = fields.String(load_default="original", validate=validate.OneOf(VARIANTS), metadata={
        "description": "original: the file as received; sent: the copy sent; thumbnail: the JPEG thumbnail."})
    ttl = fields.Integer(load_default=None, validate=validate.Range(60, 7 * 24 * 3600), metadata={
        "description": "Seconds the link stays valid (default MEDIA_URL_TTL)."})


class MediaLinkSchema(ma.Schema):
    url = fields.String(metadata={"description": "Downloads without credentials until expires_at."})
    expires_at = fields.String()


class DownloadArgs(ma.Schema):
    variant = fields.String(load_default="original", validate=validate.OneOf(VARIANTS))


class SignedDownloadArgs(ma.Schema):
    token = fields.String(required=True, validate=validate.Length(max=1024))
