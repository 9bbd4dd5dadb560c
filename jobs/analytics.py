"""Actors of analytics: the rollups (app/analytics/rollup.py) and the exports made by a worker
(app/analytics/export_jobs.py) hold the logic."""
from app.analytics import export_jobs
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


@actor(export_jobs.EXPORT_ACTOR, max_retries=0, time_limit=6 * 3600 * 1000)
def export(export_id: str) -> None:
    """Write an export's CSV file to storage; a run that died is enqueued again by the sweep."""
    export_jobs.run_export(export_id)


@actor(export_jobs.SWEEP_ACTOR, max_retries=0)
def exports_sweep() -> None:
    """Delete expired exports' files; enqueue again the exports whose run died (periodic)."""
    export_jobs.sweep()


every(settings.ANALYTICS_ROLLUP_EVERY, rollups.ROLLUP_ACTOR)
every(export_jobs.SWEEP_EVERY, export_jobs.SWEEP_ACTOR)
