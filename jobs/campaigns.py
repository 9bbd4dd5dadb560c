"""Actors of campaigns (app/campaigns/sending.py holds the logic); all on the ``default`` pool."""
from app.campaigns import sending
from app.campaigns.service import CANCEL_ACTOR, FAN_OUT_ACTOR, HOLD_ACTOR, RESUME_ACTOR
from app.queues import actor
from config import settings
from jobs.periodic import every


@actor(FAN_OUT_ACTOR, max_retries=10, min_backoff=2_000, max_backoff=60_000)
def fan_out(campaign_id: str) -> None:
    """Write the campaign's recipients and their messages, chunk after chunk (resumable)."""
    sending.run_fan_out(campaign_id)


@actor(HOLD_ACTOR, max_retries=10, min_backoff=1_000)
def hold(campaign_id: str) -> None:
    """A paused campaign's queued messages give back their sending slots."""
    sending.run_hold(campaign_id)


@actor(RESUME_ACTOR, max_retries=10, min_backoff=1_000)
def resume(campaign_id: str) -> None:
    """A resumed campaign's queued messages get new slots and jobs."""
    sending.run_resume(campaign_id)


@actor(CANCEL_ACTOR, max_retries=10, min_backoff=1_000)
def cancel_rest(campaign_id: str) -> None:
    """A cancelled (or failed) campaign's messages not sent yet are cancelled."""
    sending.run_cancel_rest(campaign_id)


@actor("campaigns.tick", max_retries=0)
def tick() -> None:
    """Start due campaigns, complete finished ones, restart stalled fan-outs, move dropped clients' shares."""
    sending.run_tick()


every(settings.CAMPAIGN_TICK_EVERY, "campaigns.tick")
