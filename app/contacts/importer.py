"""Running a contact import (the ``contacts.import_csv`` job): stream the file, upsert in batches.

A worker *claims* a queued import (``running``, ``attempts + 1``, a lease of ``CONTACT_IMPORT_LEASE``
seconds), reads the stored file from where the last committed batch ended (``processed_bytes``,
``lines_read``), and writes it ``CONTACT_IMPORT_BATCH_ROWS`` rows per transaction: one
``INSERT ... ON CONFLICT (organization_id, phone) DO UPDATE`` of unnest arrays, the list members,
and the import's counts, errors, position and lease, all committed together. A crash loses at most
the batch in flight, whose counts vanish with its rows: the import resumes at the last committed
batch and counts every row exactly once.

Counting: a row is ``invalid`` (with its line and reason, the first 100 kept), a ``duplicate``
(its number appeared earlier in the file: earlier in the batch, or in an earlier batch, which the
contact's ``last_import_id`` tells), ``created`` (a new contact, or a deleted one revived) or
``updated``. ``total = created + updated + duplicates + invalid``. Tags and attributes are merged
into the contact's, a name replaces the old one only when the row has one, an opt-out is never
touched. New contacts count against ``MAX_CONTACTS_PER_ORG`` under the same lock as the API's
(app/quotas.py): rows beyond the cap are invalid rows saying so.

The claim is the fencing token: each batch first locks the import row and goes on only while it
is still ``running`` under this worker's attempt, so a worker presumed dead that wakes up again
cannot write over its successor. The sweeper (``sweep``, periodic) hands on an import whose lease
expired (its worker died: ``queued`` again, a new job) and re-sends the job of one queued for long
(lost with Redis); after ``MAX_ATTEMPTS`` claims an import fails with a clear error instead.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from sqlalchemy import text
from sqlalchemy.orm import Session

from app import outbox, quotas
from app.audit.service import record
from app.contacts.csv_rows import MAX_TAGS, ColumnPlan, Records, RowError, parse_row
from app.db import job_session, new_id
from app.storage import import_storage as storage
from config import settings

log = logging.getLogger(__name__)

MAX_ERRORS = 100
MAX_ATTEMPTS = 5
ACTOR = "contacts.import_csv"


class Superseded(Exception):
    """This worker's claim is gone (the import was handed on, or finished): stop, write nothing."""


@dataclass
class Claim:
    import_id: str
    organization_id: str
    attempt: int
    storage_key: str
    delimiter: str
    plan: ColumnPlan
    region: str | None
    offset: int
    line: int
    list_id: str | None
    live_contacts: int  # counted at the claim; moved on by what this worker creates
    errors_kept: int
    created: int = field(default=0)


Row = tuple[int, str | None, str | None, list[str], dict, str | None]  # line, phone, name, tags, attributes, reason


# ----------------------------------------------------------------------------- the job


def run(import_id: str) -> str:
    """Process import ``import_id`` if it is queued; returns what happened (for the log and tests)."""
    claim = _claim(import_id)
    if claim is None:
        return "skipped"
    try:
        with storage().open(claim.storage_key) as fh:
            records = Records(fh, claim.delimiter, claim.offset, claim.line)
            batch: list[Row] = []
            for line, cells, problem in records:
                batch.append(_row(line, cells, problem, claim))
                if len(batch) >= settings.CONTACT_IMPORT_BATCH_ROWS:
                    _commit(claim, batch, records.offset, records.line, final=False)
                    batch = []
            _commit(claim, batch, records.offset, records.line, final=True)
    except Superseded:
        return "superseded"
    except FileNotFoundError:
        _finish_failed(claim, "The uploaded file is no longer in storage: upload it again.")
        return "failed"
    except BaseException as exc:  # a database error, a shutdown, the time limit: let another try resume
        _release(claim, exc)
        raise
    storage().delete(claim.storage_key)
    return "completed"


def _row(line: int, cells: list[str] | None, problem: str | None, claim: Claim) -> Row:
    if cells is None:
        return (line, None, None, [], {}, problem)
    try:
        phone, name, tags, attributes = parse_row(cells, claim.plan, claim.region)
    except RowError as exc:
        return (line, None, None, [], {}, str(exc))
    return (line, phone, name, tags, attributes, None)


