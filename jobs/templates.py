"""Actors of templates' reviews (app/templates/reviews.py holds the logic)."""
from app.queues import actor
from app.templates import reviews
from config import settings
from jobs.periodic import every


@actor(reviews.SUBMIT_ACTOR, max_retries=8, min_backoff=5_000, max_backoff=600_000)
def submit(template_id: str, client_id: str, examples: dict | None = None) -> None:
    """Submit a template for review on one client (Meta's template manager, or the simulator)."""
    reviews.run_submit(template_id, client_id, examples)


@actor(reviews.SIM_REVIEW_ACTOR, max_retries=3)
def sim_review(template_id: str, client_id: str) -> None:
    """The simulator's verdict on a submitted template."""
    reviews.run_sim_review(template_id, client_id)


@actor("templates.sync", max_retries=0)
def sync() -> None:
    """Meta's statuses of every submitted template (a verdict whose webhook was lost)."""
    reviews.run_sync()


@actor(reviews.DELETE_AT_META_ACTOR, max_retries=8, min_backoff=5_000, max_backoff=600_000)
def delete_at_meta(client_id: str, name: str) -> None:
    """Delete a deleted template from the WhatsApp Business Account too."""
    reviews.run_delete_at_meta(client_id, name)


every(settings.TEMPLATE_SYNC_EVERY, "templates.sync")
