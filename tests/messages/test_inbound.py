"""Inbound messages and opt-out keywords (app/messages/inbound.py), rolled back."""
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

import jobs  # noqa: F401
from app.messages.inbound import receive_inbound
from app.models import Contact, Message, OrganizationSettings, WebhookEvent
from config import settings
from tests import factories as f
from tests.auth_helpers import api_key_headers

PHONE = "+14155550123"


@pytest.fixture
def cli(session):
    return f.make_client(session, status="ready", phone="+14155550100")


def inbound(session, cli, text, ext=None, phone=PHONE, **extra):
    payload = {"external_id": ext or f"in-{text}-{datetime.now().timestamp()}", "from_phone": phone, "type": "text",
               "text": text, "media": None, "timestamp": datetime.now(UTC).isoformat(),
               "contact_name": "Ann", **extra}
    return receive_inbound(session, cli.id, payload)


def events(session, kind):
    return session.scalars(select(WebhookEvent).where(WebhookEvent.type == kind).order_by(WebhookEvent.created_at)).all()


def confirmations(session, cli):
    return session.scalars(select(Message).where(Message.client_id == cli.id, Message.direction == "outbound")).all()


def test_inbound_is_stored_once_with_its_contact(session, cli):
    msg = inbound(session, cli, "Hello there", ext="wamid.1")
    assert (msg.direction, msg.from_phone, msg.to_phone, msg.text, msg.status) == (
        "inbound", PHONE, "+14155550100", "Hello there", "received")
    contact = session.get(Contact, msg.contact_id)
    assert contact.phone == PHONE and contact.name == "Ann" and contact.last_inbound_at is not None
    assert inbound(session, cli, "Hello there", ext="wamid.1") is None  # the transport reported it twice
    assert session.scalar(select(func.count()).select_from(Message)) == 1
    received = events(session, "message.received")
    assert len(received) == 1 and received[0].payload["from"] == PHONE and received[0].payload["direction"] == "inbound"
    second = inbound(session, cli, "again", ext="wamid.2")
    assert second.contact_id == contact.id


def test_inbound_media_and_other_types(session, cli):
    msg = inbound(session, cli, None, type="sticker", media={"mime_type": "image/webp", "caption": "lol"})
    assert msg.type == "sticker" and msg.caption == "lol" and msg.media_id  # the medium is fetched by a job
    msg = inbound(session, cli, None, type="ptt", ext="wamid.ptt")
    assert msg.type == "text" and msg.text == "[voice]"  # a media kind without its media
    msg = inbound(session, cli, None, type="location")
    assert msg.type == "text" and msg.text == "[location]"


def test_stop_opts_out_with_one_confirmation_and_start_reverses_it(session, client, cli):
    headers = api_key_headers(session, cli.organization_id, "admin")
    inbound(session, cli, "  stop! ")
    contact = session.scalars(select(Contact).where(Contact.phone == PHONE)).one()
    assert contact.opted_out and contact.opted_out_at
    assert [e.payload["id"] for e in events(session, "contact.opted_out")] == [contact.id]
    sent = confirmations(session, cli)
    assert len(sent) == 1 and sent[0].text == settings.OPT_OUT_CONFIRMATION and sent[0].to_phone == PHONE
    inbound(session, cli, "STOP")  # already out: no second confirmation, no second event
    inbound(session, cli, "Unsubscribe")
    assert len(confirmations(session, cli)) == 1 and len(events(session, "contact.opted_out")) == 1
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": PHONE, "message": "promo"}, headers=headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "contact_opted_out"
    inbound(session, cli, "Start")
    session.refresh(contact)
    assert not contact.opted_out and contact.opted_in_at
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": PHONE, "message": "welcome back"}, headers=headers)
    assert r.status_code == 202


@pytest.mark.parametrize("word", ["STOP", "stop", "UNSUBSCRIBE", "unsubscribe", "CANCEL", "cancel", "BAJA",
                                  "arrêt", "Stopp", "abmelden", "Sair", "Quit."])
def test_language_variants(session, cli, word):
    inbound(session, cli, word)
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is True
    assert len(confirmations(session, cli)) == 1 and len(events(session, "contact.opted_out")) == 1


@pytest.mark.parametrize("word", ["ALTA", "subscribe", "Unstop"])
def test_opt_in_language_variants(session, cli, word):
    inbound(session, cli, "stop")
    inbound(session, cli, word)
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is False


def test_words_that_are_not_keywords_change_nothing(session, cli):
    for text in ("please stop calling me at night", "stopwatch", "start", "canceled my order"):
        inbound(session, cli, text)
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is False
    assert confirmations(session, cli) == [] and events(session, "contact.opted_out") == []


def test_keywords_are_the_organisations(session, cli):
    f.make_organization_settings(session, organization_id=cli.organization_id,
                                 opt_out_keywords={"en": ["ENOUGH"]}, opt_in_keywords={"en": ["MORE"]})
    inbound(session, cli, "stop")
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is False
    inbound(session, cli, "enough")
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is True
    inbound(session, cli, "more")
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is False


def test_an_organisation_without_settings_gets_the_defaults(session, cli):
    assert session.get(OrganizationSettings, cli.organization_id) is None
    inbound(session, cli, "stop please")  # not a keyword on its own: nothing happens
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is False
    inbound(session, cli, "STOPALL")
    assert session.scalars(select(Contact.opted_out).where(Contact.phone == PHONE)).one() is True
    assert "en" in session.get(OrganizationSettings, cli.organization_id).opt_out_keywords


def test_inbound_for_a_deleted_client_or_a_bad_number_is_dropped(session, cli):
    assert inbound(session, cli, "hi", phone="12345") is None
    cli.deleted_at = datetime.now(UTC)
    session.flush()
    assert inbound(session, cli, "hi") is None
    assert session.scalar(select(func.count()).select_from(Message)) == 0