_CLAIM = text("""
    UPDATE contact_imports SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, now()),
           lease_until = now() + make_interval(secs => :lease), updated_at = now()
    WHERE id = :id AND status = 'queued'
    RETURNING organization_id, attempts, storage_key, delimiter, column_plan, default_region, processed_bytes,
              lines_read, list_id, jsonb_array_length(errors) AS errors_kept
""")


def _claim(import_id: str) -> Claim | None:
    with job_session() as session:
        row = session.execute(_CLAIM, {"id": import_id, "lease": settings.CONTACT_IMPORT_LEASE}).one_or_none()
        if row is None:
            return None
        if row.attempts > MAX_ATTEMPTS:
            _fail(session, import_id, f"The import was interrupted {row.attempts - 1} times (its worker stopped "
                                      "or lost the database); upload the file again.")
            return None
        live = session.scalar(text("SELECT count(*) FROM contacts WHERE organization_id = :org AND deleted_at IS NULL"),
                              {"org": row.organization_id})
    return Claim(import_id=import_id, organization_id=row.organization_id, attempt=row.attempts,
                 storage_key=row.storage_key, delimiter=row.delimiter, plan=ColumnPlan.from_json(row.column_plan),
                 region=row.default_region, offset=row.processed_bytes, line=row.lines_read, list_id=row.list_id,
                 live_contacts=int(live or 0), errors_kept=row.errors_kept)


_RELEASE = text("""
    UPDATE contact_imports SET status = CASE WHEN attempts >= :max THEN 'failed' ELSE 'queued' END,
           error_message = CASE WHEN attempts >= :max THEN :error END,
           completed_at = CASE WHEN attempts >= :max THEN now() END,
           lease_until = NULL, updated_at = now()
    WHERE id = :id AND status = 'running' AND attempts = :attempt
""")


def _release(claim: Claim, exc: BaseException) -> None:
    """Give a claim back after an error (the job's retry, or the sweeper, takes the import up again)."""
    try:
        with job_session() as session:
            session.execute(_RELEASE, {"id": claim.import_id, "attempt": claim.attempt, "max": MAX_ATTEMPTS,
                                       "error": f"The import stopped {MAX_ATTEMPTS} times; the last error: "
                                                f"{type(exc).__name__}: {exc}"[:1000]})
    except Exception:  # the database is what failed: the lease runs out and the sweeper hands it on
        log.warning("contact import %s: could not release the claim", claim.import_id, exc_info=True)


def _fail(session: Session, import_id: str, message: str) -> None:
    session.execute(text("UPDATE contact_imports SET status = 'failed', error_message = :msg, completed_at = now(), "
                         "lease_until = NULL, updated_at = now() WHERE id = :id"), {"id": import_id, "msg": message})


def _finish_failed(claim: Claim, message: str) -> None:
    with job_session() as session:
        _lock_claim(session, claim)
        _fail(session, claim.import_id, message)


def _lock_claim(session: Session, claim: Claim) -> None:
    """Lock the import row; Superseded unless it is still this worker's."""
    row = session.execute(text("SELECT status, attempts FROM contact_imports WHERE id = :id FOR UPDATE"),
                          {"id": claim.import_id}).one_or_none()
    if row is None or row.status != "running" or row.attempts != claim.attempt:
        raise Superseded(claim.import_id)


# ----------------------------------------------------------------------------- one batch


@dataclass
class BatchResult:
    created: int = 0
    updated: int = 0
    duplicates: int = 0
    invalid: int = 0
    errors: list = field(default_factory=list)


_PROGRESS = text("""
    UPDATE contact_imports SET total_rows = total_rows + :total, created_count = created_count + :created,
           updated_count = updated_count + :updated, duplicate_count = duplicate_count + :duplicates,
           invalid_count = invalid_count + :invalid, errors = errors || CAST(:errors AS jsonb),
           processed_bytes = :offset, lines_read = :line, updated_at = now(),
           status = CASE WHEN :final THEN 'completed' ELSE status END,
           completed_at = CASE WHEN :final THEN now() END,
           lease_until = CASE WHEN :final THEN NULL ELSE now() + make_interval(secs => :lease) END
    WHERE id = :id
    RETURNING total_rows, created_count, updated_count, duplicate_count, invalid_count
""")


