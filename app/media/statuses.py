"""Media statuses, kinds and sources, in one place (how a medium moves: app/media/processing.py)."""
from __future__ import annotations

from typing import Literal, get_args

MediaStatus = Literal["processing", "ready", "failed"]
MEDIA_STATUSES: tuple[str, ...] = get_args(MediaStatus)
#: what WhatsApp makes of a file (a sticker is a small webp; a voice note is an audio medium sent as ``voice``)
MediaKind = Literal["image", "video", "audio", "document", "sticker"]
MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)
MediaSource = Literal["upload", "url", "inbound"]
MEDIA_SOURCES: tuple[str, ...] = get_args(MediaSource)
#: messages still to be sent: a medium they use is neither expired nor deletable
PENDING_MESSAGE_STATUSES = ("queued", "sending", "unknown")
