"""Contacts: the people an organisation writes to and hears from.

A phone number (E.164) is one contact per organisation forever: messages point at it, so deleting a
contact hides it (soft delete) and creating it again revives the same row. Sends create the contact
of a new number on the fly (``contacts_for_send``), inbound messages create or update it
(``touch_inbound``); opting out and in goes through ``set_opted_out`` wherever it comes from (the
API, or STOP / START keywords handled by app/messages/service.py), so the event and the audit row
are never forgotten.
"""
from __future__ import annotations

import functools

import phonenumbers
from sqlalchemy import func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app import quotas
from app.audit.service import diff, record
from app.contacts.models import Contact, ContactList, ContactListMember
from app.db import get_scoped, new_id, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.pagination import paginate
from app.security.principal import Principal

E164_HINT = "Must be a phone number in E.164 (+14155550123)."


def e164(value, field: str = "phone") -> str:
    """``value`` if it is a possible phone number written in E.164, else a 422 naming ``field``."""
    if not isinstance(value, str) or not value.startswith("+") or not value[1:].isdigit():
        raise ValidationError(details={field: [E164_HINT]})
    problem = _e164_problem(value)
    if problem is not None:
        raise ValidationError(details={field: [problem]})
    return value


@functools.lru_cache(maxsize=65536)
def _e164_problem(value: str) -> str | None:
    """What is wrong with ``value`` ("+" and digits) as an E.164 number, or None: the phonenumbers
    parse and format of a number, remembered (campaigns and retries send to the same numbers)."""
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return E164_HINT
    if not phonenumbers.is_possible_number(number):
        return E164_HINT + " This number has the wrong length for its country."
    if phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) != value:
        return E164_HINT
    return None


def _clean_tags(tags) -> list[str]:
    seen, out = set(), []
    for tag in tags or []:
        tag = tag.strip()
        if tag and tag not in seen:
            seen.add(tag)
            out.append(tag)
    return out


def list_contacts(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                  tag: str | None = None, q: str | None = None, opted_out: bool | None = None,
                  list_id: str | None = None) -> dict:
    stmt = scoped_select(Contact, principal.organization_id)
    if list_id:
        try:
            get_scoped(session, ContactList, principal.organization_id, list_id)
        except NotFound:
            raise ValidationError(details={"list_id": ["No such contact list."]}) from None
        stmt = stmt.where(select(ContactListMember.contact_id).where(
            ContactListMember.list_id == list_id, ContactListMember.contact_id == Contact.id).exists())
    if tag:
        stmt = stmt.where(Contact.tags.contains([tag]))
    if opted_out is not None:
        stmt = stmt.where(Contact.opted_out.is_(opted_out))
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(or_(Contact.name.ilike(like, escape="\\"), Contact.phone.like(like, escape="\\")))
    return paginate(session, stmt, Contact.id, limit=limit, cursor=cursor)


def get_contact(session: Session, principal: Principal, contact_id: str) -> Contact:
    return get_scoped(session, Contact, principal.organization_id, contact_id)


def create_contact(session: Session, principal: Principal, *, phone: str, name: str | None = None, tags=None,
                   attributes: dict | None = None, opted_out: bool | None = None) -> Contact:
    """A new contact, or a deleted one of the same number revived; 409 if the number is taken."""
    phone = e164(phone)
    existing = session.scalars(select(Contact).where(Contact.organization_id == principal.organization_id,
                                                     Contact.phone == phone).with_for_update()).first()
    now = utcnow()
    if existing is not None and existing.deleted_at is None:
        raise Conflict("A contact with this phone number exists", code="contact_exists",
                       details={"phone": [phone], "contact_id": existing.id})
    quotas.enforce(session, principal.organization_id, "contacts", Contact, Contact.deleted_at.is_(None))
    if existing is not None:
        contact, action = existing, "contact.restore"
        contact.deleted_at = None
        contact.name, contact.tags, contact.attributes = name, _clean_tags(tags), attributes or {}
        contact.updated_at = now
        was_opted_out = contact.opted_out
    else:
        contact = Contact(id=new_id("ctc"), organization_id=principal.organization_id, phone=phone, name=name,
                          tags=_clean_tags(tags), attributes=attributes or {}, opted_out=False)
        action = "contact.create"
        session.add(contact)
        was_opted_out = False
    session.flush()
    record(session, principal, action, target_type="contact", target_id=contact.id,
           changes={"phone": phone, "name": name, "tags": contact.tags, "opted_out": opted_out})
    if opted_out is not None and opted_out != was_opted_out:
        set_opted_out(session, principal, contact, opted_out, source="api", audit=False)
    session.refresh(contact)
    return contact


