"""Automations: what the API does with them (create, list, change, delete, list runs).

The shapes are checked by app/automations/schemas.py; here what needs the database: the clients,
templates and users an automation names belong to the organisation. Reacting to inbound messages
is app/automations/engine.py; the hook the inbound path calls is app/automations/hook.py.
"""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.audit.service import diff, record
from app.automations.models import Automation, AutomationRun
from app.clients.models import Client
from app.db import get_scoped, new_id, scoped_select, utcnow
from app.errors import Conflict, ValidationError
from app.pagination import decode_cursor, encode_cursor, paginate
from app.security.principal import Principal
from app.team.models import User
from app.templates.models import Template

MAX_AUTOMATIONS_PER_ORG = 200
_COLUMNS = tuple(c.key for c in Automation.__table__.columns)
_FIELDS = ("name", "client_id", "trigger", "conditions", "actions", "enabled", "priority", "cooldown_seconds",
           "stop_processing")


def _clean_tags(tags) -> list[str]:
    return list(dict.fromkeys(t.strip() for t in tags or [] if t.strip()))


def _check_client(session: Session, organization_id: str, client_id: str) -> bool:
    return session.scalar(scoped_select(Client, organization_id).where(Client.id == client_id)
                          .with_only_columns(Client.id)) is not None


def _normalised_actions(session: Session, organization_id: str, actions: list[dict], field: str) -> list[dict]:
    """The actions with their tags cleaned, or a 422 naming each template or user not of the
    organisation (``field`` is how the body named them: ``action`` or ``actions``)."""
    errors: dict = {}
    out = []
    for i, action in enumerate(actions):
        action = dict(action)
        where = errors.setdefault(i, {})
        if action.get("template_id"):
            found = session.scalar(scoped_select(Template, organization_id)
                                   .where(Template.id == action["template_id"]).with_only_columns(Template.id))
            if found is None:
                where["template_id"] = ["No such template in this organisation."]
        if action.get("user_id"):
            user = session.scalars(scoped_select(User, organization_id).where(User.id == action["user_id"])).first()
            if user is None:
                where["user_id"] = ["No such user in this organisation."]
            elif user.status != "active":
                where["user_id"] = ["This user is disabled."]
        for key in ("add", "remove"):
            if key in action:
                action[key] = _clean_tags(action[key])
        out.append(action)
    errors = {i: e for i, e in errors.items() if e}
    if errors:
        raise ValidationError(details={field: errors[0] if field == "action" else errors})
    return out


def _checked(session: Session, principal: Principal, fields: dict) -> dict:
    """The columns of the validated body ``fields`` (create or update), with references checked."""
    org = principal.organization_id
    out = {k: v for k, v in fields.items() if k not in ("action", "actions")}
    if fields.get("client_id") is not None and not _check_client(session, org, fields["client_id"]):
        raise ValidationError(details={"client_id": ["No such client in this organisation."]})
    if fields.get("conditions") is not None:
        conditions = {k: v for k, v in fields["conditions"].items() if v}
        for key in ("tags_any", "tags_all", "tags_none"):
            if key in conditions:
                conditions[key] = _clean_tags(conditions[key])
        missing = {i: ["No such client in this organisation."] for i, cid in enumerate(conditions.get("client_ids", []))
                   if not _check_client(session, org, cid)}
        if missing:
            raise ValidationError(details={"conditions": {"client_ids": missing}})
        out["conditions"] = conditions
    if fields.get("action") is not None:
        out["actions"] = _normalised_actions(session, org, [fields["action"]], "action")
    elif fields.get("actions") is not None:
        out["actions"] = _normalised_actions(session, org, fields["actions"], "actions")
    return out


def views(session: Session, automations: list[Automation]) -> list[dict]:
    """The automations as the API shows them: their columns, and ``fire_count`` / ``last_fired_at``
    counted from their runs (one query for all: ``automation_runs_fired_idx``)."""
    ids = [a.id for a in automations]
    counted = {aid: (n, last) for aid, n, last in session.execute(
        select(AutomationRun.automation_id, func.count(), func.max(AutomationRun.created_at))
        .where(AutomationRun.automation_id.in_(ids), AutomationRun.status == "fired")
        .group_by(AutomationRun.automation_id))} if ids else {}
    return [{**{c: getattr(a, c) for c in _COLUMNS}, "fire_count": counted.get(a.id, (0, None))[0],
             "last_fired_at": counted.get(a.id, (0, None))[1]} for a in automations]


