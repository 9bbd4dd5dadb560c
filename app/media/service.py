"""Media of an organisation: uploads, fetches from a URL, reads, deletes, usage against the quota,
and signed download links.

An upload streams to storage through ``checks.Inspector`` (type by content, the kind's limit, the
quota's room) before any row is written; its bytes are kept once per organisation (a re-upload of
the same bytes returns the medium that has them). A new medium is ``processing`` until the
``media.process`` job made it ``ready`` (or ``failed``): only then can it be sent. Files are named
by the medium's id (``<organization>/<media id>``), never by the user's file name.

Size: just over 400 lines, all of it what the API does with a medium (upload, fetch request, reads,
links, delete); the steps a worker runs live in app/media/processing.py and fetching.py.
"""
from __future__ import annotations

import mimetypes
import re
import unicodedata
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import BinaryIO

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app import links, outbox, quotas
from app.audit.service import record
from app.db import get_scoped, job_session, new_id, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.media.checks import Inspected, Inspector
from app.media.models import Media
from app.media.multipart import StreamedForm
from app.media.statuses import MEDIA_KINDS, PENDING_MESSAGE_STATUSES
from app.pagination import paginate
from app.security import ssrf
from app.security.principal import Principal
from app.storage import media_storage
from app.team.models import OrganizationSettings
from config import settings

PROCESS_ACTOR = "media.process"
FETCH_ACTOR = "media.fetch"
VARIANTS = ("original", "sent", "thumbnail")
_LINK_SALT = "media-download-link"


def key_of(organization_id: str, media_id: str, suffix: str = "") -> str:
    """The storage key of a medium's file (``suffix``: ``.send``, ``.thumb.jpg``)."""
    return f"{organization_id}/{media_id}{suffix}"


# ----------------------------------------------------------------------------------- the API shape

def dump(medium: Media) -> dict:
    """A medium as the API and its events show it."""
    return {"id": medium.id, "kind": medium.kind, "mime_type": medium.mime_type, "size": medium.size_bytes,
            "sha256": medium.sha256, "filename": medium.filename, "status": medium.status, "error": medium.error,
            "source": medium.source, "metadata": dict(medium.metadata_ or {}),
            "thumbnail": medium.thumbnail_key is not None,
            "created_at": _iso(medium.created_at), "ready_at": _iso(medium.ready_at),
            "expires_at": _iso(medium.expires_at)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ------------------------------------------------------------------------------------- the quota

def quota_of(session: Session, organization_id: str) -> tuple[int, int]:
    """The organisation's quota (bytes, files): its own setting, else the server's."""
    row = session.execute(select(OrganizationSettings.media_quota_bytes, OrganizationSettings.media_quota_files)
                          .where(OrganizationSettings.organization_id == organization_id)).first()
    own_bytes, own_files = row if row is not None else (None, None)
    return (settings.MEDIA_QUOTA_BYTES if own_bytes is None else own_bytes,
            settings.MEDIA_QUOTA_FILES if own_files is None else own_files)


def used_of(session: Session, organization_id: str) -> tuple[int, int]:
    """Bytes and files of the organisation's live media (an index-only scan)."""
    used_bytes, files = session.execute(
        select(func.coalesce(func.sum(Media.size_bytes), 0), func.count())
        .where(Media.organization_id == organization_id, Media.deleted_at.is_(None))).one()
    return int(used_bytes), int(files)


def usage(session: Session, principal: Principal) -> dict:
    used_bytes, files = used_of(session, principal.organization_id)
    quota_bytes, quota_files = quota_of(session, principal.organization_id)
    return {"bytes": used_bytes, "files": files, "quota_bytes": quota_bytes, "quota_files": quota_files}


def _quota_refusal(used_bytes: int, files: int, quota_bytes: int, quota_files: int, adding: int) -> None:
    if files + 1 > quota_files:
        raise ValidationError(f"This organisation keeps {files} media files and may keep {quota_files}: "
                              "delete some first", code="media_quota_exceeded",
                              details={"files": files, "quota_files": quota_files})
    if used_bytes + adding > quota_bytes:
        raise ValidationError(f"This file does not fit in the organisation's media quota ({used_bytes} of "
                              f"{quota_bytes} bytes used): delete media first", code="media_quota_exceeded",
                              details={"bytes": used_bytes, "quota_bytes": quota_bytes, "size": adding})


def _room(organization_id: str) -> int:
    """Bytes the organisation may still store (its own short transaction: an upload streams for a
    while and must not hold locks meanwhile); 422 when no file more fits."""
    with job_session() as session:
        used_bytes, files = used_of(session, organization_id)
        quota_bytes, quota_files = quota_of(session, organization_id)
    _quota_refusal(used_bytes, files, quota_bytes, quota_files, 0)
    return quota_bytes - used_bytes


# ------------------------------------------------------------------------------------- uploads

def clean_filename(name: str | None, media_id: str, mime_type: str) -> str:
    """The user's file name without a path, control characters or more than 255 characters."""
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in unicodedata.normalize("NFC", name) if unicodedata.category(ch)[0] != "C").strip()
    if not name or name in (".", ".."):
        name = media_id + (mimetypes.guess_extension(mime_type.split(";")[0]) or "")
    return name[:255]


