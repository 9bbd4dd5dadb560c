"""Actors of the transport inbox (app/inbox/service.py holds the logic)."""
from app.db import job_session
from app.queues import actor
from config import settings
from jobs.periodic import every


@actor("inbox.apply_due", max_retries=20, min_backoff=500, max_backoff=60_000)
def apply_due(tick: int = 0) -> None:
    """Apply every transport report (client statuses, acks, inbound messages) due by now, in batches."""
    from app.inbox import apply as inbox_apply

    inbox_apply.apply_due(tick)


@actor("inbox.apply", max_retries=20, min_backoff=500, max_backoff=60_000)
def apply(event_id: int) -> None:
    """Apply one transport report once (the jobs of earlier versions; reports now wake apply_due)."""
    from app.inbox import apply as inbox_apply

    inbox_apply.apply(event_id)


@actor("inbox.sweep", max_retries=0)
def sweep() -> None:
    """Send again the reports whose job the broker lost; purge the applied ones after a day."""
    from app.inbox import service

    with job_session() as session:
        service.redispatch(session)
    with job_session() as session:
        service.purge(session)


every(max(1, settings.INBOX_REDISPATCH_AFTER // 3), "inbox.sweep")
