"""Inbound messages: stored once, their contact created or updated, ``message.received``, and the
opt-out / opt-in keywords (STOP / START in every language the organisation lists).

An inbound message's media becomes a medium of the organisation (app/media/processing.py stores
it); its ``message.received`` is emitted once the medium is stored, so the event carries it.
"""
from __future__ import annotations

import logging
import re
import unicodedata

from sqlalchemy import and_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.automations import hook as automations
from app.campaigns.replies import record_reply
from app.clients.models import Client
from app.contacts import service as contacts
from app.contacts.models import Contact
from app.db import new_id, utcnow
from app.errors import ValidationError
from app.media.fetching import take_inbound
from app.messages.models import Message
from app.messages.service import accept_messages
from app.messages.tracking import OPT_OUT_KEY_PREFIX, parse_time, record_status
from app.security.principal import SystemPrincipal
from app.team.models import OrganizationSettings
from config import settings

log = logging.getLogger(__name__)

INBOUND_TYPES = {"text": "text", "image": "image", "video": "video", "audio": "audio", "document": "document",
                 "sticker": "sticker", "voice": "voice", "ptt": "voice"}


def _normalise_keyword(text: str) -> str:
    text = unicodedata.normalize("NFKD", text or "")
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"[\s\W_]+$|^[\s\W_]+", "", text).casefold()


def _keywords(session: Session, organization_id: str) -> tuple[set[str], set[str]]:
    """The organisation's opt-out and opt-in keywords (every language), normalised."""
    row = session.get(OrganizationSettings, organization_id)
    if row is None:  # the defaults live in schema.sql: create the row to get them
        session.execute(pg_insert(OrganizationSettings).values(organization_id=organization_id)
                        .on_conflict_do_nothing())
        row = session.get(OrganizationSettings, organization_id)

    def flat(value) -> set[str]:
        words = value.values() if isinstance(value, dict) else [value or []]
        return {_normalise_keyword(w) for group in words for w in (group or []) if isinstance(w, str) and w.strip()}

    return flat(row.opt_out_keywords), flat(row.opt_in_keywords)


def receive_inbound(session: Session, client_id: str, payload: dict) -> Message | None:
    """Store an inbound message once (dedupe on the transport's id), create or update its contact,
    emit ``message.received``, and handle opt-out / opt-in keywords. None for a duplicate."""
    client = session.get(Client, client_id)
    if client is None or client.deleted_at is not None:
        return None
    try:
        phone = contacts.e164(payload.get("from_phone"), "from")
    except ValidationError:
        log.warning("inbound message of client %s from an invalid number dropped", client_id)
        return None
    at = parse_time(payload.get("timestamp")) or utcnow()
    media = payload.get("media") or None
    kind = INBOUND_TYPES.get(payload.get("type") or "text", "text")
    text = payload.get("text")
    if kind == "text" and not text and payload.get("type") not in (None, "text"):
        text = f"[{payload.get('type')}]"
    if kind != "text" and not isinstance(media, dict):
        kind, text = "text", text or f"[{kind}]"  # a media kind without its media
    contact = contacts.touch_inbound(session, client.organization_id, phone, payload.get("contact_name"), at)
    now = utcnow()
    values = {"id": new_id("msg"), "organization_id": client.organization_id, "client_id": client.id,
              "direction": "inbound", "contact_id": contact.id, "from_phone": phone, "to_phone": client.phone,
              "type": kind, "text": text, "caption": (media or {}).get("caption"), "status": "received",
              "external_id": payload.get("external_id") or None, "created_at": now, "updated_at": now}
    message = session.scalars(
        pg_insert(Message).values(**values).on_conflict_do_nothing(
            index_elements=[Message.client_id, Message.external_id],
            index_where=and_(Message.direction == "inbound", Message.external_id.isnot(None)))
        .returning(Message)).first()
    if message is None:
        return None
    if isinstance(media, dict) and kind != "text":
        record_status(session, message, "received", at=at, emit_event=False)  # announced once stored
        take_inbound(session, message, {**media, "kind": "sticker" if kind == "sticker" else None})
    else:
        record_status(session, message, "received", at=at)
    record_reply(session, client.organization_id, contact.id)
    if not _handle_keywords(session, client, contact, message):  # STOP / START never trigger automations
        automations.after_inbound(session, client.organization_id, message.id)
    return message


def _handle_keywords(session: Session, client: Client, contact: Contact, message: Message) -> bool:
    """Handle an opt-out / opt-in keyword; whether the message was one."""
    if message.type != "text" or not message.text or len(message.text) > 64:
        return False
    word = _normalise_keyword(message.text)
    opt_out, opt_in = _keywords(session, client.organization_id)
    system = SystemPrincipal(client.organization_id)
    if word in opt_out and not contact.opted_out:
        contacts.set_opted_out(session, system, contact, True, source=f"inbound:{message.id}")
        accept_messages(session, system, client, [{"to": contact.phone, "text": settings.OPT_OUT_CONFIRMATION}],
                        keys=[OPT_OUT_KEY_PREFIX + message.id])
    elif word in opt_in and contact.opted_out:
        contacts.set_opted_out(session, system, contact, False, source=f"inbound:{message.id}")
    return word in opt_out or word in opt_in
