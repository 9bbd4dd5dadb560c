"""Exports made by a worker: ``POST /api/analytics/exports`` records what to export and enqueues
``analytics.export``; the job writes the CSV (the same rows as ``GET /api/analytics/export``) to
media storage and the export becomes ``ready`` with a signed download link, until it expires
(``ANALYTICS_EXPORT_TTL``; the sweep deletes the file, the row stays ``expired``).

How an export moves: ``queued`` -> ``running`` (a claim: one UPDATE, so a job delivered twice runs
once) -> ``ready`` or ``failed``. A running export holds a lease its job renews while it writes; a
worker that died leaves the lease to run out, and the sweep (``analytics.exports_sweep``) enqueues
the job again, up to ``MAX_ATTEMPTS`` runs. Each run writes a file of its own (the attempt is in
the key) and only the run holding the lease may mark it ready, so a late run never overwrites.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app import links, outbox
from app.analytics import exports
from app.analytics.models import AnalyticsExport
from app.analytics.service import MAX_RANGE_DAYS, checked_range, scope
from app.analytics.statuses import OPEN_EXPORT_STATUSES
from app.audit.service import record
from app.db import job_session, new_id, new_session, rowcount, utcnow
from app.errors import AppError, NotFound, ValidationError
from app.pagination import paginate
from app.security.principal import Principal
from app.storage import media_storage
from config import settings

log = logging.getLogger(__name__)

EXPORT_ACTOR = "analytics.export"
SWEEP_ACTOR = "analytics.exports_sweep"
SWEEP_EVERY = 300
#: exports of one organisation queued or running at once; one more is a 429
MAX_OPEN_EXPORTS = 3
#: exports of one organisation whose file is kept (ready, not expired yet); one more is a 429 too:
#: delete one, or wait for one to expire
MAX_KEPT_EXPORTS = 20
MAX_ATTEMPTS = 3
LEASE_SECONDS = 600
#: the lease is renewed this often while the file is written
RENEW_EVERY = 60
CHUNK_BYTES = 256 * 1024
_LINK_SALT = "analytics-export-link"


class TooManyExports(AppError):
    status, code, message = 429, "too_many_exports", "Too many exports are already being made"


class ExportNotReady(AppError):
    status, code, message = 409, "export_not_ready", "The export is not ready"


class LeaseLost(Exception):
    """Another run took the export over (this one was too slow to renew its lease)."""


# ------------------------------------------------------------------------------------- the API side

def create_export(session: Session, principal: Principal, *, what: str = "rollups", format: str = "csv",
                  start: datetime | None = None, end: datetime | None = None,
                  client_id: str | None = None) -> AnalyticsExport:
    """Record an export of the range (checked now: a bad range or client is an error) and enqueue its job."""
    if format != "csv":
        raise ValidationError("unknown format", details={"format": ["csv is the one format"]})
    start, end = checked_range(start, end, MAX_RANGE_DAYS)
    scope(session, principal, client_id, None)  # 404 for a client the caller may not see
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                    {"k": f"analytics-exports:{principal.organization_id}"})
    open_now = session.scalar(select(func.count()).select_from(AnalyticsExport).where(
        AnalyticsExport.organization_id == principal.organization_id,
        AnalyticsExport.status.in_(OPEN_EXPORT_STATUSES)))
    if open_now >= MAX_OPEN_EXPORTS:
        raise TooManyExports(f"{open_now} exports are queued or running; at most {MAX_OPEN_EXPORTS} at once",
                             details={"open": open_now, "limit": MAX_OPEN_EXPORTS})
    kept = session.scalar(select(func.count()).select_from(AnalyticsExport).where(
        AnalyticsExport.organization_id == principal.organization_id, AnalyticsExport.status == "ready"))
    if kept >= MAX_KEPT_EXPORTS:
        raise TooManyExports(f"{kept} exports are kept; delete one (or wait for one to expire) to make another",
                             details={"kept": kept, "limit": MAX_KEPT_EXPORTS})
    clients = sorted(principal.client_ids) if principal.client_ids is not None else None
    row = AnalyticsExport(id=new_id("exp"), organization_id=principal.organization_id, what=what, format=format,
                          status="queued", created_by=principal.id, params={
                              "start": start.isoformat(), "end": end.isoformat(), "client_id": client_id,
                              "client_ids": clients})
    session.add(row)
    session.flush()
    record(session, principal, "analytics_export.create", target_type="analytics_export", target_id=row.id,
           changes={"what": what, **row.params})
    outbox.enqueue(session, EXPORT_ACTOR, row.id)
    return row


def _visible(stmt, principal: Principal):
    """Exports the caller may see: the organisation's, or only their own when limited to some clients."""
    stmt = stmt.where(AnalyticsExport.organization_id == principal.organization_id)
    if principal.client_ids is not None:
        stmt = stmt.where(AnalyticsExport.created_by == principal.id)
    return stmt


