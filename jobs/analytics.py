"""Actors of the analytics rollups (app/analytics/rollup.py holds the logic)."""
from app.analytics import rollup as rollups
from app.db import job_session
from app.queues import actor
from config import settings
from jobs.periodic import every


@actor(rollups.ROLLUP_ACTOR, max_retries=0)
def rollup() -> None:
    """Fold the message status changes not read yet into the hourly and daily rollups (periodic)."""
    with job_session() as session:
        rollups.run_rollup(session)


every(settings.ANALYTICS_ROLLUP_EVERY, rollups.ROLLUP_ACTOR)
