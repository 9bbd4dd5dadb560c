"""Actors of the transport inbox (app/inbox/service.py holds the logic)."""
import dramatiq

from app.db import job_session
from config import settings
from workers.periodic import every


@dramatiq.actor(actor_name="inbox.apply", queue_name="default", max_retries=20, min_backoff=500, max_backoff=60_000)
def apply(event_id: int) -> None:
    """Apply one transport report (a client status, an ack, an inbound message) once."""
    from app.inbox import service

    service.apply(event_id)


@dramatiq.actor(actor_name="inbox.sweep", queue_name="default", max_retries=0)
def sweep() -> None:
    """Send again the reports whose job the broker lost; purge the applied ones after a day."""
    from app.inbox import service

    with job_session() as session:
        service.redispatch(session)
    with job_session() as session:
        service.purge(session)


every(max(1, settings.INBOX_REDISPATCH_AFTER // 3), "inbox.sweep")