def update_contact(session: Session, principal: Principal, contact_id: str, **changes) -> Contact:
    contact = get_scoped(session, Contact, principal.organization_id, contact_id, for_update=True)
    if "phone" in changes:
        changes["phone"] = e164(changes["phone"])
        if changes["phone"] != contact.phone:
            taken = session.scalar(select(Contact.id).where(Contact.organization_id == principal.organization_id,
                                                            Contact.phone == changes["phone"]))
            if taken:
                raise Conflict("Another contact has this phone number", code="contact_exists",
                               details={"phone": [changes["phone"]], "contact_id": taken})
    if "tags" in changes:
        changes["tags"] = _clean_tags(changes["tags"])
    opted_out = changes.pop("opted_out", None)
    delta = diff(contact, changes)
    for name, value in changes.items():
        setattr(contact, name, value)
    if delta:
        contact.updated_at = utcnow()
        session.flush()
        record(session, principal, "contact.update", target_type="contact", target_id=contact.id, changes=delta)
    if opted_out is not None and opted_out != contact.opted_out:
        set_opted_out(session, principal, contact, opted_out, source="api")
    session.flush()
    session.refresh(contact)
    return contact


def delete_contact(session: Session, principal: Principal, contact_id: str) -> None:
    contact = get_scoped(session, Contact, principal.organization_id, contact_id, for_update=True)
    contact.deleted_at = contact.updated_at = utcnow()
    session.flush()
    record(session, principal, "contact.delete", target_type="contact", target_id=contact.id,
           changes={"phone": contact.phone, "name": contact.name})


def set_opted_out(session: Session, principal: Principal | None, contact: Contact, opted_out: bool, *, source: str,
                  audit: bool = True) -> None:
    """Opt ``contact`` out of (or back into) messages; opting out emits ``contact.opted_out``."""
    from app.contacts.schemas import ContactSchema
    from app.webhooks.events import emit

    now = utcnow()
    contact.opted_out = opted_out
    if opted_out:
        contact.opted_out_at = now
    else:
        contact.opted_in_at = now
    contact.updated_at = now
    session.flush()
    if audit:
        record(session, principal, "contact.opt_out" if opted_out else "contact.opt_in",
               organization_id=contact.organization_id, target_type="contact", target_id=contact.id,
               changes={"opted_out": opted_out, "source": source})
    if opted_out:
        session.refresh(contact)
        emit(session, contact.organization_id, "contact.opted_out", ContactSchema().dump(contact))


# ----------------------------------------------------------------------------- for the message pipeline

_FOR_SEND = text("""
    WITH wanted AS (SELECT * FROM unnest(CAST(:phones AS text[]), CAST(:ids AS text[])) AS w(phone, id)),
    created AS (
        INSERT INTO contacts (id, organization_id, phone)
        SELECT id, :org, phone FROM wanted
        ON CONFLICT ON CONSTRAINT contacts_org_phone_key DO NOTHING
        RETURNING phone, id, opted_out)
    SELECT phone, id, opted_out FROM created
    UNION ALL
    SELECT phone, id, opted_out FROM contacts WHERE organization_id = :org AND phone = ANY(CAST(:phones AS text[]))
""")


def contacts_for_send(session: Session, organization_id: str, phones: list[str]) -> dict[str, tuple[str, bool]]:
    """``{phone: (contact_id, opted_out)}`` for every phone, creating contacts for new numbers, in
    one statement. Deleted contacts are not revived by a send, but their opt-out still counts."""
    wanted = sorted(set(phones))
    if not wanted:
        return {}
    found = {p: (cid, out) for p, cid, out in session.execute(
        _FOR_SEND, {"org": organization_id, "phones": wanted, "ids": [new_id("ctc") for _ in wanted]})}
    raced = [p for p in wanted if p not in found]
    if raced:  # created by a concurrent transaction after this statement's snapshot
        found.update({p: (cid, out) for p, cid, out in session.execute(
            select(Contact.phone, Contact.id, Contact.opted_out)
            .where(Contact.organization_id == organization_id, Contact.phone.in_(raced)))})
    return found


def touch_inbound(session: Session, organization_id: str, phone: str, name: str | None, at) -> Contact:
    """The contact of an inbound message, created or revived, with ``last_inbound_at`` moved on."""
    stmt = insert(Contact).values(id=new_id("ctc"), organization_id=organization_id, phone=phone, name=name,
                                  last_inbound_at=at)
    upsert = stmt.on_conflict_do_update(
        constraint="contacts_org_phone_key",
        set_={"last_inbound_at": func.greatest(Contact.last_inbound_at, stmt.excluded.last_inbound_at),
              "name": func.coalesce(Contact.name, stmt.excluded.name),
              "deleted_at": None, "updated_at": func.now()},
    ).returning(Contact)
    return session.scalars(upsert, execution_options={"populate_existing": True}).one()
