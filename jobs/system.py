"""Actors of the platform itself."""
import dramatiq

from workers.periodic import every


@dramatiq.actor(actor_name="system.noop", queue_name="default", max_retries=0)
def noop(*args, **kwargs) -> None:
    """Does nothing: the ceiling benchmark and smoke tests use it."""


@dramatiq.actor(actor_name="system.check_broker", queue_name="default", max_retries=0)
def check_broker() -> None:
    """If Redis lost its data (restarted without it, flushed), recover at once what Postgres says
    should be in it instead of waiting for each sweeper's patience (app/system/recovery.py)."""
    from app.system import recovery

    recovery.recover_if_wiped()


every(5, "system.check_broker")
