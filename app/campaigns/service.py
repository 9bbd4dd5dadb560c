"""Campaigns: what the API does with them (create, change, start, pause, resume, cancel, estimate,
test, recipients); what workers do for them is app/campaigns/sending.py.

States: ``draft -> scheduled -> running <-> paused -> completed | cancelled | failed``. ``start``
makes a draft ``scheduled`` when its ``scheduled_at`` is ahead (the scheduler starts it then, once)
or ``running`` at once; a running campaign's fan-out (``campaigns.fan_out``) writes a recipient row
and an ordinary message per contact. Every change is in the audit log and emitted
(``campaign.started``, ``campaign.paused``, ``campaign.completed``, ``campaign.cancelled``).
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app import outbox
from app.audit.service import diff, record
from app.campaigns import audience as audiences
from app.campaigns import windows
from app.campaigns.content import item_for
from app.campaigns.eta import eta
from app.campaigns.models import Campaign, CampaignClient, CampaignRecipient, client_ids_of, clients_of
from app.campaigns.statuses import EDITABLE
from app.clients.models import Client
from app.contacts.models import Contact
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, ValidationError
from app.pagination import paginate
from app.security.principal import Principal
from app.team.models import OrganizationSettings
from app.templates.models import Template
from app.templates.rendering import placeholders_of, template_placeholders
from app.templates.reviews import approval_problem

FAN_OUT_ACTOR = "campaigns.fan_out"
HOLD_ACTOR = "campaigns.hold"
RESUME_ACTOR = "campaigns.resume"
CANCEL_ACTOR = "campaigns.cancel_rest"

#: the placeholders a contact fills (the rest must be given as the campaign's variables)
CONTACT_FIELDS = ("name", "phone", "contact.name", "contact.phone")
MAX_RECIPIENT_VARIABLES = 100_000
CONTENT = ("client_ids", "template_id", "message", "variables", "recipient_variables", "audience", "scheduled_at",
           "send_window", "frequency_cap")


# ----------------------------------------------------------------------------- reading

def list_campaigns(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                   status: str | None = None) -> dict:
    stmt = scoped_select(Campaign, principal.organization_id)
    if status:
        stmt = stmt.where(Campaign.status == status)
    page = paginate(session, stmt, Campaign.id, limit=limit, cursor=cursor)
    page["items"] = [view(session, c) for c in page["items"]]
    return page


def get_campaign(session: Session, principal: Principal, campaign_id: str) -> dict:
    return view(session, get_scoped(session, Campaign, principal.organization_id, campaign_id))


def progress(c: Campaign) -> dict:
    """The counters as the API shows them: ``sent`` counts every recipient that reached sent or
    beyond, ``delivered`` delivered or read; ``queued`` those not sent yet."""
    return {"total": c.total_count, "queued": c.pending_count + c.queued_count,
            "sent": c.sent_count + c.delivered_count + c.read_count, "delivered": c.delivered_count + c.read_count,
            "read": c.read_count, "failed": c.failed_count, "skipped": c.skipped_count,
            "cancelled": c.cancelled_count, "replied": c.replied_count}


def view(session: Session, campaign: Campaign) -> dict:
    """A campaign as the API shows it: its columns, clients, progress and (while it has work
    ahead) its ETA."""
    out = {col.key: getattr(campaign, col.key) for col in Campaign.__table__.columns}
    out["client_ids"] = client_ids_of(session, campaign.id)
    out["progress"] = progress(campaign)
    out["eta"] = None
    if campaign.status in ("scheduled", "running", "paused"):
        remaining = campaign.pending_count + campaign.queued_count
        if campaign.status == "scheduled" or not campaign.fanout_done_at:
            total, opted_out = audiences.count(session, campaign.organization_id, campaign.audience or {})
            remaining = max(remaining, total - opted_out - campaign.skipped_count - campaign.failed_count
                            - campaign.sent_count - campaign.delivered_count - campaign.read_count)
        out["eta"] = eta(session, campaign, remaining)
    return out


def estimate(session: Session, principal: Principal, campaign_id: str) -> dict:
    """``POST /api/campaigns/{id}/estimate``: how many it would write to, and how long it takes."""
    campaign = get_scoped(session, Campaign, principal.organization_id, campaign_id)
    if campaign.status in ("running", "paused"):
        return {**view(session, campaign)["eta"], "skipped": campaign.skipped_count}
    total, opted_out = audiences.count(session, campaign.organization_id, campaign.audience or {})
    return {**eta(session, campaign, total - opted_out), "skipped": opted_out}


# ----------------------------------------------------------------------------- writing

def _check(session: Session, organization_id: str, fields: dict) -> dict:
    """The campaign's fields checked together; a 422 naming every bad one."""
    errors: dict[str, list[str]] = {}
    template = None
    if fields.get("template_id"):
        template = session.scalars(scoped_select(Template, organization_id)
                                   .where(Template.id == fields["template_id"])).first()
        if template is None:
            errors["template_id"] = ["No such template in this organisation."]
    if bool(fields.get("template_id")) == bool(fields.get("message")):
        errors["message"] = ["Give either template_id or message."]
    if template is not None or fields.get("message"):
        given = set(fields.get("variables") or {})
        per_recipient = {k for values in (fields.get("recipient_variables") or {}).values() for k in values}
        names = template_placeholders(template) if template is not None else placeholders_of(fields["message"])
        missing = [n for n in names if n not in given and n not in per_recipient and n not in CONTACT_FIELDS
                   and not n.startswith(("attributes.", "contact.attributes."))]
        if missing:
            errors["variables"] = [f"Missing: {', '.join(missing)} (not a contact's field)."]
    if len(fields.get("recipient_variables") or {}) > MAX_RECIPIENT_VARIABLES:
        errors["recipient_variables"] = [f"At most {MAX_RECIPIENT_VARIABLES} recipients."]
    client_ids = fields.get("client_ids") or []
    if not client_ids:
        errors["client_ids"] = ["Give at least one client to send from."]
    else:
        found = {c.id: c for c in session.scalars(scoped_select(Client, organization_id)
                                                  .where(Client.id.in_(client_ids)))}
        unknown = [i for i in client_ids if i not in found]
        if unknown:
            errors["client_ids"] = [f"No such client in this organisation: {', '.join(unknown)}."]
    errors.update(audiences.problems(session, organization_id, fields.get("audience") or {}))
    if fields.get("send_window"):
        bad = windows.problems(fields["send_window"])
        if bad:
            errors["send_window"] = bad
    cap = fields.get("frequency_cap")
    if cap and (not isinstance(cap.get("max"), int) or cap["max"] < 1 or not isinstance(cap.get("hours"), int)
                or not 1 <= cap["hours"] <= 24 * 90):
        errors["frequency_cap"] = ["{max: at least 1, hours: 1 to 2160}."]
    if errors:
        raise ValidationError(details=errors)
    return fields


