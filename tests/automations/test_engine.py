"""The evaluation of automations on an inbound message (app/automations/engine.py) and the hook of
the inbound path, in a rolled-back transaction: which automations run, in which order, what is
recorded, what each action does. tests/automations/test_workers.py runs the same through real
workers and the sim transport."""
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

import jobs  # noqa: F401
from app.automations import engine, service
from app.db import new_id
from app.messages.inbound import receive_inbound
from app.models import AutomationRun, Contact, JobOutbox, Message, WebhookEvent
from app.security.principal import SystemPrincipal
from tests import factories as f

PHONE = "+14155550123"
ALWAYS_CLOSED = {"type": "outside_hours", "hours": {"tz": "UTC", "days": {}}}
ALWAYS_OPEN = {"type": "outside_hours", "hours": {"tz": "UTC", "days": {
    d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}}}


@pytest.fixture
def cli(session, org):
    return f.make_client(session, organization_id=org.id, status="ready", phone="+14155550100")


def automation(session, org, *, trigger=None, actions=None, **fields):
    actions = actions or [{"type": "reply", "message": "auto"}]
    trigger = trigger or {"type": "keyword", "keywords": ["hello"], "match": "contains"}
    return f.make_automation(session, organization_id=org.id, trigger=trigger, trigger_type=trigger["type"],
                             actions=actions, action=actions[0], **fields)


def inbound(session, cli, text, phone=PHONE, name="Ann"):
    payload = {"external_id": new_id("ext"), "from_phone": phone, "type": "text", "text": text,
               "timestamp": datetime.now(UTC).isoformat(), "contact_name": name}
    return receive_inbound(session, cli.id, payload)


def replies(session, cli) -> list[Message]:
    return session.scalars(select(Message).where(Message.client_id == cli.id, Message.direction == "outbound",
                                                 Message.automation_id.isnot(None)).order_by(Message.id)).all()


def runs(session, automation_id=None) -> list[AutomationRun]:
    stmt = select(AutomationRun).order_by(AutomationRun.id)
    if automation_id:
        stmt = stmt.where(AutomationRun.automation_id == automation_id)
    return session.scalars(stmt).all()


def jobs_for(session, message_id) -> int:
    return len([j for j in session.scalars(select(JobOutbox).where(JobOutbox.actor_name == "automations.on_inbound"))
                if j.args == [message_id]])


# ----------------------------------------------------------------------------- the hook


def test_an_inbound_message_is_handed_over_only_when_an_enabled_automation_exists(session, org, cli):
    assert jobs_for(session, inbound(session, cli, "hello").id) == 0  # no automation at all
    automation(session, org, enabled=False)
    assert jobs_for(session, inbound(session, cli, "hello").id) == 0  # only a disabled one
    automation(session, org)
    assert jobs_for(session, inbound(session, cli, "hello").id) == 1
    other = f.make_organization(session)
    other_cli = f.make_client(session, organization_id=other.id, status="ready")
    assert jobs_for(session, inbound(session, other_cli, "hello").id) == 0  # another organisation's


def test_stop_and_start_never_reach_automations(session, org, cli):
    a = automation(session, org, trigger={"type": "keyword", "keywords": [".*"], "match": "regex"})
    stop = inbound(session, cli, "STOP")
    assert jobs_for(session, stop.id) == 0
    assert jobs_for(session, inbound(session, cli, "START").id) == 0
    assert jobs_for(session, inbound(session, cli, "stop calling me").id) == 1
    assert runs(session, a.id) == [] and replies(session, cli) == []
    # a job for a contact who opted out since (STOP then something else) replies nothing
    inbound(session, cli, "STOP")
    [run] = engine.evaluate(session, inbound(session, cli, "why?").id)
    assert (run.status, run.reason) == ("skipped", "opted_out") and replies(session, cli) == []


# ----------------------------------------------------------------------------- triggers


