"""Templates: their rules (Meta's), their CRUD, previews, and their review per client.

A template is the organisation's; where a client needs a review before sending it, creating or
changing it submits it there (app/templates/reviews.py).
"""
from __future__ import annotations

import re

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app import outbox
from app.audit.service import diff, record
from app.clients.models import Client
from app.contacts import service as contacts
from app.contacts.models import Contact
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, ValidationError
from app.media.models import Media
from app.pagination import paginate
from app.security.principal import Principal
from app.templates.models import Template, TemplateApproval
from app.templates.rendering import (
    contact_variables,
    missing_variables,
    placeholders_of,
    render_template,
    render_text,
    template_placeholders,
)
from app.templates.reviews import DELETE_AT_META_ACTOR, needs_review, reviewed_clients, submit
from app.templates.statuses import LEAST_ADVANCED_FIRST

NAME = re.compile(r"^[a-z0-9_]{1,512}$")
LANGUAGE = re.compile(r"^[a-z]{2,3}(_[A-Z]{2,4})?$")
NAMED = re.compile(r"^[a-z][a-z0-9_]*(\.[A-Za-z0-9_\-]+)*$")
BODY_MAX, HEADER_MAX, FOOTER_MAX, BUTTON_TEXT_MAX, BUTTONS_MAX = 1024, 60, 60, 25, 10
CONTENT = ("body", "header", "footer", "buttons", "category", "examples")


# ----------------------------------------------------------------------------- the rules

def _check_placeholders(names: list[str], errors: dict) -> bool:
    """Named or positional (1..n), never both; True when positional."""
    positional = [n for n in names if n.isdigit()]
    if positional and len(positional) != len(names):
        errors.setdefault("body", []).append("Use named ({{first_name}}) or positional ({{1}}) placeholders, "
                                             "not both.")
        return False
    if positional:
        wanted = [str(i) for i in range(1, len(positional) + 1)]
        if sorted(positional, key=int) != wanted:
            errors.setdefault("body", []).append("Positional placeholders are {{1}}, {{2}}... with none skipped.")
        return True
    bad = [n for n in names if not NAMED.match(n)]
    if bad:
        errors.setdefault("body", []).append(
            f"Placeholder names are lowercase letters, digits and underscores (attributes.<key> for a contact's "
            f"attribute): {', '.join(bad)}.")
    return False


def _check(session: Session, organization_id: str, t: dict) -> dict:
    """The template's fields checked against Meta's rules; returns the columns, or a 422 naming
    every bad field."""
    errors: dict[str, list[str]] = {}
    if not NAME.match(t.get("name") or ""):
        errors["name"] = ["Lowercase letters, digits and underscores, as Meta names templates (order_shipped)."]
    if not LANGUAGE.match(t.get("language") or ""):
        errors["language"] = ["A language code as Meta writes it: en, en_US, pt_BR."]
    body = t.get("body") or ""
    if not body.strip():
        errors["body"] = ["Give the body."]
    elif len(body) > BODY_MAX:
        errors["body"] = [f"At most {BODY_MAX} characters."]
    header = t.get("header")
    if header is not None:
        kind = header.get("type")
        if kind == "text":
            text = header.get("text") or ""
            if not text.strip() or len(text) > HEADER_MAX:
                errors["header"] = [f"A text header has 1 to {HEADER_MAX} characters."]
            elif len(placeholders_of(text)) > 1:
                errors["header"] = ["A text header holds at most one placeholder."]
            if header.get("media_id"):
                errors["header"] = ["A text header has no media_id."]
        elif kind in ("image", "video", "document"):
            medium = session.scalars(scoped_select(Media, organization_id)
                                     .where(Media.id == header.get("media_id"))).first() \
                if header.get("media_id") else None
            if medium is None:
                errors["header"] = [f"An {kind} header needs the media_id of a file of this organisation."]
            elif kind != "document" and not medium.mime_type.startswith(kind + "/"):
                errors["header"] = [f"The media is {medium.mime_type}, not {kind}."]
        else:
            errors["header"] = ["type is text, image, video or document."]
    footer = t.get("footer")
    if footer is not None and (len(footer) > FOOTER_MAX or placeholders_of(footer)):
        errors["footer"] = [f"At most {FOOTER_MAX} characters, without placeholders."]
    buttons = t.get("buttons") or []
    problems = []
    if len(buttons) > BUTTONS_MAX:
        problems.append(f"At most {BUTTONS_MAX} buttons.")
    kinds = [b.get("type") for b in buttons]
    if kinds.count("url") > 2 or kinds.count("phone") > 1:
        problems.append("At most two URL buttons and one phone button.")
    for i, b in enumerate(buttons):
        if not (b.get("text") or "").strip() or len(b.get("text") or "") > BUTTON_TEXT_MAX:
            problems.append(f"Button {i + 1}: a text of 1 to {BUTTON_TEXT_MAX} characters.")
        if b.get("type") == "url":
            url = b.get("url") or ""
            names = placeholders_of(url)
            if not re.match(r"^https?://[^\s]+$", url) or len(url) > 2000:
                problems.append(f"Button {i + 1}: an http(s) URL.")
            elif len(names) > 1 or (names and not re.search(r"{{\s*[A-Za-z0-9_.\-]+\s*}}$", url)):
                problems.append(f"Button {i + 1}: a URL holds one placeholder at most, at its end.")
        elif b.get("type") == "phone":
            try:
                contacts.e164(b.get("phone_number"), "phone_number")
            except ValidationError:
                problems.append(f"Button {i + 1}: phone_number in E.164 (+14155550123).")
        elif b.get("type") != "quick_reply":
            problems.append(f"Button {i + 1}: type is quick_reply, url or phone.")
    if problems:
        errors["buttons"] = problems
    if t.get("category") not in ("marketing", "utility", "authentication"):
        errors["category"] = ["marketing, utility or authentication."]
    names = list(dict.fromkeys(n for part in (header.get("text") if header and header.get("type") == "text" else "",
                                              body, *[b.get("url") for b in buttons if b.get("type") == "url"])
                               for n in placeholders_of(part)))
    _check_placeholders(names, errors)
    examples = t.get("examples") or {}
    unknown = [k for k in examples if k not in names]
    if unknown:
        errors["examples"] = [f"Not a placeholder of the template: {', '.join(unknown)}."]
    if errors:
        raise ValidationError(details=errors)
    return {"name": t["name"], "language": t["language"], "category": t["category"], "body": body,
            "header": header, "footer": footer or None, "buttons": buttons, "variables": names,
            "examples": examples}