def _set_trigger(automation: Automation, trigger: dict) -> None:
    """The trigger as given, with the defaults it runs with written out (keyword: contains, not
    case-sensitive)."""
    trigger = dict(trigger)
    if trigger["type"] == "keyword":
        trigger.setdefault("match", "contains")
        trigger.setdefault("case_sensitive", False)
    automation.trigger = trigger
    automation.trigger_type = trigger["type"]


def create_automation(session: Session, principal: Principal, **fields) -> dict:
    values = _checked(session, principal, fields)
    count = session.scalar(select(func.count())
                           .select_from(scoped_select(Automation, principal.organization_id).subquery()))
    if count >= MAX_AUTOMATIONS_PER_ORG:
        raise Conflict(f"An organisation has at most {MAX_AUTOMATIONS_PER_ORG} automations", code="automation_limit",
                       details={"limit": MAX_AUTOMATIONS_PER_ORG})
    now = utcnow()
    automation = Automation(id=new_id("aut"), organization_id=principal.organization_id,
                            created_by=principal.id if principal.kind == "user" else None, created_at=now,
                            updated_at=now)
    _set_trigger(automation, values.pop("trigger"))
    for name, value in values.items():
        setattr(automation, name, value)
    automation.action = automation.actions[0]
    session.add(automation)
    session.flush()
    record(session, principal, "automation.create", target_type="automation", target_id=automation.id,
           changes={name: getattr(automation, name) for name in _FIELDS})
    return {**{c: getattr(automation, c) for c in _COLUMNS}, "fire_count": 0, "last_fired_at": None}


def list_automations(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                     enabled: bool | None = None, client_id: str | None = None,
                     trigger_type: str | None = None) -> dict:
    stmt = scoped_select(Automation, principal.organization_id)
    if enabled is not None:
        stmt = stmt.where(Automation.enabled.is_(enabled))
    if client_id:
        stmt = stmt.where(Automation.client_id == client_id)
    if trigger_type:
        stmt = stmt.where(Automation.trigger_type == trigger_type)
    page = paginate(session, stmt, Automation.id, limit=limit, cursor=cursor)
    return {**page, "items": views(session, page["items"])}


def get_automation(session: Session, principal: Principal, automation_id: str) -> dict:
    return views(session, [get_scoped(session, Automation, principal.organization_id, automation_id)])[0]


def update_automation(session: Session, principal: Principal, automation_id: str, **fields) -> dict:
    automation = get_scoped(session, Automation, principal.organization_id, automation_id, for_update=True)
    values = _checked(session, principal, fields)
    changes = diff(automation, values)
    if not changes:
        return views(session, [automation])[0]
    for name, value in values.items():
        if name == "trigger":
            _set_trigger(automation, value)
        else:
            setattr(automation, name, value)
    automation.action = automation.actions[0]
    automation.updated_at = utcnow()
    session.flush()
    record(session, principal, "automation.update", target_type="automation", target_id=automation.id,
           changes=changes)
    return views(session, [automation])[0]


def delete_automation(session: Session, principal: Principal, automation_id: str) -> None:
    automation = get_scoped(session, Automation, principal.organization_id, automation_id, for_update=True)
    automation.deleted_at = automation.updated_at = utcnow()
    automation.enabled = False
    session.flush()
    record(session, principal, "automation.delete", target_type="automation", target_id=automation.id,
           changes={"name": automation.name})


def list_runs(session: Session, principal: Principal, automation_id: str, *, limit: int, cursor: str | None = None,
              status: str | None = None) -> dict:
    """The automation's runs, newest first (``run_<id>`` cursors: run ids are numbers)."""
    automation = get_scoped(session, Automation, principal.organization_id, automation_id)
    stmt = select(AutomationRun).where(AutomationRun.automation_id == automation.id,
                                       AutomationRun.organization_id == principal.organization_id)
    if status:
        stmt = stmt.where(AutomationRun.status == status)
    if cursor:
        prefix, _, number = decode_cursor(cursor).partition("_")
        if prefix != "run" or not number.isdigit():
            raise ValidationError(details={"cursor": ["Invalid cursor."]})
        stmt = stmt.where(AutomationRun.id < int(number))
    rows = list(session.scalars(stmt.order_by(AutomationRun.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(f"run_{rows[limit - 1].id}") if len(rows) > limit else None
    return {"items": rows[:limit], "next_cursor": next_cursor}