def _options(fields: dict) -> dict:
    """The upload's form fields ``kind``, ``reencode`` and ``filename``, checked."""
    errors = {}
    kind = fields.get("kind") or None
    if kind is not None and kind not in MEDIA_KINDS:
        errors["kind"] = [f"One of {', '.join(MEDIA_KINDS)}."]
    reencode = (fields.get("reencode") or "false").strip().lower()
    if reencode not in ("true", "false", "1", "0"):
        errors["reencode"] = ["true or false."]
    if len(fields.get("filename") or "") > 255:
        errors["filename"] = ["At most 255 characters."]
    if errors:
        raise ValidationError(details=errors)
    return {"kind": kind, "reencode": reencode in ("true", "1"), "filename": fields.get("filename") or None}


def upload(session: Session, principal: Principal, stream: BinaryIO, boundary: str) -> tuple[Media, bool]:
    """Store the multipart body's ``file`` as a medium of the organisation: (medium, created).
    The same bytes uploaded before give that medium back (created False)."""
    form = StreamedForm(stream, boundary)
    options = _options(form.fields)
    organization_id = principal.organization_id
    media_id = new_id("med")
    key = key_of(organization_id, media_id)
    inspector = Inspector(filename=form.filename, claimed_type=form.content_type, kind=options["kind"],
                          reencode=options["reencode"], room_bytes=_room(organization_id))
    files = media_storage()
    files.save(key, inspector.wrap(form.chunks()))
    try:
        late = _options(form.finish())  # fields sent after the file
        if late["kind"] is not None and late["kind"] != options["kind"]:
            inspector.change_kind(late["kind"])
        found = inspector.finish()
        existing = _existing_upload(session, organization_id, found.sha256)
        if existing is not None:
            files.delete(key)
            return existing, False
        medium = _insert(session, principal, media_id, key, found, source="upload",
                         filename=late["filename"] or options["filename"] or form.filename,
                         reencode=late["reencode"] or options["reencode"])
    except BaseException:
        files.delete(key)
        raise
    if medium is None:  # the same bytes arrived at the same time: the other upload keeps them
        files.delete(key)
        existing = _existing_upload(session, organization_id, found.sha256)
        if existing is None:
            raise Conflict("The same file is being uploaded by another request: retry")
        return existing, False
    return medium, True


def _existing_upload(session: Session, organization_id: str, sha256: str) -> Media | None:
    return session.scalars(scoped_select(Media, organization_id).where(
        Media.sha256 == sha256, Media.source == "upload", Media.status != "failed")).first()


def _insert(session: Session, principal: Principal, media_id: str, key: str, found: Inspected, *, source: str,
            filename: str | None, reencode: bool) -> Media | None:
    """The medium's row, within the quota (counted again under the organisation's lock: uploads
    running side by side cannot pass it together), and its processing job. None when the same
    bytes were stored by a concurrent upload."""
    organization_id = principal.organization_id
    quotas.serialise(session, organization_id, "media")
    used_bytes, files = used_of(session, organization_id)
    _quota_refusal(used_bytes, files, *quota_of(session, organization_id), found.size)
    now = utcnow()
    metadata: dict = {"animated": found.animated} if found.kind in ("image", "sticker") else {}
    if reencode:
        metadata["reencode"] = True
    values = {"id": media_id, "organization_id": organization_id, "kind": found.kind, "mime_type": found.mime_type,
              "filename": clean_filename(filename, media_id, found.mime_type), "size_bytes": found.size,
              "sha256": found.sha256, "storage_key": key, "status": "processing", "source": source,
              "metadata": metadata,
              "created_by": principal.id if principal.kind == "user" else None, "created_at": now, "updated_at": now,
              "expires_at": expiry(now)}
    inserted = session.execute(pg_insert(Media).values(**values).on_conflict_do_nothing().returning(Media.id)).first()
    if inserted is None:
        return None
    medium = session.get(Media, media_id)
    assert medium is not None
    record(session, principal, "media.upload", target_type="media", target_id=media_id,
           changes={"filename": values["filename"], "mime_type": found.mime_type, "size": found.size})
    outbox.enqueue(session, PROCESS_ACTOR, media_id)
    return medium