def create_campaign(session: Session, principal: Principal, *, client_ids: list[str], **fields) -> dict:
    _check(session, principal.organization_id, {**fields, "client_ids": client_ids})
    campaign = Campaign(organization_id=principal.organization_id, status="draft",
                        created_by=principal.id if principal.kind == "user" else None, **fields)
    session.add(campaign)
    session.flush()
    _set_clients(session, campaign, client_ids)
    record(session, principal, "campaign.create", target_type="campaign", target_id=campaign.id,
           changes={"name": campaign.name, "client_ids": client_ids})
    return view(session, campaign)


def _set_clients(session: Session, campaign: Campaign, client_ids: list[str]) -> None:
    session.execute(delete(CampaignClient).where(CampaignClient.campaign_id == campaign.id))
    now = utcnow()
    for i, client_id in enumerate(dict.fromkeys(client_ids)):  # created_at keeps the order given
        at = now + timedelta(microseconds=i)
        session.add(CampaignClient(campaign_id=campaign.id, client_id=client_id,
                                   organization_id=campaign.organization_id, created_at=at))
    session.flush()


def _locked(session: Session, principal: Principal, campaign_id: str) -> Campaign:
    return get_scoped(session, Campaign, principal.organization_id, campaign_id, for_update=True)


def update_campaign(session: Session, principal: Principal, campaign_id: str, **changes) -> dict:
    campaign = _locked(session, principal, campaign_id)
    if any(k in changes for k in CONTENT) and campaign.status not in EDITABLE:
        raise Conflict(f"A {campaign.status} campaign keeps its content; only its name can change",
                       code="campaign_not_editable", details={"status": campaign.status})
    client_ids = changes.pop("client_ids", None)
    current = client_ids_of(session, campaign.id)
    merged = {k: getattr(campaign, k) for k in ("template_id", "message", "variables", "recipient_variables",
                                                 "audience", "send_window", "frequency_cap")} | changes
    _check(session, principal.organization_id, {**merged, "client_ids": client_ids or current})
    delta = diff(campaign, changes)
    for name, value in changes.items():
        setattr(campaign, name, value)
    if client_ids is not None and client_ids != current:
        delta["client_ids"] = {"from": current, "to": client_ids}
        _set_clients(session, campaign, client_ids)
    if delta:
        campaign.updated_at = utcnow()
        session.flush()
        record(session, principal, "campaign.update", target_type="campaign", target_id=campaign.id, changes=delta)
    return view(session, campaign)