def test_keyword_reply_is_an_ordinary_message_rendered_for_the_contact(session, org, cli):
    a = automation(session, org, actions=[{"type": "reply", "message": "Hi {{contact.name}} from {{attributes.city}}: "
                                                                       "you said {{message.text}}"}])
    msg = inbound(session, cli, "Hello there")
    session.execute(Contact.__table__.update().where(Contact.id == msg.contact_id).values(attributes={"city": "Lyon"}))
    [run] = engine.evaluate(session, msg.id)
    [reply] = replies(session, cli)
    assert (run.status, run.reason, run.reply_message_id, run.contact_id) == ("fired", None, reply.id, msg.contact_id)
    assert run.actions == [{"type": "reply", "status": "done", "detail": None, "message_id": reply.id}]
    assert (reply.to_phone, reply.status, reply.automation_id, reply.idempotency_key) == (
        PHONE, "queued", a.id, engine.reply_key(a.id, msg.id))
    assert reply.text == "Hi Ann from Lyon: you said Hello there"
    shown = service.get_automation(session, SystemPrincipal(org.id), a.id)
    assert shown["fire_count"] == 1 and shown["last_fired_at"] == run.created_at
    queued = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "message.queued")).all()
    assert [e.payload["id"] for e in queued] == [reply.id]
    assert engine.evaluate(session, msg.id) == [] and len(replies(session, cli)) == 1, "a job run twice is a no-op"
    assert engine.evaluate(session, reply.id) == [], "an outbound message never triggers"


def test_a_template_reply_gets_its_variables_from_the_message_and_the_contact(session, org, cli):
    tpl = f.make_template(session, organization_id=org.id, body="Hello {{name}}, about {{topic}}")
    automation(session, org, actions=[{"type": "reply", "template_id": tpl.id,
                                       "variables": {"topic": "'{{message.text}}'"}}])
    engine.evaluate(session, inbound(session, cli, "hello, prices?").id)
    [reply] = replies(session, cli)
    assert (reply.type, reply.template_id, reply.text) == ("template", tpl.id, "Hello Ann, about 'hello, prices?'")
    assert reply.variables == {"name": "Ann", "topic": "'hello, prices?'"}


def test_first_message_ever_and_after_days_of_silence(session, org, cli):
    first = automation(session, org, trigger={"type": "first_message"})
    again = automation(session, org, trigger={"type": "first_message", "after_days": 30}, cooldown_seconds=0)
    m1 = inbound(session, cli, "hi")
    assert {r.automation_id for r in engine.evaluate(session, m1.id)} == {first.id, again.id}
    m2 = inbound(session, cli, "me again")
    assert engine.evaluate(session, m2.id) == [], "not the first message, and no silence"
    # the contact's previous message was 31 days ago
    session.execute(Message.__table__.update().where(Message.id.in_([m1.id, m2.id]))
                    .values(created_at=datetime.now(UTC) - timedelta(days=31)))
    m3 = inbound(session, cli, "back after a month")
    assert [r.automation_id for r in engine.evaluate(session, m3.id)] == [again.id]


def test_outside_hours(session, org, cli):
    closed = automation(session, org, trigger=ALWAYS_CLOSED)
    automation(session, org, trigger=ALWAYS_OPEN)
    assert [r.automation_id for r in engine.evaluate(session, inbound(session, cli, "anyone?").id)] == [closed.id]


def test_a_catastrophic_pattern_fails_its_run_and_the_others_go_on(session, org, cli):
    slow = automation(session, org, trigger={"type": "keyword", "keywords": [r"(x+x+)+y"], "match": "regex"},
                      priority=1)
    fine = automation(session, org, trigger={"type": "keyword", "keywords": ["xxx"]}, priority=2)
    found = engine.evaluate(session, inbound(session, cli, "x" * 5000).id)
    assert [(r.automation_id, r.status, r.reason) for r in found] == [(slow.id, "failed", "regex_timeout"),
                                                                     (fine.id, "fired", None)]
    assert len(replies(session, cli)) == 1


# ----------------------------------------------------------------------------- evaluation rules