def expiry(created_at: datetime) -> datetime | None:
    """When a medium created at ``created_at`` expires (MEDIA_RETENTION_DAYS; None: never)."""
    days = settings.MEDIA_RETENTION_DAYS
    return created_at + timedelta(days=days) if days > 0 else None


def boundary_of(content_type: str | None) -> str:
    """The multipart boundary of a request's Content-Type, or 415."""
    from app.errors import UnsupportedMediaType

    match = re.search(r'boundary="?([^";]{1,200})"?', content_type or "")
    if not (content_type or "").startswith("multipart/form-data") or match is None:
        raise UnsupportedMediaType("Upload a file as multipart/form-data (field `file`), or send JSON with `url`",
                                   details={"content_type": content_type})
    return match.group(1)


# ------------------------------------------------------------------------------------- from a URL

def create_from_url(session: Session, principal: Principal, *, url: str, filename: str | None = None,
                    kind: str | None = None, reencode: bool = False) -> Media:
    """A medium a worker fetches from ``url`` (``processing`` until it arrives and is checked)."""
    problem = ssrf.check_url(url)
    if problem:
        raise ValidationError(details={"url": [problem]})
    organization_id = principal.organization_id
    quotas.serialise(session, organization_id, "media")
    used_bytes, files = used_of(session, organization_id)
    _quota_refusal(used_bytes, files, *quota_of(session, organization_id), 0)
    media_id = new_id("med")
    now = utcnow()
    guessed = filename or url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    medium = Media(id=media_id, organization_id=organization_id, kind=kind or "document",
                   mime_type="application/octet-stream", filename=clean_filename(guessed, media_id, ""),
                   size_bytes=0, storage_key=key_of(organization_id, media_id), status="processing", source="url",
                   source_url=url, fetch_ref={"kind": kind, "reencode": reencode, "filename": filename},
                   created_by=principal.id if principal.kind == "user" else None, created_at=now, updated_at=now,
                   expires_at=expiry(now))
    session.add(medium)
    session.flush()
    record(session, principal, "media.fetch", target_type="media", target_id=media_id,
           changes={"url": ssrf.redact_url(url)})
    outbox.enqueue(session, FETCH_ACTOR, media_id)
    return medium


def store_checked(medium: Media, chunks: Iterable[bytes], *, claimed_type: str | None, kind: str | None,
                  reencode: bool = False, room_bytes: int | None = None) -> Inspected:
    """Stream ``chunks`` into the medium's file through the checks (what a worker fetched); raises
    what the checks raise, leaving no file."""
    inspector = Inspector(filename=medium.filename, claimed_type=claimed_type, kind=kind, reencode=reencode,
                          room_bytes=room_bytes)
    files = media_storage()
    files.save(medium.storage_key, inspector.wrap(chunks))
    try:
        return inspector.finish()
    except BaseException:
        files.delete(medium.storage_key)
        raise


# ------------------------------------------------------------------------------------- reads

def get_media(session: Session, principal: Principal, media_id: str) -> Media:
    return get_scoped(session, Media, principal.organization_id, media_id)


def list_media(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
               kind: str | None = None, status: str | None = None) -> dict:
    stmt = scoped_select(Media, principal.organization_id)
    if kind:
        stmt = stmt.where(Media.kind == kind)
    if status:
        stmt = stmt.where(Media.status == status)
    page = paginate(session, stmt, Media.id, limit=limit, cursor=cursor)
    return {**page, "items": [dump(m) for m in page["items"]]}


def file_key(medium: Media, variant: str) -> str:
    """The storage key of one variant of a medium, or 404 when it has none."""
    if variant == "thumbnail":
        if medium.thumbnail_key is None:
            raise NotFound("This medium has no thumbnail", details={"variant": variant})
        return medium.thumbnail_key
    if variant == "sent":
        return medium.send_key or medium.storage_key
    return medium.storage_key