def delete_campaign(session: Session, principal: Principal, campaign_id: str) -> None:
    campaign = _locked(session, principal, campaign_id)
    if campaign.status in ("running", "paused"):
        raise Conflict("Cancel a running or paused campaign before deleting it", code="campaign_active",
                       details={"status": campaign.status})
    campaign.deleted_at = campaign.updated_at = utcnow()
    if campaign.status == "scheduled":
        campaign.status = "cancelled"
    session.flush()
    record(session, principal, "campaign.delete", target_type="campaign", target_id=campaign.id,
           changes={"name": campaign.name})


# ----------------------------------------------------------------------------- states

def _conflict(campaign: Campaign, verb: str, allowed: tuple[str, ...]) -> Conflict:
    return Conflict(f"A {campaign.status} campaign cannot {verb} (only a {' or '.join(allowed)} one)",
                    code="invalid_campaign_state", details={"status": campaign.status})


def _emit(session: Session, campaign: Campaign, event: str) -> None:
    from app.webhooks.events import emit

    session.flush()
    data = {k: v for k, v in view(session, campaign).items() if k not in ("recipient_variables",)}
    emit(session, campaign.organization_id, event, data)


def sendability_problems(session: Session, campaign: Campaign) -> dict[str, list[str]]:
    """Why the campaign cannot start: no recipients, or a client that cannot send its template."""
    errors: dict[str, list[str]] = {}
    total, opted_out = audiences.count(session, campaign.organization_id, campaign.audience or {})
    if total - opted_out <= 0:
        errors["audience"] = [f"The audience has no contact to write to ({total} found, {opted_out} opted out)."]
    live = [c for c in clients_of(session, campaign.id) if c.deleted_at is None]
    if not live:
        errors["client_ids"] = ["Every client of the campaign was deleted."]
    if campaign.template_id:
        template = session.get(Template, campaign.template_id)
        if template is None or template.deleted_at is not None:
            errors["template_id"] = ["The template was deleted."]
        else:
            bad = {c.id: approval_problem(session, c, template) for c in live}
            bad = {k: v for k, v in bad.items() if v}
            if bad:
                errors["template_id"] = [f"{cid}: {why}" for cid, why in sorted(bad.items())]
    return errors


def start(session: Session, principal: Principal, campaign_id: str) -> dict:
    """A draft starts now, or becomes ``scheduled`` when its ``scheduled_at`` is ahead; a
    scheduled one starts now."""
    campaign = _locked(session, principal, campaign_id)
    if campaign.status not in EDITABLE:
        raise _conflict(campaign, "start", EDITABLE)
    problems = sendability_problems(session, campaign)
    if problems:
        raise ValidationError("The campaign cannot start", code="campaign_not_sendable", details=problems)
    if campaign.send_window and not campaign.send_window.get("timezone"):
        tz = session.scalar(select(OrganizationSettings.timezone)
                            .where(OrganizationSettings.organization_id == campaign.organization_id)) or "UTC"
        campaign.send_window = {**campaign.send_window, "timezone": tz}
    now = utcnow()
    if campaign.status == "draft" and campaign.scheduled_at and campaign.scheduled_at > now:
        campaign.status, campaign.updated_at = "scheduled", now
        record(session, principal, "campaign.schedule", target_type="campaign", target_id=campaign.id,
               changes={"scheduled_at": campaign.scheduled_at.isoformat()})
        return view(session, campaign)
    begin(session, campaign, principal)
    return view(session, campaign)


def begin(session: Session, campaign: Campaign, principal: Principal | None) -> None:
    """``running`` now, with its fan-out sent after commit (also the scheduler's, for a due one)."""
    now = utcnow()
    campaign.status, campaign.started_at, campaign.updated_at = "running", now, now
    record(session, principal, "campaign.start", organization_id=campaign.organization_id, target_type="campaign",
           target_id=campaign.id, changes={"status": "running"})
    _emit(session, campaign, "campaign.started")
    outbox.enqueue(session, FAN_OUT_ACTOR, campaign.id)


def pause(session: Session, principal: Principal, campaign_id: str) -> dict:
    """Nothing more leaves: its queued messages keep their place but give back their sending
    slots (``campaigns.hold``); a message already handed to WhatsApp still arrives."""
    campaign = _locked(session, principal, campaign_id)
    if campaign.status != "running":
        raise _conflict(campaign, "pause", ("running",))
    now = utcnow()
    campaign.status, campaign.paused_at, campaign.updated_at = "paused", now, now
    record(session, principal, "campaign.pause", target_type="campaign", target_id=campaign.id,
           changes={"status": "paused"})
    _emit(session, campaign, "campaign.paused")
    outbox.enqueue(session, HOLD_ACTOR, campaign.id)
    return view(session, campaign)


