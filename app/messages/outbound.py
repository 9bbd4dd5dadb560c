"""What a transport is given for one of our messages (``OutboundMessage``): its text, its media and
its template rendered with the message's variables."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app.media.models import Media
from app.templates.models import Template
from app.templates.rendering import placeholders_of, render_text
from app.transports.base import MediaRef, OutboundMessage
from config import settings


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
            template = template_for_send(session, tpl, dict(message.variables or {}))
    return OutboundMessage(message_id=message.id, to=message.to_phone, type=message.type, text=message.text,
                           caption=message.caption, media=media, template=template)


def template_for_send(session: Session, tpl: Template, variables: dict) -> dict:
    """What a transport needs of a template: its name and language and the variables of each
    part (cloud sends those to Meta), and the whole rendered text (``body``: what others send)."""
    header = tpl.header or {}
    template: dict = {"name": tpl.name, "language": tpl.language, "body": render_text(tpl, variables),
                      "variables": variables, "body_variables": placeholders_of(tpl.body)}
    if header.get("type") == "text":
        template["header_variables"] = placeholders_of(header.get("text"))
    elif header.get("media_id"):
        medium = session.get(Media, header["media_id"])
        if medium is not None:
            template["header_media_ref"] = (header["type"], media_ref(medium))
    urls = {i: placeholders_of(b.get("url")) for i, b in enumerate(tpl.buttons or []) if b.get("type") == "url"}
    template["button_variables"] = {i: names for i, names in urls.items() if names}
    return template


def media_ref(media: Media) -> MediaRef:
    """What a transport sends of a medium: its copy to send (EXIF stripped, re-encoded) as a local
    file (from storage: a cached copy when storage is remote), and a signed link Meta can fetch
    when this server has a public address (``PUBLIC_URL``; else the cloud transport uploads it)."""
    from app.media.service import signed_link
    from app.storage import media_storage

    sent = (media.metadata_ or {}).get("sent") if media.send_key else None
    key = media.send_key or media.storage_key
    try:
        path: str | None = str(media_storage().local_path(key))
    except (FileNotFoundError, OSError):
        path = None  # the transport fails the send as media_unavailable
    url = signed_link(media, variant="sent")["url"] if settings.PUBLIC_URL else None
    return MediaRef(media_id=media.id, mime_type=(sent or {}).get("mime_type") or media.mime_type,
                    filename=media.filename, size=(sent or {}).get("size") or media.size_bytes, path=path, url=url)
