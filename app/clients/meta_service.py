"""Meta's webhooks for ``cloud`` clients: the verify-token handshake and the signed callbacks.

Meta calls ``/webhooks/meta/<client_id>``: a GET to verify the callback URL (``hub.mode``,
``hub.verify_token``, ``hub.challenge``), then a POST per batch of events signed with the app
secret (``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body>``). A POST whose signature
does not verify is refused (401) before anything is parsed or reported. A verified one is mapped
onto the transport interface — ``messages`` -> ``sink.inbound``, ``statuses`` -> ``sink.ack`` —
(and ``message_template_status_update`` onto the templates' reviews, app/templates/reviews.py)
and the sink records each in the request's transaction (app/inbox), so Meta gets its 200 only
once every report is durable in Postgres (Meta retries anything but a 2xx); jobs apply them.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.errors import BadRequest, Forbidden, NotFound, Unauthorized
from app.transports.base import ACK_STATUSES, ClientInfo, EventSink, InboundMessage
from app.transports.cloud import to_e164
from app.transports.cloud_errors import classify

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Hub-Signature-256"
MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
TEMPLATE_STATUS_FIELD = "message_template_status_update"


# ------------------------------------------------------------------------------- entry points

def verify_subscription(session: Session, client_id: str, mode: str | None, token: str | None,
                        challenge: str | None) -> str:
    """The GET handshake: the challenge to echo when the token is the client's ``verify_token``."""
    client = cloud_client_info(session, client_id)
    expected = (client.secrets or {}).get("verify_token") or ""
    if mode != "subscribe" or not expected or not _equal(token or "", expected):
        raise Forbidden("The verify token does not match this client's", code="verification_failed")
    return challenge or ""


def receive(session: Session, client_id: str, raw_body: bytes, signature: str | None,
            sink: EventSink | None = None) -> dict:
    """A signed POST from Meta: verify, then report every message and status. Returns counts."""
    client = cloud_client_info(session, client_id)
    check_signature((client.secrets or {}).get("app_secret"), raw_body, signature)
    try:
        payload = json.loads(raw_body)
    except ValueError:
        raise BadRequest("The request body is not valid JSON", code="malformed_json") from None
    if sink is None:
        inbox = _inbox_sink(session)
        with inbox.batch():  # every report of the body in one statement, with one wake-up job
            counts = report(client, payload, inbox)
    else:
        counts = report(client, payload, sink)
    counts["templates"] = template_updates(session, client.id, payload)
    return counts


# ------------------------------------------------------------------------------- pieces

def cloud_client_info(session: Session, client_id: str) -> ClientInfo:
    """The live ``cloud`` client behind a webhook URL (404 for any other), secrets decrypted.

    There is no principal here: the client id in Meta's callback URL names the tenant, and the
    signature (or verify token) checked against that client's own secrets authenticates it."""
    from app.clients.info import load_client_info
    from app.clients.models import Client

    row = session.get(Client, client_id) if isinstance(client_id, str) else None
    if row is None or row.deleted_at is not None or row.transport != "cloud":
        raise NotFound("client not found")
    return load_client_info(session, client_id)  # the row is in the identity map: no second query


