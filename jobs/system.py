"""Actors of the platform itself."""
from app.queues import actor
from jobs.periodic import every


@actor("system.noop", max_retries=0)
def noop(*args, **kwargs) -> None:
    """Does nothing: the ceiling benchmark and smoke tests use it."""


@actor("system.check_broker", max_retries=0)
def check_broker() -> None:
    """If Redis lost its data (restarted without it, flushed), recover at once what Postgres says
    should be in it instead of waiting for each sweeper's patience (app/system/recovery.py)."""
    from app.system import recovery

    recovery.recover_if_wiped()


every(5, "system.check_broker")
