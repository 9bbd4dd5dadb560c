"""Recording a send that went out: one autocommitted statement while nobody takes ``message.sent``,
a transaction (with the deliveries) when someone does; the same rows either way, and neither is
lost to a database blip."""
from __future__ import annotations

from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.contacts.models import Contact
from app.inbox.models import TransportEvent
from app.messages import dispatch, recording
from app.messages.models import Message, MessageStatusHistory
from app.transports.sim import SimTransport
from app.webhooks.models import WebhookDelivery, WebhookEvent
from tests import factories as f
from tests.messages.test_routes import queue_one


def blip() -> OperationalError:
    return OperationalError("UPDATE messages", {}, psycopg.OperationalError("server closed the connection"))


def sim_transport(session, client) -> SimTransport:
    from app.clients.info import load_client_info

    return SimTransport(load_client_info(session, client.id), dispatch.sink)


def recorded(session, msg) -> dict:
    """What a user (and the inbox) sees of a sent message."""
    session.expire_all()
    row = session.get(Message, msg.id)
    return {
        "status": row.status, "external_id": row.external_id, "sent": row.sent_at is not None,
        "history": list(session.scalars(select(MessageStatusHistory.status)
                                        .where(MessageStatusHistory.message_id == msg.id)
                                        .order_by(MessageStatusHistory.id))),
        "sent_events": [e.payload["id"] for e in session.scalars(
            select(WebhookEvent).where(WebhookEvent.type == "message.sent",
                                       WebhookEvent.organization_id == row.organization_id))
            if e.payload["id"] == msg.id and e.payload["status"] == "sent"],
        "reports": sorted(r.payload["status"] for r in session.scalars(
            select(TransportEvent).where(TransportEvent.client_id == row.client_id, TransportEvent.kind == "ack"))
            if r.payload.get("message_id") == msg.id),
        "contact_last_outbound": session.get(Contact, row.contact_id).last_outbound_at is not None,
    }


@pytest.fixture
def sim_client(session, org):
    return f.make_client(session, organization_id=org.id, status="ready", transport="sim",
                         config={"pacing": False, "deliver_after_ms": 60_000, "read_after_ms": 120_000})


@pytest.mark.parametrize("subscribed", [False, True], ids=["nobody-listens", "an-endpoint-listens"])
def test_both_ways_of_recording_a_send_write_the_same(session, sim_client, subscribed):
    if subscribed:
        f.make_webhook(session, organization_id=sim_client.organization_id, events=["message.sent"])
    msg = queue_one(session, sim_client)
    session.commit()
    assert dispatch.perform_send(msg.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    seen = recorded(session, msg)
    assert seen == {"status": "sent", "external_id": seen["external_id"], "sent": True,
                    "history": ["queued", "sending", "sent"], "sent_events": [msg.id],
                    "reports": ["delivered", "read"], "contact_last_outbound": True}
    assert seen["external_id"].startswith("sim_")
    deliveries = session.scalars(select(WebhookDelivery).join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                                 .where(WebhookEvent.type == "message.sent")).all()
    assert len(deliveries) == (1 if subscribed else 0)


def test_an_endpoint_created_after_a_send_gets_the_next_sends_event(session, sim_client):
    first = queue_one(session, sim_client)
    session.commit()
    assert dispatch.perform_send(first.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    hook = f.make_webhook(session, organization_id=sim_client.organization_id, events=["message.sent"])
    second = queue_one(session, sim_client)
    session.commit()
    assert dispatch.perform_send(second.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    [delivery] = session.scalars(select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)).all()
    assert session.get(WebhookEvent, delivery.event_id).payload["id"] == second.id


def test_the_one_statement_record_outlives_a_database_blip(session, sim_client, monkeypatch):
    msg = queue_one(session, sim_client)
    session.commit()
    failures = {"left": 2}
    real = recording.one_statement

    @contextmanager
    def flaky():
        if failures["left"]:
            failures["left"] -= 1
            raise blip()
        with real() as conn:
            yield conn

    monkeypatch.setattr(recording, "one_statement", flaky)
    assert dispatch.perform_send(msg.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    assert failures["left"] == 0
    assert recorded(session, msg)["history"] == ["queued", "sending", "sent"]
    assert recorded(session, msg)["reports"] == ["delivered", "read"], "the reports once, not once per try"


def test_the_transaction_record_outlives_a_database_blip(session, sim_client, monkeypatch):
    f.make_webhook(session, organization_id=sim_client.organization_id, events=["*"])
    msg = queue_one(session, sim_client)
    session.commit()
    failures = {"left": 2}
    real = recording.record_sent

    def flaky(s, message_id, external_id, **kwargs):
        if failures["left"]:
            failures["left"] -= 1
            raise blip()
        return real(s, message_id, external_id, **kwargs)

    monkeypatch.setattr(dispatch, "record_sent", flaky)
    assert dispatch.perform_send(msg.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    assert failures["left"] == 0
    seen = recorded(session, msg)
    assert (seen["status"], seen["history"], seen["reports"]) == ("sent", ["queued", "sending", "sent"],
                                                                   ["delivered", "read"])


def test_once_its_endpoint_is_gone_an_organisation_is_recorded_in_one_statement_again(session, sim_client, monkeypatch):
    hook = f.make_webhook(session, organization_id=sim_client.organization_id, events=["message.sent"])
    first = queue_one(session, sim_client)
    session.commit()
    assert dispatch.perform_send(first.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    hook.enabled = False
    second, third = queue_one(session, sim_client), queue_one(session, sim_client)
    session.commit()
    ways = []
    real_alone, real_tx = recording.record_sent_alone, recording.record_sent

    def alone(*args, **kwargs):
        done = real_alone(*args, **kwargs)
        ways.append("one statement" if done else "declined")
        return done

    monkeypatch.setattr(dispatch, "record_sent_alone", alone)
    monkeypatch.setattr(dispatch, "record_sent", lambda *a, **k: ways.append("transaction") or real_tx(*a, **k))
    for msg in (second, third):
        assert dispatch.perform_send(msg.id, lambda cid: sim_transport(session, sim_client)) == "sent"
    assert ways == ["declined", "transaction", "one statement"], \
        "the organisation that had an endpoint goes back to one statement once it has none"