# ----------------------------------------------------------------------------- CRUD

def list_templates(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                   q: str | None = None, category: str | None = None, language: str | None = None) -> dict:
    stmt = scoped_select(Template, principal.organization_id)
    if q:
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(or_(Template.name.ilike(like, escape="\\"), Template.body.ilike(like, escape="\\")))
    if category:
        stmt = stmt.where(Template.category == category)
    if language:
        stmt = stmt.where(Template.language == language)
    page = paginate(session, stmt, Template.id, limit=limit, cursor=cursor)
    page["items"] = with_approvals(session, page["items"])
    return page


def get_template(session: Session, principal: Principal, template_id: str) -> dict:
    return with_approvals(session, [get_scoped(session, Template, principal.organization_id, template_id)])[0]


def with_approvals(session: Session, templates: list[Template]) -> list[dict]:
    """Templates as the API shows them: with ``approvals`` per client and ``meta_status``."""
    rows = session.execute(select(TemplateApproval, Client.transport)
                           .join(Client, Client.id == TemplateApproval.client_id)
                           .where(TemplateApproval.template_id.in_([t.id for t in templates]))
                           .order_by(TemplateApproval.client_id)).all() if templates else []
    by_template: dict[str, list] = {}
    for approval, transport in rows:
        by_template.setdefault(approval.template_id, []).append(
            {"client_id": approval.client_id, "transport": transport, "status": approval.status,
             "reason": approval.reason, "meta_template_id": approval.meta_template_id,
             "submitted_at": approval.submitted_at, "reviewed_at": approval.reviewed_at})
    out = []
    for t in templates:
        approvals = by_template.get(t.id, [])
        out.append({**{c.key: getattr(t, c.key) for c in Template.__table__.columns},
                    "variables": template_placeholders(t), "approvals": approvals,
                    "meta_status": overall_status([a["status"] for a in approvals if a["transport"] == "cloud"])})
    return out


def overall_status(statuses: list[str]) -> str | None:
    """One status for a template's Meta reviews: the least advanced one (None: no cloud client)."""
    for status in LEAST_ADVANCED_FIRST:
        if status in statuses:
            return status
    return None


def create_template(session: Session, principal: Principal, **fields) -> dict:
    columns = _check(session, principal.organization_id, fields)
    examples = columns.pop("examples")
    _unique(session, principal.organization_id, columns["name"], columns["language"])
    template = Template(organization_id=principal.organization_id, created_by=principal.id
                        if principal.kind == "user" else None, **columns)
    session.add(template)
    session.flush()
    record(session, principal, "template.create", target_type="template", target_id=template.id,
           changes={"name": template.name, "language": template.language, "category": template.category})
    submit(session, template, reviewed_clients(session, principal.organization_id), examples=examples)
    return get_template(session, principal, template.id)


def _unique(session: Session, organization_id: str, name: str, language: str, but: str | None = None) -> None:
    taken = session.scalar(select(Template.id).where(
        Template.organization_id == organization_id, Template.name == name, Template.language == language,
        Template.deleted_at.is_(None), Template.id != (but or "")))
    if taken:
        raise Conflict("A template with this name and language exists", code="template_exists",
                       details={"name": [name], "template_id": taken})


def _in_use(session: Session, template_id: str) -> str | None:
    from app.campaigns.models import Campaign
    from app.campaigns.statuses import ACTIVE

    return session.scalar(select(Campaign.id).where(Campaign.template_id == template_id,
                                                    Campaign.status.in_(ACTIVE),
                                                    Campaign.deleted_at.is_(None)).limit(1))