def get_export(session: Session, principal: Principal, export_id: str) -> AnalyticsExport:
    row = session.scalars(_visible(select(AnalyticsExport).where(AnalyticsExport.id == export_id), principal)).first()
    if row is None:
        raise NotFound("export not found")
    return row


def list_exports(session: Session, principal: Principal, *, limit: int, cursor: str | None = None) -> dict:
    page = paginate(session, _visible(select(AnalyticsExport), principal), AnalyticsExport.id,
                    limit=limit, cursor=cursor)
    return {**page, "items": [describe(row) for row in page["items"]]}


def delete_export(session: Session, principal: Principal, export_id: str) -> None:
    """Delete an export and its file (a run still writing it throws its own file away)."""
    row = get_export(session, principal, export_id)
    if row.storage_key:
        media_storage().delete(row.storage_key)
    session.delete(row)
    record(session, principal, "analytics_export.delete", target_type="analytics_export", target_id=export_id)


def describe(row: AnalyticsExport) -> dict:
    """The export as the API shows it: its range, progress and, once ready, a signed download link."""
    out = {"id": row.id, "what": row.what, "format": row.format, "status": row.status,
           "from": row.params.get("start"), "to": row.params.get("end"), "client_id": row.params.get("client_id"),
           "rows": row.rows, "size_bytes": row.size_bytes, "error": row.error, "attempts": row.attempts,
           "created_at": row.created_at, "finished_at": row.finished_at, "expires_at": row.expires_at,
           "download_url": None, "download_expires_at": None}
    if row.status == "ready" and row.expires_at:
        ttl = max(1, min(settings.MEDIA_URL_TTL, int((row.expires_at - utcnow()).total_seconds())))
        token, expires_at = links.sign(_LINK_SALT, [row.id, row.organization_id], ttl)
        out["download_url"] = f"{links.public_base()}/api/analytics/exports/{row.id}/signed-download?token={token}"
        out["download_expires_at"] = expires_at
    return out


def readable(row: AnalyticsExport) -> str:
    """The storage key of a ready export's file (409 before it is ready, 404 once expired)."""
    if row.status == "expired" or (row.status == "ready" and row.expires_at and row.expires_at <= utcnow()):
        raise NotFound("the export has expired and its file was deleted")
    if row.status != "ready" or not row.storage_key:
        raise ExportNotReady(f"the export is {row.status}", details={"status": row.status})
    return row.storage_key


def export_of_link(session: Session, export_id: str, token: str) -> AnalyticsExport:
    """The export a signed link downloads; 403 when altered, 410 when expired, 404 when deleted."""
    linked, organization_id = links.verify(_LINK_SALT, token, 2)
    if linked != export_id:
        raise links.LinkInvalid()
    row = session.scalars(select(AnalyticsExport).where(AnalyticsExport.id == export_id,
                                                        AnalyticsExport.organization_id == organization_id)).first()
    if row is None:
        raise NotFound("export not found")
    return row


def file_name(row: AnalyticsExport) -> str:
    return f"analytics-{row.what}-{row.id}.csv"


# ------------------------------------------------------------------------------------- the job

_CLAIM = text("""
    UPDATE analytics_exports SET status = 'running', attempts = attempts + 1, started_at = now(),
        lease_until = now() + make_interval(secs => :lease), error = NULL
    WHERE id = :id AND attempts < :max_attempts
      AND (status = 'queued' OR (status = 'running' AND lease_until < now()))
    RETURNING organization_id, what, format, params, attempts, created_by
""")


def _update_own_run(export_id: str, attempt: int, sets: str, **params) -> bool:
    """``UPDATE ... SET sets`` of the export while this run holds it (running, its attempt): False when
    it was deleted meanwhile or taken over by a later run."""
    with job_session() as session:
        return bool(rowcount(session.execute(text(
            f"UPDATE analytics_exports SET {sets} WHERE id = :id AND status = 'running' AND attempts = :a"),
            {"id": export_id, "a": attempt, **params})))


