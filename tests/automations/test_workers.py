"""Automations end to end: real worker processes (default, messages, webhooks), real Postgres and
Redis, the sim transport. A simulated contact writes (POST /api/clients/{id}/sim/inbound); what is
checked is what a user sees: the reply in the messages list and on the simulated network, the runs,
the contact, the webhook delivery. Negative outcomes are asserted once a later, positive one of the
same evaluation (one job, one transaction) is visible."""
import dramatiq
import pytest
from sqlalchemy import select

import jobs  # noqa: F401
from app.automations import engine
from app.models import AutomationRun, Contact, Message
from app.security.principal import SystemPrincipal
from app.webhooks import service as webhooks
from config import settings
from tests import factories as f
from tests.auth_helpers import api_key_headers
from tests.procs import wait_for

pytestmark = pytest.mark.workers
ANN, BOB = "+14155550123", "+14155550124"
FAST = {"pacing": False, "deliver_after_ms": 100, "read_after_ms": 200}
ALWAYS_CLOSED = {"type": "outside_hours", "hours": {"tz": "UTC", "days": {}}}


def setup(committed, **config):
    """A ready sim client of a new organisation, and admin API key headers of it."""
    org = f.make_organization(committed)
    cli = f.make_client(committed, organization_id=org.id, status="ready", phone="+14155550100",
                        config={**FAST, **config})
    headers = api_key_headers(committed, org, "admin")
    committed.commit()
    return org, cli, headers


def add(client, headers, trigger, actions, **fields) -> str:
    r = client.post("/api/automations", json={"name": "a", "trigger": trigger, "actions": actions, **fields},
                    headers=headers)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def write(client, headers, cli, phone, text) -> None:
    r = client.post(f"/api/clients/{cli.id}/sim/inbound", json={"from": phone, "text": text}, headers=headers)
    assert r.status_code == 202, r.get_json()


def runs(committed, automation_id) -> list[AutomationRun]:
    committed.rollback()  # a fresh snapshot
    return committed.scalars(select(AutomationRun).where(AutomationRun.automation_id == automation_id)
                             .order_by(AutomationRun.id)).all()


def replies(committed, cli, phone=None) -> list[Message]:
    committed.rollback()
    stmt = select(Message).where(Message.client_id == cli.id, Message.direction == "outbound",
                                 Message.automation_id.isnot(None))
    if phone:
        stmt = stmt.where(Message.to_phone == phone)
    return committed.scalars(stmt.order_by(Message.id)).all()


def outbound(committed, cli) -> list[Message]:
    committed.rollback()
    return committed.scalars(select(Message).where(Message.client_id == cli.id, Message.direction == "outbound")
                             .order_by(Message.id)).all()


def inbound_of(committed, cli, phone) -> list[Message]:
    committed.rollback()
    return committed.scalars(select(Message).where(Message.client_id == cli.id, Message.direction == "inbound",
                                                   Message.from_phone == phone).order_by(Message.id)).all()


def network(client, headers, cli) -> dict:
    return client.get(f"/api/clients/{cli.id}/sim/network", headers=headers).get_json()


def test_every_action_runs_and_the_reply_goes_out_over_sim_once(committed, committed_client, run_pool, receiver,
                                                                allow_private):
    client = committed_client
    org, cli, headers = setup(committed)
    agent = f.make_user(committed, organization_id=org.id, role="agent")
    webhooks.create_webhook(committed, SystemPrincipal(org.id), url=receiver.url("/hook"),
                            events=["automation.triggered"])
    committed.commit()
    aid = add(client, headers, {"type": "keyword", "keywords": ["price"]}, [
        {"type": "reply", "message": "Hi {{contact.name}}, our prices: {{message.text}}?"},
        {"type": "tag", "add": ["lead"]}, {"type": "webhook"}, {"type": "assign", "user_id": agent.id}])
    for pool in ("default", "messages", "webhooks"):
        run_pool(pool, WEBHOOK_ALLOW_PRIVATE="true")

    write(client, headers, cli, ANN, "price list")
    wait_for(lambda: [m.status for m in replies(committed, cli)] in (["sent"], ["delivered"], ["read"]),
             timeout=40, message="the automatic reply sent")
    [reply] = replies(committed, cli)
    [trigger] = inbound_of(committed, cli, ANN)
    assert (reply.to_phone, reply.text, reply.automation_id) == (ANN, "Hi , our prices: price list?", aid)
    assert network(client, headers, cli)["received"] == 1
    contact = committed.scalars(select(Contact).where(Contact.phone == ANN, Contact.organization_id == org.id)).one()
    assert contact.tags == ["lead"] and contact.assigned_user_id == agent.id
    [run] = runs(committed, aid)
    assert (run.status, run.trigger_message_id, run.reply_message_id) == ("fired", trigger.id, reply.id)
    [hook] = receiver.wait_for(1, "/hook", timeout=40)
    body = hook.json
    assert body["type"] == "automation.triggered" and body["data"] == {
        "automation_id": aid, "message_id": trigger.id, "contact_id": contact.id, "client_id": cli.id}
    shown = client.get(f"/api/automations/{aid}", headers=headers).get_json()
    assert shown["fire_count"] == 1 and shown["last_fired_at"]
    listed = client.get(f"/api/automations/{aid}/runs", headers=headers).get_json()["items"]
    assert [(r["status"], r["reply_message_id"]) for r in listed] == [("fired", reply.id)]

    # the job again: redelivered three times by the broker, and run once more here
    job = dramatiq.get_broker().get_actor("automations.on_inbound")
    for _ in range(3):
        job.send(trigger.id)
    assert engine.on_inbound(trigger.id) == []
    write(client, headers, cli, BOB, "price?")  # a later message, to know the workers went on
    wait_for(lambda: len(replies(committed, cli, BOB)) == 1, timeout=40, message="the reply to the second contact")
    wait_for(lambda: network(client, headers, cli)["received"] == 2, timeout=40, message="the second reply sent")
    assert len(replies(committed, cli, ANN)) == 1 and len(runs(committed, aid)) == 2
    assert network(client, headers, cli)["duplicates"] == 0