def resume(session: Session, principal: Principal, campaign_id: str) -> dict:
    """Going on where it stopped: its queued messages get new slots (``campaigns.resume``), and an
    unfinished fan-out continues."""
    campaign = _locked(session, principal, campaign_id)
    if campaign.status != "paused":
        raise _conflict(campaign, "resume", ("paused",))
    campaign.status, campaign.paused_at, campaign.updated_at = "running", None, utcnow()
    record(session, principal, "campaign.resume", target_type="campaign", target_id=campaign.id,
           changes={"status": "running"})
    _emit(session, campaign, "campaign.started")
    outbox.enqueue(session, RESUME_ACTOR, campaign.id)
    if campaign.fanout_done_at is None:
        outbox.enqueue(session, FAN_OUT_ACTOR, campaign.id)
    return view(session, campaign)


def cancel(session: Session, principal: Principal, campaign_id: str) -> dict:
    """What has not left is cancelled (``campaigns.cancel_rest``); what left is tracked on."""
    campaign = _locked(session, principal, campaign_id)
    if campaign.status not in ("scheduled", "running", "paused"):
        raise _conflict(campaign, "be cancelled", ("scheduled", "running", "paused"))
    now = utcnow()
    campaign.status, campaign.cancelled_at, campaign.updated_at = "cancelled", now, now
    record(session, principal, "campaign.cancel", target_type="campaign", target_id=campaign.id,
           changes={"status": "cancelled"})
    _emit(session, campaign, "campaign.cancelled")
    outbox.enqueue(session, CANCEL_ACTOR, campaign.id)
    return view(session, campaign)


# ----------------------------------------------------------------------------- test send, recipients

def test_send(session: Session, principal: Principal, campaign_id: str, *, to: str, client_id: str | None) -> dict:
    """One message with the campaign's content to ``to`` (not a recipient; no effect on progress):
    the template's variables from the campaign, the recipient map and the contact of that number."""
    from app.messages.service import accept_messages, client_for_send

    campaign = get_scoped(session, Campaign, principal.organization_id, campaign_id)
    ids = client_ids_of(session, campaign.id)
    if client_id is not None and client_id not in ids:
        raise ValidationError(details={"client_id": ["Not one of the campaign's clients."]})
    client = client_for_send(session, principal, client_id or ids[0], field="client_id")
    contact = session.scalars(scoped_select(Contact, principal.organization_id).where(Contact.phone == to)).first()
    template = session.get(Template, campaign.template_id) if campaign.template_id else None
    item, missing = item_for(campaign, template, to, contact)
    if missing:
        raise ValidationError(f"Missing variables for {to}: {', '.join(missing)}", code="missing_variables",
                              details={"variables": [f"Missing: {', '.join(missing)}."], "missing": missing})
    result = accept_messages(session, principal, client, [item], strict=True)[0]
    record(session, principal, "campaign.test", target_type="campaign", target_id=campaign.id,
           changes={"to": to, "message_id": result["id"]})
    return result


def list_recipients(session: Session, principal: Principal, campaign_id: str, *, limit: int,
                    cursor: str | None = None, status: str | None = None) -> dict:
    """Recipients in the order they were written, with their message and status."""
    campaign = get_scoped(session, Campaign, principal.organization_id, campaign_id)
    stmt = (select(CampaignRecipient, Contact.phone, Contact.name)
            .join(Contact, Contact.id == CampaignRecipient.contact_id)
            .where(CampaignRecipient.campaign_id == campaign.id).order_by(CampaignRecipient.id).limit(limit + 1))
    if status:
        stmt = stmt.where(CampaignRecipient.status == status)
    if cursor:
        if not cursor.isdigit():
            raise ValidationError(details={"cursor": ["Not a cursor of this list."]})
        stmt = stmt.where(CampaignRecipient.id > int(cursor))
    rows = session.execute(stmt).all()
    items = [{"id": r.id, "contact_id": r.contact_id, "phone": phone, "name": name, "client_id": r.client_id,
              "message_id": r.message_id, "status": r.status, "reason": r.reason, "replied_at": r.replied_at,
              "created_at": r.created_at, "updated_at": r.updated_at} for r, phone, name in rows[:limit]]
    return {"items": items, "next_cursor": str(rows[limit - 1][0].id) if len(rows) > limit else None}
