"""Housekeeping of logins: expired refresh tokens do not pile up forever."""
from app.auth import sessions
from app.db import job_session
from app.queues import actor
from jobs.periodic import every


@actor("auth.purge_expired_tokens", max_retries=0, time_limit=600_000)
def purge_expired_tokens() -> None:
    while True:
        with job_session() as session:
            if sessions.purge_expired_refresh_tokens(session) < sessions.PURGE_BATCH:
                return


every(3600, "auth.purge_expired_tokens")