def _commit(claim: Claim, rows: list[Row], offset: int, line: int, *, final: bool) -> None:
    """One transaction: the batch's contacts, the import's counts and position (and, at the end,
    its completion and audit row)."""
    with job_session() as session:
        _lock_claim(session, claim)
        result = write_batch(session, claim, rows)
        totals = session.execute(_PROGRESS, {
            "id": claim.import_id, "total": len(rows), "created": result.created, "updated": result.updated,
            "duplicates": result.duplicates, "invalid": result.invalid, "errors": json.dumps(result.errors),
            "offset": offset, "line": line, "final": final, "lease": settings.CONTACT_IMPORT_LEASE}).one()
        if final:
            record(session, None, "contact.import_completed", organization_id=claim.organization_id,
                   target_type="contact_import", target_id=claim.import_id,
                   changes={"total": totals.total_rows, "created": totals.created_count,
                            "updated": totals.updated_count, "duplicates": totals.duplicate_count,
                            "invalid": totals.invalid_count})
    claim.errors_kept += len(result.errors)
    claim.created += result.created


_BEFORE = text("""
    SELECT phone, deleted_at IS NOT NULL AS deleted, last_import_id IS NOT DISTINCT FROM :imp AS seen
    FROM contacts WHERE organization_id = :org AND phone = ANY(CAST(:phones AS text[]))
""")

_UPSERT = text("""
    INSERT INTO contacts AS c (id, organization_id, phone, name, tags, attributes, last_import_id)
    SELECT r.id, :org, r.phone, r.name, ARRAY(SELECT jsonb_array_elements_text(CAST(r.tags AS jsonb))),
           CAST(r.attributes AS jsonb), :imp
    FROM unnest(CAST(:ids AS text[]), CAST(:phones AS text[]), CAST(:names AS text[]), CAST(:tags AS text[]),
                CAST(:attributes AS text[])) AS r(id, phone, name, tags, attributes)
    ON CONFLICT ON CONSTRAINT contacts_org_phone_key DO UPDATE SET
        name = CASE WHEN c.deleted_at IS NOT NULL THEN EXCLUDED.name ELSE COALESCE(EXCLUDED.name, c.name) END,
        tags = CASE WHEN c.deleted_at IS NOT NULL THEN EXCLUDED.tags
                    WHEN cardinality(EXCLUDED.tags) = 0 THEN c.tags
                    ELSE (c.tags || ARRAY(SELECT t FROM unnest(EXCLUDED.tags) AS t WHERE NOT t = ANY(c.tags)))[1:50]
               END,
        attributes = CASE WHEN c.deleted_at IS NOT NULL THEN EXCLUDED.attributes
                          ELSE c.attributes || EXCLUDED.attributes END,
        deleted_at = NULL, last_import_id = EXCLUDED.last_import_id, updated_at = now()
    RETURNING c.phone, c.id, (c.xmax = 0) AS inserted
""")

_MEMBERS = text("""
    INSERT INTO contact_list_members (list_id, contact_id, organization_id)
    SELECT :list, id, :org FROM unnest(CAST(:ids AS text[])) AS id
    ON CONFLICT DO NOTHING
""")


