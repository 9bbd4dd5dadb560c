"""Actors of automations (app/automations/engine.py holds the logic)."""
from app.automations import engine
from app.queues import actor


@actor("automations.on_inbound", max_retries=10, min_backoff=1000, max_backoff=60_000)
def on_inbound(message_id: str) -> None:
    """Evaluate the organisation's automations on one inbound message (once: runs are unique per
    automation and message, replies carry an idempotency key)."""
    engine.on_inbound(message_id)
