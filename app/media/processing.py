"""What the workers do with a stored medium, one ``media.*`` job per step (jobs/media.py; getting
the file from a URL or a transport is app/media/fetching.py):

- ``process``: read what the format tells (dimensions, duration, animation), make the copy that is
  sent (EXIF and other metadata stripped from images, images re-encoded under WhatsApp's 5 MB
  when asked), then ``ready`` (or ``failed`` with the reason) and ``media.ready`` / ``media.failed``;
  an inbound message's ``message.received`` waits for this, so it can carry the stored medium;
- ``thumbnail``: a small JPEG of an image or sticker;
- ``expire``: the retention job.

Every step is idempotent: it acts only on a medium still in the state it expects.
"""
from __future__ import annotations

import io
import logging
import struct
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app import outbox
from app.db import job_session, rowcount, utcnow
from app.media import service
from app.media.checks import KINDS, MB
from app.media.models import Media
from app.media.statuses import PENDING_MESSAGE_STATUSES
from app.storage import media_storage
from app.webhooks.events import emit
from config import settings

log = logging.getLogger(__name__)

THUMBNAIL_ACTOR = "media.thumbnail"
THUMBNAIL_PX = 320
STICKER_PX = 512
MAX_PIXELS = 50_000_000   # Pillow refuses larger images (decompression bombs)
_STRIPPED = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "photoshop")


def fail(media_id: str, reason: str) -> str:
    with job_session() as session:
        medium = session.get(Media, media_id, with_for_update=True)
        if medium is None or medium.status != "processing":
            return "skipped"
        set_failed(session, medium, reason)
        return "failed"


def set_failed(session: Session, medium: Media, reason: str) -> None:
    medium.status, medium.error, medium.updated_at = "failed", reason[:500], utcnow()
    session.flush()
    emit(session, medium.organization_id, "media.failed", service.dump(medium))
    announce_inbound(session, medium)


# ------------------------------------------------------------------------------------- processing

def process(media_id: str) -> str:
    """Read the medium's metadata and make its copy to send; ``ready`` or ``failed``."""
    with job_session() as session:
        medium = session.scalars(select(Media).where(Media.id == media_id, Media.status == "processing",
                                                     Media.sha256.isnot(None), Media.deleted_at.is_(None))).first()
        if medium is None:
            return "skipped"
        key, kind, organization_id = medium.storage_key, medium.kind, medium.organization_id
        options = dict(medium.metadata_ or {})
    files = media_storage()
    try:
        path = files.local_path(key)
        if kind in ("image", "sticker"):
            metadata, sent = _process_image(path, kind, reencode=bool(options.get("reencode")))
        elif kind in ("video", "audio"):
            metadata, sent = _av_metadata(path), None
        else:
            metadata, sent = {}, None
    except FileNotFoundError:
        return fail(media_id, "The file is no longer in storage")
    except MediaProblem as exc:
        return fail(media_id, str(exc))
    send_key = None
    if sent is not None:
        send_key = service.key_of(organization_id, media_id, ".send")
        files.save(send_key, [sent[0]])
        metadata["sent"] = {"mime_type": sent[1], "size": len(sent[0])}
    with job_session() as session:
        medium = session.get(Media, media_id, with_for_update=True)
        if medium is None or medium.status != "processing" or medium.deleted_at is not None:
            if send_key:
                files.delete(send_key)
            return "skipped"
        now = utcnow()
        medium.metadata_ = {**{k: v for k, v in options.items() if k != "reencode"}, **metadata}
        medium.send_key, medium.status, medium.ready_at, medium.updated_at = send_key, "ready", now, now
        session.flush()
        emit(session, medium.organization_id, "media.ready", service.dump(medium))
        announce_inbound(session, medium)
        if kind in ("image", "sticker"):
            outbox.enqueue(session, THUMBNAIL_ACTOR, media_id)
    return "ready"


class MediaProblem(Exception):
    """The file is not what it claims to be (corrupt, not WhatsApp's format or size)."""


