"""What a transport is given for one of our messages (``OutboundMessage``): its text, its media and
its template rendered with the message's variables."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.media.models import Media
from app.templates.models import Template
from app.templates.rendering import render_template
from app.transports.base import MediaRef, OutboundMessage


def build_outbound(session: Session, message: Any) -> OutboundMessage:
    """What the transport sends for ``message`` (a Message or a row of its columns)."""
    media = template = None
    if message.media_id:
        medium = session.get(Media, message.media_id)
        if medium is not None:
            media = media_ref(medium)
    if message.template_id:
        tpl = session.get(Template, message.template_id)
        if tpl is not None:
            template = {"name": tpl.name, "language": tpl.language,
                        "body": render_template(tpl.body, message.variables),
                        "variables": dict(message.variables or {})}
    return OutboundMessage(message_id=message.id, to=message.to_phone, type=message.type, text=message.text,
                           caption=message.caption, media=media, template=template)


def media_ref(media: Media) -> MediaRef:
    """A ``MediaRef`` of a media row."""
    return MediaRef(media_id=media.id, mime_type=media.mime_type, filename=media.filename, size=media.size_bytes)
