"""Messages: accept outbound sends, read and cancel them.

Accepting (``accept_messages``, behind the three POST routes and usable by campaigns/automations)
validates every item (E.164, sizes, media and template of the organisation, template variables,
opted-out contacts), then writes the rows and their ``queued`` history rows (one ``INSERT ... SELECT
FROM unnest`` statement whatever the count) and ``message.queued`` events, all in the caller's
transaction. Each message's ``messages.send`` job goes to the broker once that transaction commits
(nothing on rollback), without an outbox row: the message row is the record of the work, and a job
lost between the commit and the broker is sent again by the sweeper (``requeue_lost``, after
``MESSAGE_LOST_AFTER``). A ready client's pacing slots are reserved right away, so a message waits in
the broker until its slot (``scheduled_for``) without a first trip through a worker
(app/messages/planning.py); one due later than ``MESSAGE_PARK_AFTER`` is parked in Redis. Sending is
app/messages/dispatch.py; statuses and acks app/messages/tracking.py; inbound messages and opt-outs
app/messages/inbound.py.
"""
from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.clients.models import Client
from app.contacts import service as contacts
from app.contacts.models import Contact
from app.db import get_scoped, new_id, scoped_select, utcnow
from app.errors import AppError, Conflict, Forbidden, NotFound, ValidationError
from app.media.models import Media
from app.media.service import send_problem as media_send_problem
from app.messages import intake, planning
from app.messages.customer_window import customer_windows, outside_window
from app.messages.models import Message
from app.messages.schemas import CAPTION_MAX, CAPTIONED_TYPES, MEDIA_TYPES, TEXT_MAX, FastItemLoader, MessageSchema
from app.messages.tracking import OPT_OUT_KEY_PREFIX, dump, record_status
from app.pagination import paginate
from app.security.principal import Principal
from app.templates import reviews
from app.templates.models import Template
from app.templates.rendering import render_text, template_placeholders

log = logging.getLogger(__name__)

_SCHEMA = MessageSchema()
_ITEM_LOADER = FastItemLoader()  # MessageItemSchema().load, fast for the common shape


# ----------------------------------------------------------------------------- accepting

def client_for_send(session: Session, principal: Principal, client_id: str, *, field: str | None = None) -> Client:
    """The client to send from: in the caller's organisation, not deleted, assigned to an agent.

    With ``field`` (the id came in the body) every refusal is a 422 naming it; from the path a
    missing client is 404 and an unassigned one 403."""
    client = session.scalars(scoped_select(Client, principal.organization_id).where(Client.id == client_id)).first() \
        if isinstance(client_id, str) else None
    if client is None:
        if field:
            raise ValidationError(details={field: ["No such client in this organisation."]})
        raise NotFound("client not found")
    if not principal.can_use_client(client.id):
        if field:
            raise ValidationError(details={field: ["You are not assigned to this client."]})
        raise Forbidden("You are not assigned to this client", code="client_not_assigned")
    return client


class _Lookups:
    """Media and templates of one organisation, loaded once per accept call."""

    def __init__(self, session: Session, client: Client) -> None:
        self.session, self.client, self.organization_id = session, client, client.organization_id
        self.media: dict[str, Media | None] = {}
        self.templates: dict[str, Template | None] = {}
        self.approvals: dict[str, str | None] = {}

    def medium(self, media_id: str) -> Media | None:
        if media_id not in self.media:
            self.media[media_id] = self.session.scalars(
                scoped_select(Media, self.organization_id).where(Media.id == media_id)).first()
        return self.media[media_id]

    def template(self, template_id: str) -> Template | None:
        if template_id not in self.templates:
            self.templates[template_id] = self.session.scalars(
                scoped_select(Template, self.organization_id).where(Template.id == template_id)).first()
        return self.templates[template_id]

    def approval_problem(self, template: Template) -> str | None:
        """Why the client may not send ``template`` (its review there), or None."""
        if template.id not in self.approvals:
            self.approvals[template.id] = reviews.approval_problem(self.session, self.client, template)
        return self.approvals[template.id]


