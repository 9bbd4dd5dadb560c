"""Contact actors, on the ``default`` queue: CSV imports (app/contacts/importer.py).

``import_csv`` streams one uploaded file into contacts in batches; a redelivered or duplicate job
finds the import claimed or done and does nothing. ``sweep_imports`` (periodic) hands on an import
whose worker died (its lease ran out) and re-sends the job of one left queued.
"""
import logging

from app.contacts import importer
from app.db import job_session
from app.queues import actor
from config import settings
from jobs.periodic import every

log = logging.getLogger(__name__)


@actor("contacts.import_csv", max_retries=3, min_backoff=2000, max_backoff=60_000, time_limit=4 * 3600 * 1000,
       notify_shutdown=True)
def import_csv(import_id: str) -> None:
    """Import the rows of an uploaded CSV, resuming after the last committed batch."""
    outcome = importer.run(import_id)
    log.info("contact import %s: %s", import_id, outcome)


@actor("contacts.sweep_imports", max_retries=0)
def sweep_imports() -> None:
    with job_session() as session:
        importer.sweep(session)


every(max(1, settings.CONTACT_IMPORT_LEASE // 3), "contacts.sweep_imports")
