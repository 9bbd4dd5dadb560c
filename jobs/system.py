"""Actors of the platform itself."""
import dramatiq


@dramatiq.actor(actor_name="system.noop", queue_name="default", max_retries=0)
def noop(*args, **kwargs) -> None:
    """Does nothing: the ceiling benchmark and smoke tests use it."""