def sign(app_secret: str, raw_body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw_body``."""
    return "sha256=" + hmac.new(app_secret.encode(), raw_body, hashlib.sha256).hexdigest()


def check_signature(app_secret: str | None, raw_body: bytes, header: str | None) -> None:
    """401 unless ``header`` is the HMAC of these exact bytes under the app secret."""
    if not app_secret:
        raise Unauthorized("This client has no app_secret to check Meta's signature with", code="invalid_signature")
    if not header or not _equal(header.strip(), sign(app_secret, raw_body)):
        raise Unauthorized(f"Missing or invalid {SIGNATURE_HEADER}", code="invalid_signature")


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def _inbox_sink(session: Session):
    from app.inbox.service import InboxSink

    return InboxSink(session)


def report(client: ClientInfo, payload: dict, sink: EventSink) -> dict:
    """Report what one webhook body says. Changes for another phone number (a Meta app shared by
    several numbers) are skipped: they are not this client's."""
    counts = {"messages": 0, "statuses": 0, "errors": 0, "skipped": 0}
    if not isinstance(payload, dict) or payload.get("object") != "whatsapp_business_account":
        counts["skipped"] += 1
        return counts
    own_number = str((client.config or {}).get("phone_number_id") or "")
    for entry in _dicts(payload.get("entry")):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if change.get("field") == TEMPLATE_STATUS_FIELD:
                continue  # template_updates
            if change.get("field") != "messages" or not isinstance(value, dict):
                counts["skipped"] += 1
                continue
            number = str((value.get("metadata") or {}).get("phone_number_id") or "")
            if own_number and number and number != own_number:
                counts["skipped"] += 1
                continue
            names = {c.get("wa_id"): (c.get("profile") or {}).get("name") for c in _dicts(value.get("contacts"))}
            for raw in _dicts(value.get("messages")):
                message = inbound_message(raw, names)
                if message is None:
                    counts["skipped"] += 1
                    continue
                sink.inbound(client, message)
                counts["messages"] += 1
            for raw in _dicts(value.get("statuses")):
                ack = status_ack(raw)
                if ack is None:
                    counts["skipped"] += 1
                    continue
                sink.ack(client, ack["external_id"], ack["status"], error=ack["error"], at=ack["at"],
                         message_id=ack["message_id"])
                counts["statuses"] += 1
            for err in _dicts(value.get("errors")):
                # not tied to one message (e.g. an asynchronous throughput error): logged for operators
                log.warning("meta webhook error for client %s: %s %s", client.id, err.get("code"), err.get("title"),
                            extra={"client_id": client.id})
                counts["errors"] += 1
    return counts


def template_updates(session: Session, client_id: str, payload: dict) -> int:
    """Meta's verdicts on submitted templates (``message_template_status_update``) applied to the
    client's reviews; returns how many changed."""
    from app.templates.reviews import apply_meta_status

    changed = 0
    for entry in _dicts(payload.get("entry") if isinstance(payload, dict) else None):
        for change in _dicts(entry.get("changes")):
            if change.get("field") == TEMPLATE_STATUS_FIELD and isinstance(change.get("value"), dict):
                changed += apply_meta_status(session, client_id, change["value"])
    return changed


def _dicts(value) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _timestamp(value) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def inbound_message(raw: dict, names: dict | None = None) -> InboundMessage | None:
    """One ``value.messages[]`` item as an InboundMessage, or None when it is not a message.

    Media arrives as Meta's media id (``media.id``): CloudTransport.download_media fetches it.
    ``type`` is Meta's kind (``image``, ``video``, ``audio``, ``document``, ``sticker``), but an
    audio Meta marks ``voice: true`` (a voice note recorded in WhatsApp) is ``voice``.
    Kinds our messages cannot hold (location, contacts, buttons, reactions, ...) become text."""
    wamid, sender, kind = raw.get("id"), to_e164(raw.get("from")), raw.get("type") or "text"
    if not wamid or not sender:
        return None
    text, media, our_type = None, None, "text"
    body = raw.get(kind) if isinstance(raw.get(kind), dict) else {}
    if kind == "text":
        text = body.get("body")
    elif kind in MEDIA_KINDS:
        our_type = "voice" if kind == "audio" and body.get("voice") is True else kind
        text = body.get("caption")
        media = {"id": body.get("id"), "mime_type": body.get("mime_type"), "sha256": body.get("sha256"),
                 "filename": body.get("filename"), "caption": body.get("caption"), "provider": "meta"}
        media = {k: v for k, v in media.items() if v is not None}
    elif kind == "location":
        place = ", ".join(str(body[k]) for k in ("name", "address") if body.get(k))
        text = f"{place} ({body.get('latitude')}, {body.get('longitude')})".strip()
    elif kind == "contacts":
        cards = []
        for card in _dicts(raw.get("contacts")):
            phones = ", ".join(p.get("phone", "") for p in _dicts(card.get("phones")) if p.get("phone"))
            cards.append(f"{(card.get('name') or {}).get('formatted_name', '')} {phones}".strip())
        text = "; ".join(c for c in cards if c) or "[contact]"
    elif kind == "button":
        text = body.get("text") or body.get("payload")
    elif kind == "interactive":
        reply = body.get("button_reply") or body.get("list_reply") or {}
        text = reply.get("title") or reply.get("id")
    elif kind == "reaction":
        text = body.get("emoji")
        if not text:  # a reaction removed
            return None
    elif kind in ("system", "ephemeral", "request_welcome"):
        return None
    if not text and media is None:
        text = f"[{kind}]"
    return InboundMessage(external_id=wamid, from_phone=sender, type=our_type, text=text, media=media,
                          timestamp=_timestamp(raw.get("timestamp")),
                          contact_name=(names or {}).get(raw.get("from")))


def status_ack(raw: dict) -> dict | None:
    """One ``value.statuses[]`` item as the arguments of ``sink.ack``, or None for statuses we do
    not track (``deleted``, ``warning``, ``played``)."""
    wamid, status = raw.get("id"), raw.get("status")
    if not wamid or status not in ACK_STATUSES:
        return None
    error = None
    if status == "failed":
        first = next(iter(_dicts(raw.get("errors"))), {})
        code = first.get("code") if isinstance(first.get("code"), int) else None
        details = (first.get("error_data") or {}).get("details") if isinstance(first.get("error_data"), dict) else None
        message = first.get("message") or first.get("title") or "Meta reported the message failed"
        error = {"code": classify(code, None, f"{message} {details or ''}").code, "message": str(message)[:500],
                 "meta_code": code}
        if details:
            error["details"] = str(details)[:500]
    ours = raw.get("biz_opaque_callback_data")  # our message id, echoed by Meta
    return {"external_id": wamid, "status": status, "error": error, "at": _timestamp(raw.get("timestamp")),
            "message_id": ours if isinstance(ours, str) and ours.startswith("msg_") else None}