def _columns(item: dict, lookups: _Lookups) -> dict:
    """The message columns of one validated item, or a 422 naming every bad field."""
    errors: dict[str, list[str]] = {}
    try:
        to = contacts.e164(item.get("to"), "to")
    except ValidationError as exc:
        errors.update(exc.details)
        to = None
    kind = item.get("type")
    text, caption = item.get("text"), item.get("caption")
    media_id, template_id = item.get("media_id"), item.get("template_id")
    variables = item.get("variables") or {}
    medium = template = None
    if media_id:
        medium = lookups.medium(media_id)
        if medium is None:
            errors["media_id"] = ["No such media in this organisation."]
        elif medium.status != "ready":
            errors["media_id"] = [f"The media is {medium.status}, not ready."]
    if template_id:
        template = lookups.template(template_id)
        if template is None:
            errors["template_id"] = ["No such template in this organisation."]
    if kind is None:
        kind = "template" if template_id else (medium.kind if medium else "document" if media_id else "text")
    if kind == "text":
        if not text or not text.strip():
            errors["text"] = ["Give the text of the message."]
        elif len(text) > TEXT_MAX:
            errors["text"] = [f"At most {TEXT_MAX} characters."]
        for name in ("media_id", "caption", "template_id"):
            if item.get(name):
                errors[name] = [f"Not used by a text message (type {kind})."]
    elif kind in MEDIA_TYPES:
        if not media_id:
            errors["media_id"] = [f"A {kind} message needs media_id."]
        elif medium is not None and (problem := media_send_problem(kind, medium)):
            errors["media_id"] = [problem]
        if caption is None and text:
            caption, text = text, None  # the text of a media message is its caption
        if caption and kind not in CAPTIONED_TYPES:
            errors["caption"] = [f"WhatsApp shows no caption with a {kind}."]
        elif caption and len(caption) > CAPTION_MAX:
            errors["caption"] = [f"At most {CAPTION_MAX} characters."]
        if template_id:
            errors["template_id"] = [f"Not used by a {kind} message."]
    elif kind == "template":
        if not template_id:
            errors["template_id"] = ["A template message needs template_id."]
        if not isinstance(variables, dict) or any(not isinstance(v, (str, int, float)) or isinstance(v, bool)
                                                  for v in variables.values()):
            errors["variables"] = ["Give the variables as an object of texts or numbers."]
        elif template is not None:
            missing = [name for name in template_placeholders(template) if name not in variables]
            if missing:
                errors["variables"] = [f"Missing: {', '.join(missing)}."]
            else:
                text = render_text(template, variables)
                if len(text) > TEXT_MAX:
                    errors["variables"] = [f"The rendered template is longer than {TEXT_MAX} characters."]
            problem = lookups.approval_problem(template)
            if problem:
                raise ValidationError(problem, code="template_not_approved", details={
                    "template_id": [problem], **({"variables": errors["variables"]} if "variables" in errors else {})})
        for name in ("media_id", "caption"):
            if item.get(name):
                errors[name] = ["Not used by a template message."]
    else:
        errors["type"] = [f"Unknown message type {kind!r}."]
    if errors:
        raise ValidationError(details=errors)
    scheduled_at = item.get("scheduled_at")
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=UTC)
    return {"to_phone": to, "type": kind, "text": text, "media_id": media_id if kind in MEDIA_TYPES else None,
            "caption": caption if kind in MEDIA_TYPES else None,
            "template_id": template_id if kind == "template" else None,
            "variables": variables if kind == "template" else {}, "scheduled_at": scheduled_at}


def _error(exc: AppError) -> dict:
    return {"code": exc.code, "message": exc.message, "details": exc.details}


