"""/api/media: upload (streamed multipart) or fetch from a URL, read, download (with ``Range``),
signed links, delete, usage."""
from __future__ import annotations

from urllib.parse import quote

from flask import Response, request
from flask.views import MethodView
from flask_smorest import Blueprint

from app.db import request_session
from app.errors import AppError, NotFound, ValidationError
from app.idempotency import idempotent
from app.media import service
from app.media.models import Media
from app.media.schemas import (
    DownloadArgs,
    MediaFromUrlSchema,
    MediaLinkArgs,
    MediaLinkSchema,
    MediaListArgs,
    MediaSchema,
    MediaUploadSchema,
    MediaUsageSchema,
    SignedDownloadArgs,
)
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import public, requires
from app.storage import media_storage

blp = Blueprint("media", __name__, url_prefix="/api/media", description="Media")

T0, T1 = "2026-11-26T09:30:00+00:00", "2026-11-26T09:30:02+00:00"
EXAMPLE = {"id": "med_01JDQ5B1C2D3E4F5G6H7J8K9M0", "kind": "image", "mime_type": "image/jpeg", "size": 284113,
           "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "filename": "menu.jpg",
           "status": "ready", "error": None, "source": "upload",
           "metadata": {"width": 1600, "height": 1200, "animated": False, "stripped": ["exif"],
                        "sent": {"mime_type": "image/jpeg", "size": 279004}},
           "thumbnail": True, "created_at": T0, "ready_at": T1, "expires_at": "2027-02-24T09:30:00+00:00"}
_PROCESSING = {**EXAMPLE, "status": "processing", "metadata": {"animated": False}, "thumbnail": False,
               "ready_at": None}
_FROM_URL = {**_PROCESSING, "source": "url", "mime_type": "application/octet-stream", "kind": "document",
             "size": 0, "sha256": None, "filename": "menu.jpg"}


class RangeNotSatisfiable(AppError):
    status, code, message = 416, "range_not_satisfiable", "The requested range is outside the file"


@blp.route("")
class MediaCollection(MethodView):
    @blp.arguments(MediaListArgs, location="query")
    @blp.response(200, page_schema(MediaSchema), example={"items": [EXAMPLE], "next_cursor": None})
    @requires("media:read")
    def get(self, args):
        """Media of the organisation, newest first (?kind=&status=)

        Every live medium (uploaded, fetched from a URL, or received in an inbound message), newest
        first and cursor-paginated, optionally only one kind or status.
        """
        return service.list_media(request_session(), current_principal(), **args)

    @idempotent
    @blp.doc(requestBody={"required": True, "content": {
        "multipart/form-data": {"schema": MediaUploadSchema},
        "application/json": {"schema": MediaFromUrlSchema,
                             "example": {"url": "https://cdn.acme.test/menu.jpg", "kind": "image"}}}})
    @blp.response(201, MediaSchema, example=_PROCESSING,
                  description="A new medium, `processing` until a worker checked it (`media.ready` follows)")
    @blp.alt_response(200, schema=MediaSchema, example=EXAMPLE,
                      description="The same bytes were uploaded before: that medium")
    @blp.alt_response(202, schema=MediaSchema, example=_FROM_URL,
                      description="`url`: a worker fetches the file (`media.ready` or `media.failed` follows)")
    @blp.alt_response(413, description="Larger than WhatsApp takes for its kind (`payload_too_large`; "
                                       "`details.limit_bytes`), refused while it streams in")
    @requires("media:write")
    def post(self):
        """Upload a file (multipart `file`) or have a worker fetch one (`{url}`)

        A multipart upload streams to storage as it arrives; its type is decided by its content
        (magic bytes), never by its name or claimed type, and WhatsApp's limits apply by kind:
        image (jpeg/png/webp) 5 MB, video (mp4/3gpp) 16 MB, audio (ogg-opus/mp3/aac/m4a/amr) 16 MB,
        sticker (512x512 webp) 100 KB static / 500 KB animated, anything else a document of 100 MB.
        Executables, scripts, HTML, SVG with scripts, archives posing as media and polyglot images
        are refused (422 `media_type_refused`); the organisation's quota too (422
        `media_quota_exceeded`). Form fields (`kind`, `reencode`, `filename`) go before the file.
        The same bytes uploaded again return the existing medium (200). With a JSON `{url}` a
        worker fetches the file behind the same address guard as webhooks (202).
        """
        session, principal = request_session(), current_principal()
        if request.mimetype == "multipart/form-data":
            medium, created = service.upload(session, principal, request.stream,
                                             service.boundary_of(request.headers.get("Content-Type")))
            return MediaSchema().dump(service.dump(medium)), 201 if created else 200
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            service.boundary_of(request.headers.get("Content-Type"))  # 415 with the explanation
            raise ValidationError(details={"json": ["Send a JSON object with `url`."]})
        try:
            args = MediaFromUrlSchema().load(body)
        except Exception as exc:  # marshmallow.ValidationError
            raise ValidationError(details=getattr(exc, "messages", {"json": [str(exc)]})) from None
        medium = service.create_from_url(session, principal, **args)
        return MediaSchema().dump(service.dump(medium)), 202


@blp.route("/usage")
class MediaUsage(MethodView):
    @blp.response(200, MediaUsageSchema, example={"bytes": 73400320, "files": 212, "quota_bytes": 1073741824,
                                                  "quota_files": 10000})
    @requires("media:read")
    def get(self):
        """The organisation's media usage and quota

        Bytes and files of the organisation's live media (inbound media included) beside its quota
        (the server's MEDIA_QUOTA_BYTES / MEDIA_QUOTA_FILES unless set for the organisation). A
        deleted medium leaves it at once.
        """
        return service.usage(request_session(), current_principal())


