"""Who a campaign writes to: its ``audience`` as a query over the organisation's contacts.

``{"all": true}`` or any of ``tags`` (with ``tags_match`` ``any``, the default, or ``all``),
``contact_ids`` and ``list_ids``: a contact matching any of them is in, then only those with every
``attributes`` value given (a value, or a list of values), and none of ``exclude_tags``. Deleted
contacts are never in; opted-out ones are, to be counted as ``skipped``.
"""
from __future__ import annotations

from sqlalchemy import Select, and_, false, func, not_, or_, select
from sqlalchemy.orm import Session

from app.contacts.models import Contact, ContactList, ContactListMember

SELECTORS = ("all", "tags", "contact_ids", "list_ids")
MAX_IDS = 10_000


def problems(session: Session, organization_id: str, audience: dict) -> dict[str, list[str]]:
    """What is wrong with an audience, by field (empty: nothing)."""
    errors: dict[str, list[str]] = {}
    if not any(audience.get(k) for k in SELECTORS):
        errors["audience"] = ["Choose who receives it: all, tags, contact_ids or list_ids."]
    if audience.get("tags_match", "any") not in ("any", "all"):
        errors["audience.tags_match"] = ["any or all."]
    for key in ("contact_ids", "list_ids", "tags", "exclude_tags"):
        if len(audience.get(key) or []) > MAX_IDS:
            errors[f"audience.{key}"] = [f"At most {MAX_IDS}."]
    lists = audience.get("list_ids") or []
    if lists:
        known = set(session.scalars(select(ContactList.id).where(ContactList.organization_id == organization_id,
                                                                 ContactList.id.in_(lists),
                                                                 ContactList.deleted_at.is_(None))))
        unknown = [i for i in lists if i not in known]
        if unknown:
            errors["audience.list_ids"] = [f"No such list in this organisation: {', '.join(unknown[:20])}."]
    ids = audience.get("contact_ids") or []
    if ids:
        known = set(session.scalars(select(Contact.id).where(Contact.organization_id == organization_id,
                                                             Contact.id.in_(ids), Contact.deleted_at.is_(None))))
        unknown = [i for i in ids if i not in known]
        if unknown:
            errors["audience.contact_ids"] = [f"No such contact in this organisation: {', '.join(unknown[:20])}."]
    for key, value in (audience.get("attributes") or {}).items():
        values = value if isinstance(value, list) else [value]
        if not values or any(not isinstance(v, (str, int, float)) or isinstance(v, bool) for v in values):
            errors[f"audience.attributes.{key}"] = ["A text or number, or a list of them."]
    return errors


def condition(organization_id: str, audience: dict):
    """The WHERE clause of the audience's contacts."""
    picks: list = []
    if audience.get("all"):
        picks.append(Contact.id.is_not(None))
    tags = audience.get("tags") or []
    if tags:
        picks.append(Contact.tags.contains(tags) if audience.get("tags_match") == "all" else Contact.tags.overlap(tags))
    if audience.get("contact_ids"):
        picks.append(Contact.id.in_(audience["contact_ids"]))
    if audience.get("list_ids"):
        picks.append(Contact.id.in_(select(ContactListMember.contact_id).where(
            ContactListMember.organization_id == organization_id,
            ContactListMember.list_id.in_(audience["list_ids"]))))
    clauses = [Contact.organization_id == organization_id, Contact.deleted_at.is_(None), or_(*picks) if picks
               else false()]
    for key, value in (audience.get("attributes") or {}).items():
        values = [str(v) for v in (value if isinstance(value, list) else [value])]
        clauses.append(Contact.attributes[key].astext.in_(values))
    if audience.get("exclude_tags"):
        clauses.append(not_(Contact.tags.overlap(audience["exclude_tags"])))
    return and_(*clauses)


def chunk(organization_id: str, audience: dict, after_id: str, size: int) -> Select:
    """The next ``size`` contacts of the audience after ``after_id`` (in id order)."""
    return (select(Contact.id, Contact.phone, Contact.name, Contact.attributes, Contact.opted_out)
            .where(condition(organization_id, audience), Contact.id > after_id).order_by(Contact.id).limit(size))


def count(session: Session, organization_id: str, audience: dict) -> tuple[int, int]:
    """(contacts in the audience, of which opted out)."""
    row = session.execute(select(func.count(), func.count().filter(Contact.opted_out.is_(True)))
                          .where(condition(organization_id, audience))).one()
    return int(row[0]), int(row[1])
