"""Reacting to an inbound message: the ``automations.on_inbound`` job.

The organisation's enabled automations for the message's client are evaluated in priority order
(lower first, then older first), in one transaction that holds a lock on the contact (a
transaction-scoped advisory lock), so two messages of one contact are evaluated one after the
other and a cooldown cannot be slipped past by a concurrent job. For each automation whose trigger
matches:

* after one that fired with ``stop_processing``: skipped (``stopped``);
* the contact opted out (it wrote STOP since): skipped (``opted_out``);
* conditions (client, the contact's tags) not met: skipped (``conditions``);
* fired for this contact less than ``cooldown_seconds`` ago: skipped (``cooldown``);
* it would reply, and the contact got ``AUTOMATION_REPLIES_PER_MINUTE`` automatic replies in the
  last minute (from any automation): skipped (``reply_limit``);
* else its actions run in order, and the run is ``fired`` (or ``failed`` if no action did anything).

Every such decision is a row of ``automation_runs``, unique per (automation, message): a job run
again (redelivered, or sent twice by the outbox) finds its rows and does nothing. A reply is an
ordinary outbound message accepted by ``app.messages.service.accept_messages`` (paced, tracked,
``message.queued``) with the idempotency key ``automation:<automation id>:<message id>``, so it
is never sent twice either. Only inbound messages are evaluated: replies, campaign messages and
any other outbound message never trigger an automation, and STOP / START never reach here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from app.automations import rules
from app.automations.models import Automation, AutomationRun
from app.clients.models import Client
from app.contacts.models import Contact
from app.db import job_session, scoped_select, utcnow
from app.messages.models import Message
from app.messages.service import accept_messages
from app.security.principal import SystemPrincipal
from app.team.models import User
from app.templates.models import Template
from app.templates.rendering import render_template, template_placeholders
from config import settings

log = logging.getLogger(__name__)

_LOCK = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")
_PREVIOUS_INBOUND = text("""
    SELECT created_at FROM messages
     WHERE organization_id = :org AND contact_id = :contact AND direction = 'inbound' AND id < :id
     ORDER BY id DESC LIMIT 1""")


def reply_key(automation_id: str, message_id: str) -> str:
    """The idempotency key of the reply ``automation_id`` makes to inbound message ``message_id``."""
    return f"automation:{automation_id}:{message_id}"


@dataclass
class _Context:
    """What the evaluation of one message knows, loaded once."""

    session: Session
    message: Message
    contact: Contact
    text: str
    replies_left: int
    _previous: list = field(default_factory=list)

    def previous_inbound_at(self) -> datetime | None:
        """When the contact last wrote before this message (None: this is its first message)."""
        if not self._previous:
            self._previous.append(self.session.scalar(_PREVIOUS_INBOUND, {
                "org": self.message.organization_id, "contact": self.contact.id, "id": self.message.id}))
        return self._previous[0]


def on_inbound(message_id: str) -> list[AutomationRun]:
    """The ``automations.on_inbound`` job: evaluate, in one transaction."""
    with job_session() as session:
        return evaluate(session, message_id)


def evaluate(session: Session, message_id: str) -> list[AutomationRun]:
    """Evaluate the automations of inbound message ``message_id`` once; the runs written now."""
    message = session.get(Message, message_id)
    if message is None or message.direction != "inbound" or message.contact_id is None:
        return []
    automations = list(session.scalars(
        scoped_select(Automation, message.organization_id)
        .where(Automation.enabled.is_(True),
               (Automation.client_id.is_(None)) | (Automation.client_id == message.client_id))
        .order_by(Automation.priority, Automation.id)))
    if not automations:
        return []
    session.execute(_LOCK, {"key": f"automations:{message.contact_id}"})
    contact = session.scalars(select(Contact).where(Contact.id == message.contact_id).with_for_update(),
                              execution_options={"populate_existing": True}).first()
    if contact is None:
        return []
    done = dict(session.execute(select(AutomationRun.automation_id, AutomationRun.status).where(
        AutomationRun.automation_id.in_([a.id for a in automations]),  # the unique key's index
        AutomationRun.trigger_message_id == message.id)).all())
    recent = session.scalar(select(func.count()).select_from(AutomationRun).where(
        AutomationRun.contact_id == contact.id, AutomationRun.reply_message_id.isnot(None),
        AutomationRun.created_at > func.now() - timedelta(minutes=1)))
    ctx = _Context(session, message, contact, rules.message_text(message.text, message.caption),
                   settings.AUTOMATION_REPLIES_PER_MINUTE - (recent or 0))
    stopped = any(done.get(a.id) == "fired" and a.stop_processing for a in automations)
    decided = []
    for automation in automations:
        if automation.id in done:
            continue
        run = _evaluate_one(ctx, automation, stopped)
        if run is None:
            continue
        decided.append(run)
        if run.status == "fired" and automation.stop_processing:
            stopped = True
    return _insert_runs(session, decided)


def _run(ctx: _Context, automation: Automation, status: str, reason: str | None = None,
         actions: list | None = None, reply_id: str | None = None) -> AutomationRun:
    return AutomationRun(organization_id=ctx.message.organization_id, automation_id=automation.id,
                         client_id=ctx.message.client_id, contact_id=ctx.contact.id,
                         trigger_message_id=ctx.message.id, reply_message_id=reply_id, status=status, reason=reason,
                         actions=actions or [])


def _evaluate_one(ctx: _Context, automation: Automation, stopped: bool) -> AutomationRun | None:
    """The run of one automation on the message, or None when its trigger does not match."""
    try:
        if not _triggered(ctx, automation.trigger):
            return None
    except rules.RegexTimeout as exc:
        log.warning("automation %s: a keyword pattern ran out of time on message %s", automation.id, ctx.message.id)
        return _run(ctx, automation, "failed", "regex_timeout",
                    [{"type": "trigger", "status": "failed", "detail": f"the pattern {str(exc)[:100]!r} timed out"}])
    if stopped:
        return _run(ctx, automation, "skipped", "stopped")
    if ctx.contact.opted_out:
        return _run(ctx, automation, "skipped", "opted_out")
    if not rules.conditions_hold(automation.conditions, ctx.message.client_id, ctx.contact.tags):
        return _run(ctx, automation, "skipped", "conditions")
    if automation.cooldown_seconds and _fired_lately(ctx, automation):
        return _run(ctx, automation, "skipped", "cooldown")
    replies = any(a.get("type") == "reply" for a in automation.actions)
    if replies and ctx.replies_left <= 0:
        return _run(ctx, automation, "skipped", "reply_limit")
    results, reply_id = [], None
    for action in automation.actions:
        result = _act(ctx, automation, action)
        reply_id = reply_id or result.get("message_id")
        results.append(result)
    if reply_id:
        ctx.replies_left -= 1
    fired = any(r["status"] == "done" for r in results)
    return _run(ctx, automation, "fired" if fired else "failed", None if fired else "actions_failed", results,
                reply_id)


def _triggered(ctx: _Context, trigger: dict) -> bool:
    kind = trigger.get("type")
    if kind == "keyword":
        return rules.keyword_matches(trigger, ctx.text)
    if kind == "first_message":
        previous = ctx.previous_inbound_at()
        if previous is None:
            return True
        days = trigger.get("after_days")
        return bool(days) and (ctx.message.created_at - previous).total_seconds() >= days * 86400
    if kind == "outside_hours":
        return rules.outside_hours(trigger.get("hours") or {}, ctx.message.created_at)
    return False


def _fired_lately(ctx: _Context, automation: Automation) -> bool:
    return ctx.session.scalar(select(AutomationRun.id).where(
        AutomationRun.automation_id == automation.id, AutomationRun.contact_id == ctx.contact.id,
        AutomationRun.status == "fired",
        AutomationRun.created_at > func.now() - timedelta(seconds=automation.cooldown_seconds))
        .limit(1)) is not None


def _insert_runs(session: Session, runs: list[AutomationRun]) -> list[AutomationRun]:
    """Write the runs in one statement, but none of an automation that has one for the message
    already; those written."""
    if not runs:
        return []
    columns = [c.key for c in AutomationRun.__table__.columns if c.key not in ("id", "created_at")]
    rows = session.execute(pg_insert(AutomationRun).values([{c: getattr(r, c) for c in columns} for r in runs])
                           .on_conflict_do_nothing(constraint="automation_runs_automation_trigger_key")
                           .returning(AutomationRun.id, AutomationRun.automation_id, AutomationRun.created_at)).all()
    by_automation = {r.automation_id: r for r in runs}
    for run_id, automation_id, created_at in rows:
        by_automation[automation_id].id, by_automation[automation_id].created_at = run_id, created_at
    return sorted((by_automation[a] for _, a, _ in rows), key=lambda r: r.id)


# ----------------------------------------------------------------------------- actions

def _act(ctx: _Context, automation: Automation, action: dict) -> dict:
    kind = action.get("type")
    if kind == "reply":
        return _reply(ctx, automation, action)
    if kind == "tag":
        tags = [t for t in ctx.contact.tags or [] if t not in set(action.get("remove") or [])]
        tags += [t for t in action.get("add") or [] if t not in tags]
        if tags != list(ctx.contact.tags or []):
            ctx.contact.tags = tags[:50]
            ctx.contact.updated_at = utcnow()
            ctx.session.flush()
        return {"type": "tag", "status": "done", "detail": None}
    if kind == "webhook":
        from app.webhooks.events import emit

        emit(ctx.session, ctx.message.organization_id, "automation.triggered", {
            "automation_id": automation.id, "message_id": ctx.message.id, "contact_id": ctx.contact.id,
            "client_id": ctx.message.client_id})
        return {"type": "webhook", "status": "done", "detail": None}
    if kind == "assign":
        user = ctx.session.scalars(scoped_select(User, ctx.message.organization_id)
                                   .where(User.id == action.get("user_id"), User.status == "active")).first()
        if user is None:
            return {"type": "assign", "status": "failed", "detail": "the user is gone or disabled"}
        if ctx.contact.assigned_user_id != user.id:
            ctx.contact.assigned_user_id = user.id
            ctx.contact.updated_at = utcnow()
            ctx.session.flush()
        return {"type": "assign", "status": "done", "detail": None}
    return {"type": str(kind), "status": "failed", "detail": "unknown action type"}


def _reply(ctx: _Context, automation: Automation, action: dict) -> dict:
    """An ordinary outbound message from the message's client to the contact."""
    if ctx.contact.opted_out:
        return {"type": "reply", "status": "skipped", "detail": "the contact opted out"}
    client = ctx.session.get(Client, ctx.message.client_id)
    if client is None or client.deleted_at is not None:
        return {"type": "reply", "status": "failed", "detail": "the client is gone"}
    values = rules.reply_variables(contact_name=ctx.contact.name, phone=ctx.contact.phone,
                                   attributes=ctx.contact.attributes, message_id=ctx.message.id, text=ctx.text)
    item: dict = {"to": ctx.contact.phone}
    if action.get("template_id"):
        template = ctx.session.scalars(scoped_select(Template, ctx.message.organization_id)
                                       .where(Template.id == action["template_id"])).first()
        if template is None:
            return {"type": "reply", "status": "failed", "detail": "the template is gone"}
        given = {k: render_template(v, values) for k, v in (action.get("variables") or {}).items()}
        item.update(template_id=template.id, variables={
            name: given[name] if name in given else values[name]
            for name in template_placeholders(template) if name in given or name in values})
    else:
        item["text"] = render_template(action.get("message") or "", values)
    result = accept_messages(ctx.session, SystemPrincipal(ctx.message.organization_id), client, [item],
                             automation_id=automation.id, keys=[reply_key(automation.id, ctx.message.id)])[0]
    if "error" in result:
        error = result["error"]
        status = "skipped" if error["code"] == "contact_opted_out" else "failed"
        detail = f"{error['code']}: {error['message']} {error['details'] or ''}".strip()
        return {"type": "reply", "status": status, "detail": detail[:500]}
    return {"type": "reply", "status": "done", "detail": None, "message_id": result["id"]}