def write_batch(session: Session, claim: Claim, rows: list[Row]) -> BatchResult:
    """Upsert one batch's valid rows (repeats of a number within it merged into one), in the
    caller's transaction; what each row turned out to be."""
    result = BatchResult()
    bad: list[tuple[int, str]] = [(r[0], r[5]) for r in rows if r[5] is not None]
    merged: dict[str, list] = {}  # phone -> [name, tags, attributes, lines]
    for line, phone, name, tags, attributes, reason in rows:
        if reason is not None or phone is None:
            continue
        m = merged.get(phone)
        if m is None:
            merged[phone] = [name, list(tags), dict(attributes), [line]]
            continue
        m[0] = name or m[0]
        m[1].extend(t for t in tags if t not in m[1])
        del m[1][MAX_TAGS:]
        m[2].update(attributes)
        m[3].append(line)
    phones = sorted(merged)  # one lock order for every writer: no deadlock between two imports
    before = {r.phone: r for r in session.execute(_BEFORE, {"org": claim.organization_id, "imp": claim.import_id,
                                                           "phones": phones})} if phones else {}
    new = [p for p in phones if p not in before or before[p].deleted]
    refused = _over_cap(session, claim, new, merged)
    for phone in refused:
        bad.extend((line, f"the organisation has as many contacts as it may have ({settings.MAX_CONTACTS_PER_ORG}, "
                          "MAX_CONTACTS_PER_ORG)") for line in merged[phone][3])
    kept = [p for p in phones if p not in refused]
    if kept:
        written = session.execute(_UPSERT, {
            "org": claim.organization_id, "imp": claim.import_id, "ids": [new_id("ctc") for _ in kept],
            "phones": kept, "names": [merged[p][0] for p in kept],
            "tags": [json.dumps(merged[p][1]) for p in kept],
            "attributes": [json.dumps(merged[p][2]) for p in kept]}).all()
        for w in written:
            occurrences = len(merged[w.phone][3])
            prior = before.get(w.phone)
            if prior is not None and prior.seen and not prior.deleted:
                result.duplicates += occurrences
                continue
            if w.inserted or (prior is not None and prior.deleted):
                result.created += 1
            else:
                result.updated += 1
            result.duplicates += occurrences - 1
        if claim.list_id:
            session.execute(_MEMBERS, {"list": claim.list_id, "org": claim.organization_id,
                                       "ids": [w.id for w in written]})
    result.invalid = len(bad)
    room = MAX_ERRORS - claim.errors_kept
    if room > 0 and bad:
        result.errors = [{"line": line, "reason": reason} for line, reason in sorted(bad)[:room]]
    return result


def _over_cap(session: Session, claim: Claim, new: list[str], merged: dict[str, list]) -> set[str]:
    """The new numbers of a batch that would take the organisation past its contact cap (the ones
    latest in the file). Under the cap's lock; the count taken at the claim, moved on by what this
    worker created, is trusted while the batch fits under the cap with it, else counted again."""
    if not new:
        return set()
    limit = settings.MAX_CONTACTS_PER_ORG
    quotas.serialise(session, claim.organization_id, "contacts")
    if claim.live_contacts + claim.created + len(new) <= limit:
        return set()
    live = int(session.scalar(text("SELECT count(*) FROM contacts WHERE organization_id = :org "
                                   "AND deleted_at IS NULL"), {"org": claim.organization_id}) or 0)
    claim.live_contacts, claim.created = live, 0
    room = max(0, limit - live)
    if room >= len(new):
        return set()
    latest_last = sorted(new, key=lambda p: merged[p][3][0])
    return set(latest_last[room:])


# ----------------------------------------------------------------------------- the sweeper


_HAND_ON = text("""
    UPDATE contact_imports SET status = CASE WHEN attempts >= :max THEN 'failed' ELSE 'queued' END,
           error_message = CASE WHEN attempts >= :max
                                THEN 'The import was interrupted ' || attempts || ' times (its worker stopped); '
                                     || 'upload the file again.' END,
           completed_at = CASE WHEN attempts >= :max THEN now() END, lease_until = NULL, updated_at = now()
    WHERE status = 'running' AND lease_until < now()
    RETURNING id, status, storage_key
""")

_LOST = text("""
    UPDATE contact_imports SET updated_at = now()
    WHERE id IN (SELECT id FROM contact_imports WHERE status = 'queued'
                 AND updated_at < now() - make_interval(secs => :lease) FOR UPDATE SKIP LOCKED)
    RETURNING id
""")


def sweep(session: Session) -> dict:
    """Hand on imports whose worker died (lease expired), re-send jobs of imports queued for longer
    than a lease (lost with the broker); what it did."""
    handed = session.execute(_HAND_ON, {"max": MAX_ATTEMPTS}).all()
    lost = [r.id for r in session.execute(_LOST, {"lease": settings.CONTACT_IMPORT_LEASE})]
    again = [r.id for r in handed if r.status == "queued"] + lost
    outbox.enqueue_many(session, ACTOR, [[i] for i in again])
    failed = [r for r in handed if r.status == "failed"]
    for r in failed:
        if r.storage_key:
            storage().delete(r.storage_key)
    if handed or lost:
        log.warning("contact imports: handed on %d, re-sent %d, failed %d", len(handed) - len(failed), len(lost),
                    len(failed))
    return {"handed_on": len(handed) - len(failed), "resent": len(lost), "failed": len(failed)}