def _open_image(path: Path, *, draft_px: int | None = None):
    """The decoded image (``draft_px``: a JPEG decoded at reduced size, at least that large)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        image = Image.open(path)
        if draft_px:
            image.draft("RGB", (draft_px, draft_px))
        image.load()
    except Image.DecompressionBombError:
        raise MediaProblem(f"The image has more than {MAX_PIXELS} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise MediaProblem(f"The image cannot be read: {exc}") from None
    return image


def _process_image(path: Path, kind: str, *, reencode: bool) -> tuple[dict, tuple[bytes, str] | None]:
    """(metadata, the copy to send or None when the file itself is fine to send)."""
    from PIL import ImageOps

    image = _open_image(path)
    frames = int(getattr(image, "n_frames", 1) or 1)
    metadata = {"width": image.width, "height": image.height, "animated": frames > 1}
    if kind == "sticker" and (image.width, image.height) != (STICKER_PX, STICKER_PX):
        raise MediaProblem(f"A WhatsApp sticker is {STICKER_PX}x{STICKER_PX} pixels, this one "
                           f"{image.width}x{image.height}")
    carries = sorted(k for k in _STRIPPED if k in image.info)
    size = path.stat().st_size
    too_large = size > KINDS["image"].max_bytes
    if kind == "sticker" or (frames > 1) or not (carries or too_large):
        if too_large:
            raise MediaProblem("The image is larger than WhatsApp's 5 MB")
        return metadata, None
    upright = ImageOps.exif_transpose(image)
    if too_large:
        if not reencode:
            raise MediaProblem("The image is larger than WhatsApp's 5 MB")
        content = _jpeg_under(upright, KINDS["image"].max_bytes)
        metadata.update(width=upright.width, height=upright.height, reencoded=True)
        return metadata, (content, "image/jpeg")
    out = io.BytesIO()
    fmt = image.format or "JPEG"
    params = {"quality": 95} if fmt == "JPEG" else {}
    if "icc_profile" in image.info:
        params["icc_profile"] = image.info["icc_profile"]
    upright.save(out, format=fmt, **params)
    metadata.update(width=upright.width, height=upright.height, stripped=carries)
    return metadata, (out.getvalue(), _FORMAT_TYPES.get(fmt, "image/jpeg"))


_FORMAT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


def _jpeg_under(image, limit: int) -> bytes:
    """The image as a JPEG under ``limit`` bytes: lower quality first, then smaller."""
    image = image.convert("RGB")
    while True:
        for quality in (85, 75, 65):
            out = io.BytesIO()
            image.save(out, format="JPEG", quality=quality, optimize=True)
            if out.tell() <= limit:
                return out.getvalue()
        image = image.resize((max(1, image.width * 3 // 4), max(1, image.height * 3 // 4)))


def _av_metadata(path: Path) -> dict:
    """Duration (and, for MP4 video, dimensions) where the format tells."""
    import mutagen

    metadata: dict = {}
    try:
        info = mutagen.File(path)
    except Exception:  # noqa: BLE001 - mutagen raises many kinds for a file it cannot parse
        info = None
    length = getattr(getattr(info, "info", None), "length", None)
    if length:
        metadata["duration_seconds"] = round(float(length), 3)
    dims = _mp4_dimensions(path)
    if dims:
        metadata["width"], metadata["height"] = dims
    return metadata


def _mp4_dimensions(path: Path) -> tuple[int, int] | None:
    """The first video track's width and height from an MP4's ``moov/trak/tkhd`` boxes."""
    def boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        pos = start
        while pos + 8 <= end:
            size, name = struct.unpack(">I4s", data[pos:pos + 8])
            header = 8
            if size == 1 and pos + 16 <= end:
                size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
            elif size == 0:
                size = end - pos
            if size < header:
                return
            yield name, pos + header, min(pos + size, end)
            pos += size

    try:
        with open(path, "rb") as fh:
            data = fh.read(64 * MB)
    except OSError:
        return None
    for name, start, end in boxes(data, 0, len(data)):
        if name != b"moov":
            continue
        for trak, t_start, t_end in boxes(data, start, end):
            if trak != b"trak":
                continue
            for box, b_start, b_end in boxes(data, t_start, t_end):
                if box == b"tkhd" and b_end - b_start >= 84:
                    width, height = struct.unpack(">II", data[b_end - 8:b_end])
                    if width and height:
                        return width >> 16, height >> 16
    return None


def thumbnail(media_id: str) -> str:
    """A JPEG of at most THUMBNAIL_PX pixels a side for an image or sticker."""
    from PIL import Image, ImageOps

    with job_session() as session:
        medium = session.get(Media, media_id)
        if medium is None or medium.status != "ready" or medium.thumbnail_key or medium.deleted_at is not None:
            return "skipped"
        key, organization_id = medium.send_key or medium.storage_key, medium.organization_id
    files = media_storage()
    try:
        image = ImageOps.exif_transpose(_open_image(files.local_path(key), draft_px=THUMBNAIL_PX))
    except (FileNotFoundError, MediaProblem):
        return "skipped"
    image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=80)
    thumb_key = service.key_of(organization_id, media_id, ".thumb.jpg")
    files.save(thumb_key, [out.getvalue()])
    with job_session() as session:
        done = session.execute(text("UPDATE media SET thumbnail_key = :k, updated_at = now() "
                                    "WHERE id = :id AND deleted_at IS NULL RETURNING id"),
                               {"k": thumb_key, "id": media_id}).first()
    if done is None:
        files.delete(thumb_key)
        return "skipped"
    return "done"


# ------------------------------------------------------------------------------------- inbound

def announce_inbound(session: Session, medium: Media) -> None:
    """``message.received`` of the inbound message carrying ``medium``, once it is stored (or
    failed): the event then has the medium's id, kind, size and a signed download link."""
    if medium.source != "inbound":
        return
    from app.messages.models import Message
    from app.messages.tracking import dump as dump_message

    for message in session.scalars(select(Message).where(Message.media_id == medium.id,
                                                         Message.direction == "inbound")):
        emit(session, message.organization_id, "message.received",
             {**dump_message(message), "media": media_summary(medium)})


