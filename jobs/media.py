"""Actors of media, one per step (app/media/processing.py holds the logic); all on ``default``."""
from app.media import fetching, processing, service
from app.queues import actor
from config import settings
from jobs.periodic import every


@actor(service.FETCH_ACTOR, max_retries=fetching.FETCH_ATTEMPTS, min_backoff=2_000, max_backoff=60_000)
def fetch(media_id: str) -> None:
    """Fetch a medium from its URL (retried on network errors and 5xx answers)."""
    fetching.fetch_url(media_id)


@actor(fetching.FETCH_INBOUND_ACTOR, max_retries=fetching.FETCH_ATTEMPTS, min_backoff=2_000,
       max_backoff=60_000)
def fetch_inbound(media_id: str) -> None:
    """Download an inbound message's medium from its transport (Meta's media endpoint)."""
    fetching.fetch_inbound(media_id)


@actor(service.PROCESS_ACTOR, max_retries=5, min_backoff=1_000, max_backoff=60_000)
def process(media_id: str) -> None:
    """Read a stored medium's metadata, make the copy to send, then ready (or failed)."""
    processing.process(media_id)


@actor(processing.THUMBNAIL_ACTOR, max_retries=3)
def thumbnail(media_id: str) -> None:
    """The JPEG thumbnail of an image or sticker."""
    processing.thumbnail(media_id)


@actor("media.expire", max_retries=0)
def expire() -> None:
    """Delete media past their retention that nothing still needs."""
    processing.expire()


every(settings.MEDIA_EXPIRE_EVERY, "media.expire")
