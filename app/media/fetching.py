"""Getting a medium's file, one ``media.*`` job per source (jobs/media.py), then ``media.process``:

- ``fetch_url``: download it from its URL through the SSRF guard (each redirect checked too, at
  most MAX_REDIRECTS), refused while it streams as soon as it passes its kind's limit, within
  MEDIA_FETCH_TIMEOUT; network errors and 5xx answers are retried (FETCH_ATTEMPTS);
- ``fetch_inbound``: download an inbound message's medium from its transport (Meta's media
  endpoint for ``cloud``); ``web`` and ``sim`` carry the bytes in their report, and
  ``take_inbound`` stores those at once.
"""
from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from urllib.parse import urljoin

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import outbox
from app.db import job_session, new_id, utcnow
from app.errors import AppError
from app.media import service
from app.media.checks import Inspected
from app.media.models import Media
from app.media.processing import fail, set_failed
from app.security import ssrf
from config import settings

if TYPE_CHECKING:
    from app.messages.models import Message

FETCH_INBOUND_ACTOR = "media.fetch_inbound"
MAX_REDIRECTS = 3
FETCH_ATTEMPTS = 3


class TransientFetchError(Exception):
    """The fetch may work later (network, 5xx): the job is retried."""


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
        return _retry_orfail(media_id, str(exc))
    except AppError as exc:
        return fail(media_id, exc.message)
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
            set_failed(session, medium, "The medium cannot be fetched: its client or reference is gone")
            return "failed"
        info = client_info(session, client)
    try:
        content, mime = CloudTransport(info, SilentSink()).download_media(str(reference["id"]))
    except GraphError as exc:
        if exc.rule.retry:
            return _retry_orfail(media_id, str(exc))
        return fail(media_id, f"Meta refused the download: {exc}")
    try:
        found = service.store_checked(medium, [content], claimed_type=mime or None, kind=reference.get("kind"))
    except AppError as exc:
        return fail(media_id, exc.message)
    return _stored(media_id, found)


def take_inbound(session: Session, message: Message, media: dict) -> str:
    """The medium of an inbound message (its report's ``media``): stored now when the report
    carries the bytes (``data_b64``: web, sim), else fetched by a job (Meta's media id). Inbound
    media count in the organisation's usage but are never refused for the quota: what a contact
    sent is kept. ``message`` (the inbound Message) gets the medium's id."""
    organization_id, client_id = message.organization_id, message.client_id
    media_id = new_id("med")
    now = utcnow()
    kind = "sticker" if media.get("kind") == "sticker" else None
    medium = Media(id=media_id, organization_id=organization_id, kind=kind or "document",
                   mime_type=str(media.get("mime_type") or "application/octet-stream")[:200],
                   filename=service.clean_filename(media.get("filename"), media_id, ""),  # typed once stored
                   size_bytes=0, storage_key=service.key_of(organization_id, media_id), status="processing",
                   source="inbound", client_id=client_id, created_at=now, updated_at=now,
                   expires_at=service.expiry(now),
                   fetch_ref={k: media[k] for k in ("id", "provider", "sha256") if media.get(k)} | {"kind": kind})
    session.add(medium)
    session.flush()
    message.media_id = media_id
    session.flush()
    data = media.get("data_b64")
    if not data:
        outbox.enqueue(session, FETCH_INBOUND_ACTOR, media_id)
        return media_id
    try:
        content = base64.b64decode(data, validate=False)
        found = service.store_checked(medium, [content], claimed_type=media.get("mime_type"), kind=kind)
    except (AppError, ValueError) as exc:
        set_failed(session, medium, exc.message if isinstance(exc, AppError) else "The medium is not valid base64")
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
        set_failed(session, medium, "The organisation's media quota is full")
        return None
    return room


def _retry_orfail(media_id: str, reason: str) -> str:
    with job_session() as session:
        medium = session.get(Media, media_id)
        if medium is not None and medium.attempts < FETCH_ATTEMPTS:
            raise TransientFetchError(reason)
    return fail(media_id, f"{reason} ({FETCH_ATTEMPTS} attempts)")


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
    if medium.filename == medium.id:  # no name given: the id with the extension of what it is
        medium.filename = service.clean_filename(None, medium.id, found.mime_type)
    medium.updated_at = utcnow()