@blp.route("/<media_id>")
class MediaById(MethodView):
    @blp.response(200, MediaSchema, example=EXAMPLE)
    @requires("media:read")
    def get(self, media_id):
        """One medium: its kind, type, size, status and what processing found

        `status` is `processing` until a worker checked the file (then `ready`, or `failed` with
        `error`); `metadata` holds what the format tells (dimensions, duration, animation) and
        what was done to the copy sent (EXIF stripped, re-encoded).
        """
        return service.dump(service.get_media(request_session(), current_principal(), media_id))

    @blp.response(204)
    @blp.alt_response(409, description="A message waiting to be sent, a template or an unfinished campaign uses "
                                       "it (`media_in_use`)")
    @requires("media:write")
    def delete(self, media_id):
        """Delete a medium and its files (its bytes leave the quota at once)

        Deletes the file, its sent copy and its thumbnail now. Refused with 409 while a message
        waiting to be sent, a live template or an unfinished campaign still uses the medium.
        """
        service.delete_media(request_session(), current_principal(), media_id)


@blp.route("/<media_id>/download")
class MediaDownload(MethodView):
    @blp.arguments(DownloadArgs, location="query")
    @blp.doc(responses={"200": {"description": "The file (`Content-Disposition: attachment`)",
                                "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}},
                        "206": {"description": "The part a `Range: bytes=start-end` header asked for"}})
    @blp.alt_response(409, description="The medium is not ready (`media_not_ready`)")
    @blp.alt_response(416, description="The range is outside the file (`range_not_satisfiable`)")
    @requires("media:read")
    def get(self, args, media_id):
        """Download a medium's file (streamed; `Range` supported)

        Streams the file with its type and `Content-Disposition: attachment`; a `Range` header
        gets 206 with that part (resumable downloads, players seeking). `variant=sent` gives the
        copy sent to WhatsApp, `variant=thumbnail` the JPEG thumbnail of an image.
        """
        medium = service.get_media(request_session(), current_principal(), media_id)
        return _stream(medium, args["variant"])


@blp.route("/<media_id>/link")
class MediaLink(MethodView):
    @blp.arguments(MediaLinkArgs, example={"variant": "original", "ttl": 600})
    @blp.response(200, MediaLinkSchema, example={
        "url": "https://wa.acme.test/api/media/med_01JDQ5B1C2D3E4F5G6H7J8K9M0/signed-download?token=WyJtZWQi...",
        "expires_at": T1})
    @blp.alt_response(409, description="The medium is not ready (`media_not_ready`)")
    @requires("media:read")
    def post(self, args, media_id):
        """A signed download link that works without credentials until it expires

        A short-lived link (MEDIA_URL_TTL seconds unless `ttl` says less or more, up to a week)
        to hand to a system that has no API key: it downloads the medium (or its `variant`) with
        no credentials until `expires_at`; changing any character of it makes it invalid.
        """
        medium = service.get_media(request_session(), current_principal(), media_id)
        service.readable(medium)
        return service.signed_link(medium, variant=args["variant"], ttl=args["ttl"])


@blp.route("/<media_id>/signed-download")
class MediaSignedDownload(MethodView):
    @blp.arguments(SignedDownloadArgs, location="query")
    @blp.doc(security=[], responses={
        "200": {"description": "The file", "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
        "206": {"description": "The part a `Range` header asked for"},
        "403": {"description": "The link was altered (`invalid_link`)"},
        "410": {"description": "The link has expired (`link_expired`)"}})
    @blp.alt_response(409, description="The medium is not ready (`media_not_ready`)")
    @blp.alt_response(416, description="The range is outside the file (`range_not_satisfiable`)")
    @public
    def get(self, args, media_id):
        """Download through a signed link (no credentials; `Range` supported)

        What `POST /api/media/{media_id}/link` and webhook events hand out: the medium's file
        while the link is valid, 410 once it expired, 403 when it was altered, 404 when the medium
        was deleted.
        """
        medium, variant = service.medium_of_link(request_session(), media_id, args["token"])
        return _stream(medium, variant)


def _stream(medium: Media, variant: str) -> Response:
    """The medium's file (or one range of it) streamed from storage."""
    service.readable(medium)
    key = service.file_key(medium, variant)
    files = media_storage()
    size = files.size(key)
    if size is None:
        raise NotFound("The medium's file is no longer in storage")
    if variant == "thumbnail":
        mime, name = "image/jpeg", medium.filename.rsplit(".", 1)[0] + ".thumb.jpg"
    elif variant == "sent" and medium.send_key:
        mime, name = (medium.metadata_ or {}).get("sent", {}).get("mime_type", medium.mime_type), medium.filename
    else:
        mime, name = medium.mime_type, medium.filename
    etag = f"{medium.sha256}-{variant}"
    start, length, status = 0, size, 200
    ranges = request.range
    if_range = request.headers.get("If-Range")
    if ranges is not None and len(ranges.ranges) == 1 and (if_range is None or if_range.strip('"') == etag):
        bounds = ranges.range_for_length(size)
        if bounds is None:
            raise RangeNotSatisfiable(details={"size": size}, headers={"Content-Range": f"bytes */{size}"})
        start, stop = bounds
        length, status = stop - start, 206
    response = Response(files.read_range(key, start, length), status=status, mimetype=mime.split(";")[0],
                        direct_passthrough=True)
    response.headers["Content-Length"] = str(length)
    response.headers["Accept-Ranges"] = "bytes"
    if status == 206:
        response.headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    response.headers["ETag"] = f'"{etag}"'
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "").replace("?", "_")
    response.headers["Content-Disposition"] = (f"attachment; filename=\"{ascii_name}\"; "
                                               f"filename*=UTF-8''{quote(name)}")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    response.headers["Cache-Control"] = "private, no-cache"
    return response