def test_first_message_outside_hours_and_a_disabled_automation(committed, committed_client, run_pool):
    client = committed_client
    org, cli, headers = setup(committed)
    welcome = add(client, headers, {"type": "first_message"}, [{"type": "reply", "message": "Welcome!"}], priority=1)
    closed = add(client, headers, ALWAYS_CLOSED, [{"type": "reply", "message": "We are closed."}], cooldown_seconds=0)
    disabled = add(client, headers, {"type": "keyword", "keywords": ["hi"]},
                   [{"type": "reply", "message": "never"}], enabled=False, priority=0)
    run_pool("default")
    run_pool("messages")

    write(client, headers, cli, ANN, "hi")
    wait_for(lambda: sorted(m.text for m in replies(committed, cli)) == ["We are closed.", "Welcome!"], timeout=40,
             message="the welcome and the closed notice")
    write(client, headers, cli, ANN, "hi again")
    wait_for(lambda: len(runs(committed, closed)) == 2, timeout=40, message="the second message evaluated")
    assert [m.text for m in replies(committed, cli)].count("Welcome!") == 1, "welcome only on the first message"
    assert [r.status for r in runs(committed, welcome)] == ["fired"]
    assert [r.status for r in runs(committed, closed)] == ["fired", "fired"]
    assert runs(committed, disabled) == []
    wait_for(lambda: network(client, headers, cli)["received"] == 3, timeout=40, message="three replies sent")


def test_two_automations_and_a_bot_that_answers_everything_get_one_reply_each_per_cooldown(
        committed, committed_client, run_pool):
    client = committed_client
    # the simulated contact answers every message it gets, 100 ms later: a bot
    org, cli, headers = setup(committed, reply_rate=1.0, reply_after_ms=100)
    first = add(client, headers, {"type": "keyword", "keywords": ["hello"]},
                [{"type": "reply", "message": "hello from us"}], cooldown_seconds=3600)
    anything = add(client, headers, {"type": "keyword", "keywords": ["."], "match": "regex"},
                   [{"type": "reply", "message": "we got your message"}], cooldown_seconds=3600)
    run_pool("default")
    run_pool("messages")

    write(client, headers, cli, ANN, "hello")
    # our two replies come back from the bot ("Thanks, got it: ..."): both automations are cooling down
    wait_for(lambda: [r.reason for r in runs(committed, anything)] == [None, "cooldown", "cooldown"]
             and [r.reason for r in runs(committed, first)] == [None, "cooldown"],
             timeout=60, message="the bot's answers skipped for the cooldown")
    assert sorted(m.text for m in replies(committed, cli)) == ["hello from us", "we got your message"]
    assert [m.text for m in inbound_of(committed, cli, ANN)][0] == "hello"
    assert len(inbound_of(committed, cli, ANN)) == 3
    wait_for(lambda: network(client, headers, cli)["received"] == 2, timeout=30, message="both replies sent")


def test_stop_comes_first_a_catastrophic_pattern_does_not_hang_and_tenants_are_apart(committed, committed_client,
                                                                                     run_pool):
    client = committed_client
    org, cli, headers = setup(committed)
    other, other_cli, other_headers = setup(committed)
    slow = add(client, headers, {"type": "keyword", "keywords": [r"(x+x+)+y"], "match": "regex"},
               [{"type": "reply", "message": "slow"}], priority=1)
    catch_all = add(client, headers, {"type": "keyword", "keywords": ["x", "stop"]},
                    [{"type": "reply", "message": "got it"}], priority=2, cooldown_seconds=0)
    theirs = add(client, other_headers, {"type": "keyword", "keywords": [".*"], "match": "regex"},
                 [{"type": "reply", "message": "theirs"}])
    run_pool("default")
    run_pool("messages")

    write(client, headers, cli, ANN, "STOP")
    wait_for(lambda: [m.text for m in outbound(committed, cli)] == [settings.OPT_OUT_CONFIRMATION], timeout=40,
             message="the opt-out confirmation")
    write(client, headers, cli, BOB, "x" * 4000)
    wait_for(lambda: [m.text for m in replies(committed, cli, BOB)] == ["got it"], timeout=40,
             message="the reply of the automation after the slow pattern")
    [stop] = inbound_of(committed, cli, ANN)
    assert [(r.status, r.reason) for r in runs(committed, slow)] == [("failed", "regex_timeout")]
    assert [r.trigger_message_id for r in runs(committed, catch_all)] == [inbound_of(committed, cli, BOB)[0].id]
    assert stop.id not in {r.trigger_message_id for r in runs(committed, slow) + runs(committed, catch_all)}
    assert replies(committed, cli, ANN) == []
    assert runs(committed, theirs) == [] and replies(committed, other_cli) == []
    assert client.get(f"/api/automations/{theirs}", headers=headers).status_code == 404