def run_export(export_id: str) -> str:
    """The ``analytics.export`` job: claim the export, write its file, mark it ready (or failed).
    Returns what happened: ``ready``, ``failed``, ``skipped`` (not ours to run) or ``lost``."""
    with job_session() as session:
        claimed = session.execute(_CLAIM, {"id": export_id, "lease": LEASE_SECONDS,
                                           "max_attempts": MAX_ATTEMPTS}).one_or_none()
    if claimed is None:
        return "skipped"
    key = f"exports/{claimed.organization_id}/{export_id}-{claimed.attempts}.{claimed.format}"
    files = media_storage()
    writer = _Writer(export_id, claimed.attempts)
    try:
        size = files.save(key, writer.chunks(_lines(claimed)))
    except LeaseLost:
        files.delete(key)
        return "lost"
    except Exception as exc:  # the data could not be exported: say why, keep nothing half-written
        files.delete(key)
        log.warning("export %s failed: %s", export_id, exc, exc_info=not isinstance(exc, AppError))
        message = exc.message if isinstance(exc, AppError) else "the export could not be written"
        _update_own_run(export_id, claimed.attempts, "status = 'failed', error = :error, finished_at = now(), "
                        "lease_until = NULL", error=message[:500])
        return "failed"
    if not _update_own_run(export_id, claimed.attempts,
                           "status = 'ready', rows = :rows, size_bytes = :size, storage_key = :key, "
                           "finished_at = now(), lease_until = NULL, expires_at = now() + make_interval(secs => :ttl)",
                           rows=writer.rows, size=size, key=key, ttl=settings.ANALYTICS_EXPORT_TTL):
        files.delete(key)
        return "lost"
    return "ready"


def _lines(claimed) -> Iterator[str]:
    params = claimed.params
    ids = params.get("client_ids")
    principal = Principal(organization_id=claimed.organization_id, kind="system", id=claimed.created_by,
                          role="admin", client_ids=frozenset(ids) if ids is not None else None)
    with new_session() as session:  # checks the client is still there before anything is written
        return exports.export(session, principal, what=claimed.what, format=claimed.format,
                              start=datetime.fromisoformat(params["start"]), end=datetime.fromisoformat(params["end"]),
                              client_id=params.get("client_id"))


class _Writer:
    """The CSV lines of a run as UTF-8 chunks of about CHUNK_BYTES (storage writes them as they
    come), counting the data rows and renewing the run's lease every RENEW_EVERY seconds."""

    def __init__(self, export_id: str, attempt: int):
        self.export_id, self.attempt, self.renewed = export_id, attempt, time.monotonic()
        self.rows = -1  # the header is not a row

    def chunks(self, lines: Iterable[str]) -> Iterator[bytes]:
        parts: list[bytes] = []
        size = 0
        for line in lines:
            self.rows += 1
            data = line.encode()
            parts.append(data)
            size += len(data)
            if size >= CHUNK_BYTES:
                self._keep_lease()
                yield b"".join(parts)
                parts, size = [], 0
        if parts:
            yield b"".join(parts)

    def _keep_lease(self) -> None:
        if time.monotonic() - self.renewed < RENEW_EVERY:
            return
        if not _update_own_run(self.export_id, self.attempt, "lease_until = now() + make_interval(secs => :lease)",
                               lease=LEASE_SECONDS):
            raise LeaseLost(self.export_id)
        self.renewed = time.monotonic()


def sweep() -> dict:
    """``analytics.exports_sweep``: delete the files of expired exports, enqueue again the exports
    whose run died (lease over) or whose job never came, and fail those out of attempts."""
    counts = {"expired": 0, "requeued": 0, "failed": 0}
    files = media_storage()
    with job_session() as session:
        expired = session.execute(text("""SELECT id, storage_key FROM analytics_exports
                                          WHERE status = 'ready' AND expires_at <= now() LIMIT 500""")).all()
        for row in expired:  # the files first: a row marked expired never keeps a file behind
            if row.storage_key:
                files.delete(row.storage_key)
        session.execute(text("""UPDATE analytics_exports SET status = 'expired', storage_key = NULL
                                WHERE id = ANY(CAST(:ids AS text[])) AND status = 'ready'"""),
                        {"ids": [row.id for row in expired]})
        counts["expired"] = len(expired)
        counts["failed"] = rowcount(session.execute(text("""
            UPDATE analytics_exports SET status = 'failed', finished_at = now(), lease_until = NULL,
                error = 'the export was interrupted ' || attempts || ' times'
            WHERE status = 'running' AND lease_until < now() AND attempts >= :max"""), {"max": MAX_ATTEMPTS}))
        stale = session.scalars(text("""
            SELECT id FROM analytics_exports
            WHERE (status = 'running' AND lease_until < now()) OR (status = 'queued' AND created_at < :quiet)"""),
            {"quiet": utcnow() - timedelta(seconds=SWEEP_EVERY)}).all()
        outbox.enqueue_many(session, EXPORT_ACTOR, [[export_id] for export_id in stale])
        counts["requeued"] = len(stale)
    return counts