def test_priority_order_stop_processing_conditions_and_client(session, org, cli):
    other_cli = f.make_client(session, organization_id=org.id, status="ready")
    later = automation(session, org, priority=200)
    first = automation(session, org, priority=10, stop_processing=True, conditions={"tags_none": ["vip"]})
    elsewhere = automation(session, org, priority=1, client_id=other_cli.id)
    tagged = automation(session, org, priority=20, conditions={"tags_any": ["vip"]})
    found = engine.evaluate(session, inbound(session, cli, "hello").id)
    assert [(r.automation_id, r.status, r.reason) for r in found] == [
        (first.id, "fired", None), (tagged.id, "skipped", "stopped"), (later.id, "skipped", "stopped")]
    assert elsewhere.id not in {r.automation_id for r in runs(session)}
    contact = session.scalars(select(Contact).where(Contact.phone == PHONE)).one()
    contact.tags = ["vip"]
    session.flush()
    found = engine.evaluate(session, inbound(session, cli, "hello").id)
    assert [(r.automation_id, r.status, r.reason) for r in found] == [
        (first.id, "skipped", "conditions"), (tagged.id, "fired", None), (later.id, "fired", None)]


def test_cooldown_per_contact_and_the_replies_per_minute_guard(session, org, cli, override_settings):
    a = automation(session, org, cooldown_seconds=60)
    assert engine.evaluate(session, inbound(session, cli, "hello").id)[0].status == "fired"
    assert [(r.status, r.reason) for r in engine.evaluate(session, inbound(session, cli, "hello again").id)] == [
        ("skipped", "cooldown")]
    assert engine.evaluate(session, inbound(session, cli, "hello", phone="+14155550124").id)[0].status == "fired"
    assert len(replies(session, cli)) == 2 and len(runs(session, a.id)) == 3

    override_settings(AUTOMATION_REPLIES_PER_MINUTE=2)
    b = automation(session, org, cooldown_seconds=0, trigger={"type": "keyword", "keywords": ["again"]})
    c = automation(session, org, cooldown_seconds=0, trigger={"type": "keyword", "keywords": ["again"]})
    found = engine.evaluate(session, inbound(session, cli, "again", phone="+14155550125").id)
    assert [(r.automation_id, r.status) for r in found] == [(b.id, "fired"), (c.id, "fired")]
    found = engine.evaluate(session, inbound(session, cli, "again", phone="+14155550125").id)
    assert [(r.automation_id, r.status, r.reason) for r in found] == [(b.id, "skipped", "reply_limit"),
                                                                     (c.id, "skipped", "reply_limit")]
    tagger = automation(session, org, cooldown_seconds=0, trigger={"type": "keyword", "keywords": ["again"]},
                        actions=[{"type": "tag", "add": ["chatty"]}])
    found = engine.evaluate(session, inbound(session, cli, "again", phone="+14155550125").id)
    assert (found[-1].automation_id, found[-1].status) == (tagger.id, "fired"), "the guard limits replies only"


def test_tag_webhook_and_assign_actions(session, org, cli):
    agent = f.make_user(session, organization_id=org.id, role="agent")
    a = automation(session, org, actions=[{"type": "tag", "add": ["lead", "eu"], "remove": ["cold"]},
                                          {"type": "webhook"}, {"type": "assign", "user_id": agent.id}])
    msg = inbound(session, cli, "hello")
    contact = session.get(Contact, msg.contact_id)
    contact.tags = ["cold", "eu"]
    session.flush()
    [run] = engine.evaluate(session, msg.id)
    assert run.status == "fired" and [x["status"] for x in run.actions] == ["done", "done", "done"]
    session.refresh(contact)
    assert contact.tags == ["eu", "lead"] and contact.assigned_user_id == agent.id
    [event] = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "automation.triggered")).all()
    assert event.payload == {"automation_id": a.id, "message_id": msg.id, "contact_id": contact.id,
                             "client_id": cli.id}
    assert replies(session, cli) == []

    agent.status = "disabled"
    session.flush()
    b = automation(session, org, trigger={"type": "keyword", "keywords": ["assign me"]},
                   actions=[{"type": "assign", "user_id": agent.id}])
    [run] = engine.evaluate(session, inbound(session, cli, "assign me").id)
    assert (run.automation_id, run.status, run.reason) == (b.id, "failed", "actions_failed")


def test_other_organisations_automations_never_run(session, org, cli):
    other = f.make_organization(session)
    automation(session, other, trigger={"type": "keyword", "keywords": [".*"], "match": "regex"})
    mine = automation(session, org)
    assert [r.automation_id for r in engine.evaluate(session, inbound(session, cli, "hello").id)] == [mine.id]
    assert {r.organization_id for r in runs(session)} == {org.id}
