"""What the workers do with media, one ``media.*`` job per step (jobs/media.py):

- ``fetch_url``: download a medium from its URL (the SSRF guard, redirects checked one by one, a
  size limit while streaming, a deadline), then ``process``;
- ``fetch_inbound``: download the medium of an inbound message from its transport (Meta's media
  endpoint for ``cloud``; ``web`` and ``sim`` carry the bytes in the report and are stored at once
  by ``take_inbound``), then ``process``;
- ``process``: read what the format tells (dimensions, duration, animation), make the copy that is
  sent (EXIF and other metadata stripped from images, images re-encoded under WhatsApp's 5 MB
  when asked), then ``ready`` (or ``failed`` with the reason) and ``media.ready`` / ``media.failed``;
  an inbound message's ``message.received`` waits for this, so it can carry the stored medium;
- ``thumbnail``: a small JPEG of an image or sticker;
- ``expire``: the retention job.

Every step is idempotent: it acts only on a medium still in the state it expects.
"""
from __future__ import annotations

import base64
import io
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app import outbox
from app.db import job_session, new_id, utcnow
from app.errors import AppError
from app.media import service
from app.media.checks import KINDS, MB, Inspected
from app.media.models import Media
from app.media.statuses import PENDING_MESSAGE_STATUSES
from app.security import ssrf
from app.storage import media_storage
from app.webhooks.events import emit
from config import settings

log = logging.getLogger(__name__)

THUMBNAIL_ACTOR = "media.thumbnail"
FETCH_INBOUND_ACTOR = "media.fetch_inbound"
THUMBNAIL_PX = 320
STICKER_PX = 512
MAX_PIXELS = 50_000_000   # Pillow refuses larger images (decompression bombs)
MAX_REDIRECTS = 3
FETCH_ATTEMPTS = 3
_STRIPPED = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "dpi", "photoshop")


class TransientFetchError(Exception):
    """The fetch may work later (network, 5xx): the job is retried."""


# ------------------------------------------------------------------------------------- fetching

def fetch_url(media_id: str) -> str:
    """Download a ``url`` medium and check it; what happened."""
    with job_session() as session:
        medium = _claim(session, media_id, source="url")
        if medium is None:
            return "skipped"
        url, options = medium.source_url or "", dict(medium.fetch_ref or {})
        room = _room_or_fail(session, medium)
        if room is None:
            return "failed"
    try:
        found = service.store_checked(medium, _download(url), claimed_type=None, kind=options.get("kind"),
                                      reencode=bool(options.get("reencode")), room_bytes=room)
    except TransientFetchError as exc:
        return _retry_or_fail(media_id, str(exc))
    except AppError as exc:
        return _fail(media_id, exc.message)
    return _stored(media_id, found, reencode=bool(options.get("reencode")))


def _download(url: str) -> Iterator[bytes]:
    """The body of ``url`` in chunks, through the SSRF guard; redirects followed (each target
    guarded too) up to MAX_REDIRECTS; the whole within MEDIA_FETCH_TIMEOUT."""
    from urllib3 import Timeout

    deadline = time.monotonic() + settings.MEDIA_FETCH_TIMEOUT
    for _ in range(MAX_REDIRECTS + 1):
        problem = ssrf.check_url(url)
        if problem:
            raise AppError(f"The URL is refused: {problem}", code="fetch_refused")
        try:
            resp = ssrf.thread_pool_manager().urlopen(
                "GET", url, redirect=False, retries=False, preload_content=False,
                timeout=Timeout(connect=10, read=settings.MEDIA_FETCH_TIMEOUT))
        except ssrf.BlockedAddress as exc:
            raise AppError(f"The URL is refused: {exc}", code="fetch_refused") from None
        except (OSError, ValueError) as exc:
            blocked = ssrf.find_blocked(exc)
            if blocked is not None:
                raise AppError(f"The URL is refused: {blocked}", code="fetch_refused") from None
            raise TransientFetchError(f"fetching the URL failed: {exc.__class__.__name__}") from None
        if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
            url = urljoin(url, resp.headers["Location"])
            resp.release_conn()
            continue
        if resp.status >= 500 or resp.status == 429:
            resp.release_conn()
            raise TransientFetchError(f"the URL answered {resp.status}")
        if resp.status >= 400:
            resp.release_conn()
            raise AppError(f"The URL answered {resp.status}", code="fetch_failed")
        try:
            for chunk in resp.stream(256 * 1024):
                if time.monotonic() > deadline:
                    raise AppError(f"The download took longer than {settings.MEDIA_FETCH_TIMEOUT:g} s",
                                   code="fetch_timeout")
                yield chunk
        except (OSError, ValueError) as exc:
            raise TransientFetchError(f"reading the URL failed: {exc.__class__.__name__}") from None
        finally:
            resp.release_conn()
        return
    raise AppError(f"More than {MAX_REDIRECTS} redirects", code="fetch_failed")