def update_template(session: Session, principal: Principal, template_id: str, **changes) -> dict:
    """Change a template; new content is reviewed again wherever a review is needed."""
    template = get_scoped(session, Template, principal.organization_id, template_id, for_update=True)
    for fixed in ("name", "language"):
        if fixed in changes and changes[fixed] != getattr(template, fixed):
            raise ValidationError(details={fixed: [f"A template's {fixed} cannot change (Meta keeps it); create a "
                                                   "new template."]})
    if any(k in changes for k in CONTENT):
        campaign = _in_use(session, template.id)
        if campaign:
            raise Conflict("A scheduled or running campaign uses this template", code="template_in_use",
                           details={"campaign_id": campaign})
    merged = {c: getattr(template, c) for c in ("name", "language", "category", "body", "header", "footer",
                                                 "buttons")} | changes
    columns = _check(session, principal.organization_id, merged)
    examples = columns.pop("examples")
    delta = diff(template, {k: v for k, v in columns.items() if k in changes})
    if not delta:
        return get_template(session, principal, template.id)
    for name, value in columns.items():
        setattr(template, name, value)
    template.updated_at = utcnow()
    session.flush()
    record(session, principal, "template.update", target_type="template", target_id=template.id, changes=delta)
    content_changed = any(k in delta for k in CONTENT)
    if content_changed:
        clients = session.scalars(select(Client).join(TemplateApproval, TemplateApproval.client_id == Client.id)
                                  .where(TemplateApproval.template_id == template.id)).all()
        submit(session, template, list(clients), examples=examples)
    return get_template(session, principal, template.id)


def delete_template(session: Session, principal: Principal, template_id: str) -> None:
    template = get_scoped(session, Template, principal.organization_id, template_id, for_update=True)
    campaign = _in_use(session, template.id)
    if campaign:
        raise Conflict("A scheduled or running campaign uses this template", code="template_in_use",
                       details={"campaign_id": campaign})
    template.deleted_at = template.updated_at = utcnow()
    submitted = session.scalars(select(TemplateApproval.client_id).join(Client, Client.id == TemplateApproval.client_id)
                                .where(TemplateApproval.template_id == template.id, Client.transport == "cloud",
                                       TemplateApproval.meta_template_id.is_not(None))).all()
    if submitted:
        outbox.enqueue_many(session, DELETE_AT_META_ACTOR, [(c, template.name) for c in submitted])
    session.execute(delete(TemplateApproval).where(TemplateApproval.template_id == template.id))
    session.flush()
    record(session, principal, "template.delete", target_type="template", target_id=template.id,
           changes={"name": template.name, "language": template.language})


def preview(session: Session, principal: Principal, template_id: str, *, variables: dict | None = None,
            contact_id: str | None = None) -> dict:
    """The template rendered with ``variables`` over a contact's fields; 422 naming what is missing."""
    template = get_scoped(session, Template, principal.organization_id, template_id)
    values: dict = {}
    if contact_id:
        contact = session.scalars(scoped_select(Contact, principal.organization_id)
                                  .where(Contact.id == contact_id)).first()
        if contact is None:
            raise ValidationError(details={"contact_id": ["No such contact in this organisation."]})
        values.update(contact_variables(contact))
    bad = [k for k, v in (variables or {}).items() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
    if bad:
        raise ValidationError(details={"variables": [f"Give texts or numbers: {', '.join(bad)}."]})
    values.update({k: str(v) for k, v in (variables or {}).items()})
    missing = missing_variables(template, values)
    if missing:
        raise ValidationError(f"Missing variables: {', '.join(missing)}", code="missing_variables",
                              details={"variables": [f"Missing: {', '.join(missing)}."], "missing": missing})
    header = template.header or {}
    return {"text": render_text(template, values), "body": render_template(template.body, values),
            "header": render_template(header["text"], values) if header.get("type") == "text" else None,
            "footer": template.footer,
            "buttons": [{**b, **({"url": render_template(b["url"], values)} if b.get("type") == "url" else {})}
                        for b in template.buttons or []],
            "variables": {n: values[n] for n in template_placeholders(template)}}


def submit_to(session: Session, principal: Principal, template_id: str, client_ids: list[str] | None) -> dict:
    """``POST /api/templates/{id}/submit``: submit again, to the given clients or to every one that
    needs a review."""
    template = get_scoped(session, Template, principal.organization_id, template_id)
    if client_ids:
        clients = session.scalars(scoped_select(Client, principal.organization_id)
                                  .where(Client.id.in_(client_ids))).all()
        unknown = sorted(set(client_ids) - {c.id for c in clients})
        if unknown:
            raise ValidationError(details={"client_ids": [
                f"No such client in this organisation: {', '.join(unknown)}."]})
        plain = [c.id for c in clients if not needs_review(c)]
        if plain:
            raise ValidationError(details={"client_ids": [f"These clients need no review: {', '.join(plain)}."]})
    else:
        clients = reviewed_clients(session, principal.organization_id)
    submit(session, template, list(clients))
    record(session, principal, "template.submit", target_type="template", target_id=template.id,
           changes={"client_ids": [c.id for c in clients]})
    return get_template(session, principal, template.id)