def accept_messages(session: Session, principal: Principal, client: Client, items: list[dict], *,
                    campaign_id: str | None = None, automation_id: str | None = None,
                    keys: list[str | None] | None = None, strict: bool = False,
                    known_contacts: dict[str, tuple[str, bool]] | None = None) -> list[dict]:
    """Queue outbound messages from ``client``: one result per item, in order, either the new
    message (a dict of its columns; ``dump`` gives its API form) or ``{"error": {code, message,
    details}}``. ``strict`` raises the first error instead (single sends). ``keys``
    (messages.idempotency_key) makes a repeated item a no-op returning the first message:
    campaigns and opt-out confirmations use it. Items are ``MessageItemSchema``-shaped dicts.
    ``known_contacts`` (``{phone: (contact id, opted out)}``, a campaign's fan-out) spares looking
    up or creating contacts the caller already holds."""
    from app import outbox
    if outbox.broker_refusing():
        from app.errors import ServiceUnavailable

        raise ServiceUnavailable("The job queue is refusing work right now (Redis is full or down); nothing was "
                                 f"accepted: retry in {int(outbox.REFUSING_FOR_S)} s", code="queue_unavailable",
                                 headers={"Retry-After": str(int(outbox.REFUSING_FOR_S))})
    lookups = _Lookups(session, client)
    results: list = [None] * len(items)
    rows: list[tuple[int, dict]] = []
    for i, item in enumerate(items):
        try:
            rows.append((i, _columns(item, lookups)))
        except ValidationError as exc:
            if strict:
                raise
            results[i] = {"error": _error(exc)}
    phones = [cols["to_phone"] for _, cols in rows]
    book = dict(known_contacts or {})
    if any(p not in book for p in phones):
        book.update(contacts.contacts_for_send(session, client.organization_id, [p for p in phones if p not in book]))
    windows = customer_windows(session, client, [book[cols["to_phone"]][0] for _, cols in rows
                                                 if cols["type"] != "template"])
    accepted = []
    now = utcnow()
    for i, cols in rows:
        contact_id, opted_out = book[cols["to_phone"]]
        key = keys[i] if keys else None
        refusal = None
        if opted_out and not (key or "").startswith(OPT_OUT_KEY_PREFIX):
            refusal = ValidationError("This contact opted out of messages", code="contact_opted_out",
                                      details={"to": ["The contact opted out (STOP); they receive no more messages."]})
        elif contact_id in windows:
            refusal = outside_window(windows[contact_id], cols["scheduled_at"] or now)
        if refusal is not None:
            if strict:
                raise refusal
            results[i] = {"error": _error(refusal)}
            continue
        accepted.append((i, {**cols, "contact_id": contact_id, "idempotency_key": key}))
    if not accepted:
        return results
    plans = planning.plan(client, [(new_id("msg"), 0, cols["scheduled_at"]) for _, cols in accepted],
                          batchable=campaign_id is None)
    values = [{**cols, "id": plan.message_id, "organization_id": client.organization_id, "client_id": client.id,
               "direction": "outbound", "from_phone": client.phone, "status": "queued", "queued_at": now,
               "created_at": now, "updated_at": now, "scheduled_for": plan.scheduled_for,
               "campaign_id": campaign_id, "automation_id": automation_id}
              for (_, cols), plan in zip(accepted, plans, strict=True)]
    inserted = intake.insert_queued(session, client, values, now, campaign_id=campaign_id,
                                    automation_id=automation_id, keys=bool(keys))
    fresh = [(i, v, plan) for (i, _), v, plan in zip(accepted, values, plans, strict=True)
             if inserted is None or v["id"] in inserted]
    if len(fresh) < len(accepted):  # items whose key was used before: the first message answers
        assert inserted is not None
        taken = {v["idempotency_key"]: i for (i, _), v in zip(accepted, values, strict=True) if v["id"] not in inserted}
        for m in session.scalars(select(Message).where(Message.organization_id == client.organization_id,
                                                       Message.idempotency_key.in_(list(taken)))):
            results[taken[m.idempotency_key]] = as_row(m)
        planning.release_plans(client.id, [p for (_, _), v, p in zip(accepted, values, plans, strict=True)
                                                  if v["id"] not in inserted])
    if fresh:
        from app.webhooks.events import emit_many

        for i, v, _ in fresh:
            results[i] = {**_BLANK, **v}
        emit_many(session, client.organization_id, "message.queued", [dump(results[i]) for i, _, _ in fresh])
        planning.enqueue_plans(session, [p for _, _, p in fresh], outbox_row=False)
    return results


_BLANK = {c.key: None for c in Message.__table__.columns} | {"attempts": 0, "variables": {}}


def as_row(message: Message) -> dict:
    """A message as a plain dict of its columns (what ``accept_messages`` returns)."""
    return {c.key: getattr(message, c.key) for c in Message.__table__.columns}


def send_message(session: Session, principal: Principal, client_id: str, *, to: str, message: str | None = None,
                 media_id: str | None = None, template_id: str | None = None, variables: dict | None = None) -> dict:
    """``POST /api/clients/{id}/send-message``: the v2.0 clients' call."""
    client = client_for_send(session, principal, client_id)
    item = {"to": to, "text": message, "media_id": media_id, "template_id": template_id, "variables": variables}
    if media_id and not template_id:
        item["caption"], item["text"] = message, None
    created = accept_messages(session, principal, client, [item], strict=True)[0]
    return {"messageId": created["id"], "id": created["id"], "status": created["status"]}


def create_message(session: Session, principal: Principal, *, client_id: str, **item) -> dict:
    """``POST /api/messages``."""
    client = client_for_send(session, principal, client_id, field="client_id")
    return accept_messages(session, principal, client, [item], strict=True)[0]