def media_summary(medium: Media) -> dict:
    """What an event tells of a medium: id, kind, type, size, and a signed link while ready."""
    summary = {"id": medium.id, "kind": medium.kind, "mime_type": medium.mime_type, "size": medium.size_bytes,
               "filename": medium.filename, "sha256": medium.sha256, "status": medium.status, "error": medium.error,
               "url": None, "url_expires_at": None}
    if medium.status == "ready":
        link = service.signed_link(medium)
        summary["url"], summary["url_expires_at"] = link["url"], link["expires_at"]
    return summary


# ------------------------------------------------------------------------------------- retention

def expire(limit: int = 500) -> int:
    """Delete media past ``expires_at`` that nothing still needs (a message waiting to be sent, a
    live template, an unfinished campaign: those wait until it is done), files and rows; and the
    rows of media deleted through the API (their files went at once) once as old. How many."""
    with job_session() as session:
        rows = session.scalars(text("""
            SELECT m.id FROM media m
            WHERE m.deleted_at IS NULL AND m.expires_at < now()
              AND NOT EXISTS (SELECT 1 FROM messages g WHERE g.media_id = m.id AND g.status = ANY(:pending))
              AND NOT EXISTS (SELECT 1 FROM templates t WHERE t.deleted_at IS NULL AND t.header->>'media_id' = m.id)
              AND NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.media_id = m.id
                              AND c.status IN ('draft', 'scheduled', 'running', 'paused'))
            ORDER BY m.expires_at LIMIT :limit FOR UPDATE OF m SKIP LOCKED"""),
            {"pending": list(PENDING_MESSAGE_STATUSES), "limit": limit}).all()
        for medium in session.scalars(select(Media).where(Media.id.in_(rows))):
            service.delete_files(medium)
        session.execute(delete(Media).where(Media.id.in_(rows)))  # the rows go with their files
        purged = 0
        if settings.MEDIA_RETENTION_DAYS > 0:
            purged = rowcount(session.execute(text(
                "DELETE FROM media WHERE id IN (SELECT id FROM media WHERE deleted_at < now() - make_interval("
                "days => :days) LIMIT :limit)"), {"days": settings.MEDIA_RETENTION_DAYS, "limit": limit}))
    if rows or purged:
        log.info("media retention deleted %d expired media and %d deleted ones' rows", len(rows), purged)
    return len(rows)