def fetch_inbound(media_id: str) -> str:
    """Download an inbound message's medium from its transport (cloud: Meta's media endpoint)."""
    from app.clients.info import client_info
    from app.clients.models import Client
    from app.transports.base import SilentSink
    from app.transports.cloud import CloudTransport
    from app.transports.cloud_errors import GraphError

    with job_session() as session:
        medium = _claim(session, media_id, source="inbound")
        if medium is None:
            return "skipped"
        client = session.get(Client, medium.client_id) if medium.client_id else None
        reference = dict(medium.fetch_ref or {})
        if client is None or client.transport != "cloud" or not reference.get("id"):
            _set_failed(session, medium, "The medium cannot be fetched: its client or reference is gone")
            return "failed"
        info = client_info(session, client)
    try:
        content, mime = CloudTransport(info, SilentSink()).download_media(str(reference["id"]))
    except GraphError as exc:
        if exc.rule.retry:
            return _retry_or_fail(media_id, str(exc))
        return _fail(media_id, f"Meta refused the download: {exc}")
    try:
        found = service.store_checked(medium, [content], claimed_type=mime or None, kind=reference.get("kind"))
    except AppError as exc:
        return _fail(media_id, exc.message)
    return _stored(media_id, found)


def take_inbound(session: Session, organization_id: str, client_id: str, media: dict) -> str:
    """The medium of an inbound message (its report's ``media``): stored now when the report
    carries the bytes (``data_b64``: web, sim), else fetched by a job (Meta's media id). Inbound
    media count in the organisation's usage but are never refused for the quota: what a contact
    sent is kept."""
    media_id = new_id("med")
    now = utcnow()
    kind = "sticker" if media.get("kind") == "sticker" else None
    medium = Media(id=media_id, organization_id=organization_id, kind=kind or "document",
                   mime_type=str(media.get("mime_type") or "application/octet-stream")[:200],
                   filename=service.clean_filename(media.get("filename"), media_id, str(media.get("mime_type") or "")),
                   size_bytes=0, storage_key=service.key_of(organization_id, media_id), status="processing",
                   source="inbound", client_id=client_id, created_at=now, updated_at=now,
                   expires_at=service.expiry(now),
                   fetch_ref={k: media[k] for k in ("id", "provider", "sha256") if media.get(k)} | {"kind": kind})
    session.add(medium)
    session.flush()
    data = media.get("data_b64")
    if not data:
        outbox.enqueue(session, FETCH_INBOUND_ACTOR, media_id)
        return media_id
    try:
        content = base64.b64decode(data, validate=False)
        found = service.store_checked(medium, [content], claimed_type=media.get("mime_type"), kind=kind)
    except (AppError, ValueError) as exc:
        _set_failed(session, medium, exc.message if isinstance(exc, AppError) else "The medium is not valid base64")
        return media_id
    _apply_found(medium, found)
    outbox.enqueue(session, service.PROCESS_ACTOR, media_id)
    return media_id


def _claim(session: Session, media_id: str, *, source: str) -> Media | None:
    medium = session.scalars(select(Media).where(Media.id == media_id, Media.source == source,
                                                 Media.status == "processing", Media.sha256.is_(None),
                                                 Media.deleted_at.is_(None)).with_for_update()).first()
    if medium is not None:
        medium.attempts += 1
    return medium


def _room_or_fail(session: Session, medium: Media) -> int | None:
    used_bytes, files = service.used_of(session, medium.organization_id)
    quota_bytes, _ = service.quota_of(session, medium.organization_id)
    room = quota_bytes - used_bytes
    if room <= 0:
        _set_failed(session, medium, "The organisation's media quota is full")
        return None
    return room


def _retry_or_fail(media_id: str, reason: str) -> str:
    with job_session() as session:
        medium = session.get(Media, media_id)
        if medium is not None and medium.attempts < FETCH_ATTEMPTS:
            raise TransientFetchError(reason)
    return _fail(media_id, f"{reason} ({FETCH_ATTEMPTS} attempts)")


def _stored(media_id: str, found: Inspected, *, reencode: bool = False) -> str:
    """A fetched file is in storage: record what it is and process it."""
    with job_session() as session:
        medium = session.get(Media, media_id, with_for_update=True)
        if medium is None or medium.status != "processing":
            return "skipped"
        _apply_found(medium, found)
        if reencode:
            medium.metadata_ = {**(medium.metadata_ or {}), "reencode": True}
        outbox.enqueue(session, service.PROCESS_ACTOR, media_id)
    return "stored"


def _apply_found(medium: Media, found: Inspected) -> None:
    medium.mime_type, medium.kind, medium.size_bytes, medium.sha256 = (found.mime_type, found.kind, found.size,
                                                                       found.sha256)
    medium.metadata_ = {**(medium.metadata_ or {}), **({"animated": found.animated}
                                                        if found.kind in ("image", "sticker") else {})}
    medium.filename = service.clean_filename(medium.filename, medium.id, found.mime_type)
    medium.updated_at = utcnow()


def _fail(media_id: str, reason: str) -> str:
    with job_session() as session:
        medium = session.get(Media, media_id, with_for_update=True)
        if medium is None or medium.status != "processing":
            return "skipped"
        _set_failed(session, medium, reason)
        return "failed"


def _set_failed(session: Session, medium: Media, reason: str) -> None:
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
        return _fail(media_id, "The file is no longer in storage")
    except MediaProblem as exc:
        return _fail(media_id, str(exc))
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


def _open_image(path: Path):
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        image = Image.open(path)
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
        image = ImageOps.exif_transpose(_open_image(files.local_path(key)))
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
    live template, an unfinished campaign: those wait until it is done); how many."""
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
            service.remove(session, medium)
    if rows:
        log.info("media retention deleted %d expired media", len(rows))
    return len(rows)