def readable(medium: Media) -> None:
    """409 unless the medium's file is there to read."""
    if medium.status != "ready":
        raise Conflict(f"The medium is {medium.status}, not ready" +
                       (f": {medium.error}" if medium.error else ""), code="media_not_ready",
                       details={"status": medium.status})


# ------------------------------------------------------------------------------------- sends

#: the medium's kind each media message type needs (document: any)
_MEDIUM_FOR = {"image": "image", "video": "video", "audio": "audio", "voice": "audio", "sticker": "sticker"}


def send_problem(kind: str, medium: Media) -> str | None:
    """Why ``medium`` cannot be sent as a ``kind`` message (its kind, its readiness aside), or None."""
    wanted = _MEDIUM_FOR.get(kind)
    if kind == "voice" and medium.kind == "audio" and not medium.mime_type.startswith("audio/ogg"):
        return f"A voice note is Ogg Opus audio; this medium is {medium.mime_type}."
    if wanted is None or medium.kind == wanted:
        return None
    if kind == "sticker":
        return f"This medium is a {medium.kind} ({medium.mime_type}); upload a 512x512 webp with kind=sticker."
    return f"This media is {medium.mime_type} (a {medium.kind}), not {kind}."


# ------------------------------------------------------------------------------------- delete

def in_use_by(session: Session, medium_id: str) -> list[str]:
    """What keeps a medium: messages waiting to be sent, live templates, unfinished campaigns."""
    row = session.execute(text("""
        SELECT EXISTS (SELECT 1 FROM messages WHERE media_id = :m AND status = ANY(:pending)),
               EXISTS (SELECT 1 FROM templates WHERE deleted_at IS NULL AND header->>'media_id' = :m),
               EXISTS (SELECT 1 FROM campaigns WHERE media_id = :m
                       AND status IN ('draft', 'scheduled', 'running', 'paused'))"""),
        {"m": medium_id, "pending": list(PENDING_MESSAGE_STATUSES)}).one()
    return [name for name, used in zip(("messages", "templates", "campaigns"), row, strict=True) if used]


def delete_media(session: Session, principal: Principal, media_id: str) -> None:
    """Delete a medium and its files now (its bytes leave the quota at once); 409 while a message
    waiting to be sent, a template or an unfinished campaign uses it."""
    medium = get_scoped(session, Media, principal.organization_id, media_id, for_update=True)
    users = in_use_by(session, medium.id)
    if users:
        raise Conflict(f"This medium is used by {', '.join(users)}: it can be deleted once they are done with it",
                       code="media_in_use", details={"used_by": users})
    remove(session, medium)
    record(session, principal, "media.delete", target_type="media", target_id=media_id,
           changes={"filename": medium.filename, "size": medium.size_bytes})


def remove(session: Session, medium: Media) -> None:
    """Mark the medium deleted and delete its files."""
    session.execute(update(Media).where(Media.id == medium.id).values(deleted_at=utcnow(), updated_at=utcnow()))
    delete_files(medium)


def delete_files(medium: Media) -> None:
    """Delete the medium's file, its copy sent and its thumbnail from storage."""
    files = media_storage()
    for key in {medium.storage_key, medium.send_key, medium.thumbnail_key} - {None}:
        files.delete(key)


# ------------------------------------------------------------------------------------- signed links

def signed_link(medium: Media, *, variant: str = "original", ttl: int | None = None) -> dict:
    """A link that downloads the medium without credentials until it expires: ``{url, expires_at}``."""
    token, expires_at = links.sign(_LINK_SALT, [medium.id, medium.organization_id, variant],
                                   ttl or settings.MEDIA_URL_TTL)
    return {"url": f"{links.public_base()}/api/media/{medium.id}/signed-download?token={token}",
            "expires_at": expires_at}


def medium_of_link(session: Session, media_id: str, token: str) -> tuple[Media, str]:
    """The medium and variant a signed link gives; 403 when tampered with, 410 when expired,
    404 when the medium is gone."""
    linked, organization_id, variant = links.verify(_LINK_SALT, token, 3)
    if linked != media_id or variant not in VARIANTS:
        raise links.LinkInvalid()
    return get_scoped(session, Media, organization_id, media_id), variant
