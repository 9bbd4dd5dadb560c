"""Contact imports as the API sees them: accepting an upload, showing imports and their progress.

``create_import`` checks what it can before answering 202: the form fields (``mapping``,
``list_id``, ``default_region``), and the file itself while it is streamed to file storage
(``app/storage``) — UTF-8, no NUL byte, at most ``CONTACT_IMPORT_MAX_ROWS`` rows and
``CONTACT_IMPORT_MAX_BYTES`` bytes, a header that names a phone column (``csv_rows.Inspector``,
``plan_columns``). Only then is the import row written, with how to read the file, and its job
enqueued after commit. The rows themselves are read by a worker (app/contacts/importer.py).
"""
from __future__ import annotations

from typing import BinaryIO

from sqlalchemy.orm import Session

from app import outbox
from app.audit.service import record
from app.contacts.csv_rows import Inspector, check_mapping, check_region, plan_columns
from app.contacts.importer import ACTOR
from app.contacts.models import ContactImport, ContactList
from app.db import get_scoped, new_id, scoped_select
from app.errors import NotFound, PayloadTooLarge, ValidationError
from app.pagination import paginate
from app.security.principal import Principal
from app.storage import import_storage as storage
from config import settings

CHUNK = 1 << 20


def too_large(limit: int | None = None) -> PayloadTooLarge:
    limit = limit or settings.CONTACT_IMPORT_MAX_BYTES
    return PayloadTooLarge(f"A contact import is at most {limit} bytes (CONTACT_IMPORT_MAX_BYTES): split the file",
                           details={"limit_bytes": limit})


def _chunks(stream: BinaryIO, inspector: Inspector, limit: int):
    while chunk := stream.read(CHUNK):
        if inspector.size + len(chunk) > limit:
            raise too_large(limit)
        yield inspector.feed(chunk)
    inspector.finish()


def create_import(session: Session, principal: Principal, *, stream: BinaryIO, filename: str | None,
                  mapping: str | None = None, list_id: str | None = None,
                  default_region: str | None = None) -> ContactImport:
    """Store an uploaded CSV and queue its import; 422 naming the field at fault, 413 above the size limit."""
    columns = check_mapping(mapping)
    region = check_region(default_region) or check_region(settings.CONTACT_IMPORT_DEFAULT_REGION or None)
    if list_id is not None:
        try:
            get_scoped(session, ContactList, principal.organization_id, list_id)
        except NotFound:
            raise ValidationError(details={"list_id": ["No such contact list."]}) from None
    import_id = new_id("imp")
    key = f"contact-imports/{principal.organization_id}/{import_id}.csv"
    inspector = Inspector(settings.CONTACT_IMPORT_MAX_ROWS)
    files = storage()
    size = files.save(key, _chunks(stream, inspector, settings.CONTACT_IMPORT_MAX_BYTES))
    try:
        delimiter, plan = plan_columns(inspector.header, columns)
    except ValidationError:
        files.delete(key)
        raise
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1][:255] or None
    row = ContactImport(id=import_id, organization_id=principal.organization_id,
                        created_by=principal.id if principal.kind == "user" else None, filename=name, storage_key=key,
                        status="queued", list_id=list_id, delimiter=delimiter, column_plan=plan.to_json(),
                        default_region=region, size_bytes=size, processed_bytes=inspector.header_end, lines_read=1)
    session.add(row)
    session.flush()
    record(session, principal, "contact.import", target_type="contact_import", target_id=import_id,
           changes={"filename": name, "size_bytes": size, "list_id": list_id, "delimiter": delimiter,
                    "mapping": columns, "default_region": region})
    outbox.enqueue(session, ACTOR, import_id)
    session.refresh(row)
    return row


def get_import(session: Session, principal: Principal, import_id: str) -> ContactImport:
    return get_scoped(session, ContactImport, principal.organization_id, import_id)


def list_imports(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                 status: str | None = None) -> dict:
    stmt = scoped_select(ContactImport, principal.organization_id)
    if status:
        stmt = stmt.where(ContactImport.status == status)
    return paginate(session, stmt, ContactImport.id, limit=limit, cursor=cursor)