def create_batch(session: Session, principal: Principal, *, client_id: str, messages: list[dict]) -> dict:
    """``POST /api/messages/batch``: every item validated on its own; one INSERT for the accepted ones."""
    from marshmallow import ValidationError as SchemaError

    client = client_for_send(session, principal, client_id, field="client_id")
    schema = _ITEM_LOADER
    items: list[dict | None] = []
    errors: dict[int, dict] = {}
    for i, raw in enumerate(messages):
        try:
            items.append(schema.load(raw))
        except SchemaError as exc:
            errors[i] = {"error": {"code": "validation_error", "message": "Validation failed",
                                   "details": exc.normalized_messages()}}
            items.append(None)
    valid = [i for i, item in enumerate(items) if item is not None]
    outcome = accept_messages(session, principal, client, [items[i] for i in valid])
    results: list = [None] * len(items)
    for i, res in zip(valid, outcome, strict=True):
        results[i] = res
    for i, err in errors.items():
        results[i] = err
    return {"messages": [r if "error" in r
                         else {"id": r["id"], "status": r["status"], "scheduled_for": r["scheduled_for"]}
                         for r in results]}


# ----------------------------------------------------------------------------- reading, cancelling

def get_message(session: Session, principal: Principal, message_id: str) -> Message:
    message = get_scoped(session, Message, principal.organization_id, message_id)
    if not principal.can_use_client(message.client_id):
        raise NotFound("message not found")
    return message


_ID_MARGIN = timedelta(minutes=10)


def _id_bound(when: datetime, shift: timedelta = timedelta(0)) -> str:
    """The smallest ``msg_`` id minted at ``when + shift`` (ids start with their 48-bit creation time
    in ms), clamped to what ids can hold: any time before 1970 bounds like 1970, and the shift is
    done in milliseconds, so a time at the edge of the calendar cannot overflow."""
    from app.db import _CROCKFORD

    ms = int(when.timestamp() * 1000) + int(shift / timedelta(milliseconds=1))
    value = min(max(ms, 0), (1 << 48) - 1) << 80
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "msg_" + "".join(reversed(chars))


def list_messages(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                  client_id: str | None = None, status: str | None = None, direction: str | None = None,
                  contact: str | None = None, since: datetime | None = None, until: datetime | None = None) -> dict:
    """Newest first. Each filter has an index ``(organization_id, <filter>, id DESC)``, and the time
    range also bounds the id (ids begin with their creation time), so a page is one index range."""
    stmt = scoped_select(Message, principal.organization_id)
    if client_id:
        stmt = stmt.where(Message.client_id == client_id)
    if principal.client_ids is not None:
        stmt = stmt.where(Message.client_id.in_(sorted(principal.client_ids)))
    if status:
        stmt = stmt.where(Message.status == status)
    if direction:
        stmt = stmt.where(Message.direction == direction)
    if contact:
        if contact.startswith("ctc_"):
            contact_id = contact
        else:
            phone = contacts.e164(contact, "contact")
            contact_id = session.scalar(select(Contact.id).where(Contact.organization_id == principal.organization_id,
                                                                 Contact.phone == phone))
        stmt = stmt.where(Message.contact_id == (contact_id or ""))
    if since is not None:
        stmt = stmt.where(Message.id >= _id_bound(since, -_ID_MARGIN), Message.created_at >= since)
    if until is not None:
        stmt = stmt.where(Message.id < _id_bound(until, _ID_MARGIN), Message.created_at < until)
    return paginate(session, stmt, Message.id, limit=limit, cursor=cursor)


def cancel_message(session: Session, principal: Principal, message_id: str) -> Message:
    """Cancel a message still ``queued`` (409 otherwise). The worker's claim fails on a cancelled
    row, so this takes effect up to the moment of sending; its pacing slot is given back."""
    from app.audit.service import record
    message = get_message(session, principal, message_id)
    now = utcnow()
    row = session.scalars(update(Message).where(Message.id == message.id, Message.status == "queued",
                                                Message.direction == "outbound")
                          .values(status="cancelled", cancelled_at=now, updated_at=now)
                          .returning(Message), execution_options={"populate_existing": True}).first()
    if row is None:
        raise Conflict(f"Only a queued message can be cancelled; this one is {message.status}",
                       code="message_not_cancellable", details={"status": message.status})
    record_status(session, row, "cancelled", at=now, details={"by": principal.id or principal.kind})
    record(session, principal, "message.cancel", target_type="message", target_id=row.id)
    planning.release_reservation(row)
    return row


