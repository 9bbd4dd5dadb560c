"""Contact lists: named groups of an organisation's contacts (an audience besides tags).

A list's name is unique among the organisation's live lists. Members are added and removed by
contact id, idempotently (adding a member twice, or removing one that is not there, changes
nothing); every id must be a live contact of the organisation, else the whole request is a 422
naming the ids (another organisation's contact is "no such contact", like one that never existed).
A list shows ``member_count``: its members that are live contacts. Deleting a list hides it; its
members are never shown again.
"""
from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.audit.service import diff, record
from app.contacts.models import Contact, ContactList, ContactListMember
from app.db import get_scoped, rowcount, scoped_select, utcnow
from app.errors import Conflict, ValidationError
from app.pagination import paginate
from app.security.principal import Principal


def member_count(session: Session, list_ids: list[str]) -> dict[str, int]:
    """Live members of each list, in one query."""
    if not list_ids:
        return {}
    rows = session.execute(
        select(ContactListMember.list_id, func.count())
        .join(Contact, Contact.id == ContactListMember.contact_id)
        .where(ContactListMember.list_id.in_(list_ids), Contact.deleted_at.is_(None))
        .group_by(ContactListMember.list_id))
    return {list_id: n for list_id, n in rows}


def _with_counts(session: Session, lists: list[ContactList]) -> list[ContactList]:
    counts = member_count(session, [x.id for x in lists])
    for x in lists:
        x.member_count = counts.get(x.id, 0)
    return lists


def list_lists(session: Session, principal: Principal, *, limit: int, cursor: str | None = None) -> dict:
    page = paginate(session, scoped_select(ContactList, principal.organization_id), ContactList.id, limit=limit,
                    cursor=cursor)
    _with_counts(session, page["items"])
    return page


def get_list(session: Session, principal: Principal, list_id: str) -> ContactList:
    return _with_counts(session, [get_scoped(session, ContactList, principal.organization_id, list_id)])[0]


def _name_taken(session: Session, organization_id: str, name: str, but: str | None = None) -> None:
    stmt = scoped_select(ContactList, organization_id).where(ContactList.name == name)
    if but:
        stmt = stmt.where(ContactList.id != but)
    taken = session.scalars(stmt).first()
    if taken is not None:
        raise Conflict("A contact list with this name exists", code="contact_list_exists",
                       details={"name": [name], "list_id": taken.id})


def create_list(session: Session, principal: Principal, *, name: str, description: str | None = None) -> ContactList:
    name = name.strip()
    _name_taken(session, principal.organization_id, name)
    row = ContactList(organization_id=principal.organization_id, name=name, description=description)
    session.add(row)
    session.flush()
    record(session, principal, "contact_list.create", target_type="contact_list", target_id=row.id,
           changes={"name": name, "description": description})
    session.refresh(row)
    return _with_counts(session, [row])[0]


def update_list(session: Session, principal: Principal, list_id: str, **changes) -> ContactList:
    row = get_scoped(session, ContactList, principal.organization_id, list_id, for_update=True)
    if "name" in changes:
        changes["name"] = changes["name"].strip()
        _name_taken(session, principal.organization_id, changes["name"], but=row.id)
    delta = diff(row, changes)
    for field, value in changes.items():
        setattr(row, field, value)
    if delta:
        row.updated_at = utcnow()
        session.flush()
        record(session, principal, "contact_list.update", target_type="contact_list", target_id=row.id,
               changes=delta)
    session.refresh(row)
    return _with_counts(session, [row])[0]


def delete_list(session: Session, principal: Principal, list_id: str) -> None:
    row = get_scoped(session, ContactList, principal.organization_id, list_id, for_update=True)
    row.deleted_at = row.updated_at = utcnow()
    session.flush()
    record(session, principal, "contact_list.delete", target_type="contact_list", target_id=row.id,
           changes={"name": row.name})


def _live_contacts(session: Session, organization_id: str, contact_ids: list[str], *, live: bool = True) -> list[str]:
    """``contact_ids`` without repeats, once each is known to be a (``live``: not deleted) contact
    of the organisation (422 naming those that are not)."""
    wanted = list(dict.fromkeys(contact_ids))
    stmt = select(Contact.id).where(Contact.organization_id == organization_id, Contact.id.in_(wanted))
    found = set(session.scalars(stmt.where(Contact.deleted_at.is_(None)) if live else stmt))
    missing = {str(i): ["No such contact."] for i, cid in enumerate(contact_ids) if cid not in found}
    if missing:
        raise ValidationError("Some contacts do not exist in this organisation",
                              details={"contact_ids": missing})
    return wanted


def add_members(session: Session, principal: Principal, list_id: str, contact_ids: list[str]) -> dict:
    """Add contacts to a list (those already in it stay, once)."""
    row = get_scoped(session, ContactList, principal.organization_id, list_id)
    ids = _live_contacts(session, principal.organization_id, contact_ids)
    added = len(session.execute(insert(ContactListMember).values(
        [{"list_id": row.id, "contact_id": cid, "organization_id": principal.organization_id} for cid in ids])
        .on_conflict_do_nothing().returning(ContactListMember.contact_id)).all())
    if added:
        record(session, principal, "contact_list.add_members", target_type="contact_list", target_id=row.id,
               changes={"added": added})
    return {"added": added, "removed": 0, "member_count": member_count(session, [row.id]).get(row.id, 0)}


def remove_members(session: Session, principal: Principal, list_id: str, contact_ids: list[str]) -> dict:
    """Remove contacts from a list (ids not in it are no change, but must be the organisation's
    contacts, deleted ones too)."""
    row = get_scoped(session, ContactList, principal.organization_id, list_id)
    ids = _live_contacts(session, principal.organization_id, contact_ids, live=False)
    removed = rowcount(session.execute(delete(ContactListMember).where(
        ContactListMember.list_id == row.id, ContactListMember.contact_id.in_(ids))))
    if removed:
        record(session, principal, "contact_list.remove_members", target_type="contact_list", target_id=row.id,
               changes={"removed": removed})
    return {"added": 0, "removed": removed, "member_count": member_count(session, [row.id]).get(row.id, 0)}


def list_members(session: Session, principal: Principal, list_id: str, *, limit: int,
                 cursor: str | None = None) -> dict:
    """The list's live contacts, newest contact first."""
    row = get_scoped(session, ContactList, principal.organization_id, list_id)
    stmt = (scoped_select(Contact, principal.organization_id)
            .join(ContactListMember, ContactListMember.contact_id == Contact.id)
            .where(ContactListMember.list_id == row.id))
    return paginate(session, stmt, Contact.id, limit=limit, cursor=cursor)
