"""Campaigns through the API and the workers' functions, in a rolled-back transaction: validation,
audience, fan-out (idempotent per recipient), skips, send windows, frequency caps, pause / resume /
cancel, the scheduler's start, completion, rebalancing, ETA, test sends and progress. The same
with real worker processes (timing, crashes) is tests/campaigns/test_workers.py."""
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text, update

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.campaigns import sending
from app.db import utcnow
from app.messages import dispatch
from app.models import Campaign, CampaignRecipient, Message, WebhookEvent
from tests import factories as f

TPL = {"name": "promo", "category": "marketing", "body": "Hi {{name}}, {{offer}} in {{attributes.city}}!"}


@pytest.fixture
def ready(session, org):
    """Two ready sim clients of ``org``, paced at one send a second."""
    return [f.make_client(session, organization_id=org.id, status="ready", phone=f"+1415555010{i}",
                          min_gap_ms=1000, max_gap_ms=1000) for i in (1, 2)]


def people(session, org, n: int, **kw) -> list:
    return [f.make_contact(session, organization_id=org.id, phone=f"+1415556{i:04d}", name=f"P{i}",
                           attributes={"city": "Porto"}, **kw) for i in range(n)]


def template(client, headers) -> str:
    r = client.post("/api/templates", json=TPL, headers=headers)
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def create(client, headers, **body) -> dict:
    r = client.post("/api/campaigns", json=body, headers=headers)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def act(client, headers, campaign_id: str, verb: str, code: int = 200) -> dict:
    r = client.post(f"/api/campaigns/{campaign_id}/{verb}", headers=headers)
    assert r.status_code == code, r.get_json()
    return r.get_json()


def get(client, headers, campaign_id: str) -> dict:
    return client.get(f"/api/campaigns/{campaign_id}", headers=headers).get_json()


def messages_of(session, campaign_id: str) -> list[Message]:
    session.expire_all()
    return session.scalars(select(Message).where(Message.campaign_id == campaign_id).order_by(Message.id)).all()


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("change, field", [
    ({"client_ids": ["cli_nope"]}, "client_ids"),
    ({"template_id": None}, "message"),
    ({"message": "also text"}, "message"),
    ({"variables": {}}, "variables"),
    ({"audience": {}}, "audience"),
    ({"audience": {"list_ids": ["lst_nope"]}}, "audience.list_ids"),
    ({"audience": {"all": True, "attributes": {"city": {"nested": 1}}}}, "audience.attributes.city"),
    ({"send_window": {"start": "20:00", "end": "09:00"}}, "send_window"),
    ({"send_window": {"start": "09:00", "end": "20:00", "timezone": "Mars/Olympus"}}, "send_window"),
    ({"frequency_cap": {"max": 0, "hours": 24}}, "frequency_cap"),
])
def test_bad_campaigns_are_422_naming_the_field(client, admin_key_headers, ready, change, field):
    body = {"name": "Promo", "client_ids": [ready[0].id], "template_id": template(client, admin_key_headers),
            "variables": {"offer": "2 for 1"}, "audience": {"all": True}, **change}
    r = client.post("/api/campaigns", json=body, headers=admin_key_headers)
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["error"]["details"], r.get_json()


def test_a_template_variable_that_no_contact_field_gives_must_be_given(client, admin_key_headers, ready):
    r = client.post("/api/campaigns", headers=admin_key_headers, json={
        "name": "Promo", "client_ids": [ready[0].id], "template_id": template(client, admin_key_headers),
        "audience": {"all": True}})
    assert r.status_code == 422 and "offer" in r.get_json()["error"]["details"]["variables"][0]


def test_nothing_to_write_to_or_an_unapproved_template_cannot_start(client, session, org, admin_key_headers, ready):
    tpl = template(client, admin_key_headers)
    c = create(client, admin_key_headers, name="Nobody", client_ids=[ready[0].id], template_id=tpl,
               variables={"offer": "x"}, audience={"tags": ["nobody-has-this"]})
    r = client.post(f"/api/campaigns/{c['id']}/start", headers=admin_key_headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "campaign_not_sendable"
    assert "audience" in r.get_json()["error"]["details"]
    people(session, org, 1, tags=["vip"])
    reviewed = f.make_client(session, organization_id=org.id, status="ready", config={"template_review": {}})
    f.make_template_approval(session, template_id=tpl, client_id=reviewed.id, status="pending")
    c = create(client, admin_key_headers, name="Unapproved", client_ids=[ready[0].id, reviewed.id], template_id=tpl,
               variables={"offer": "x"}, audience={"tags": ["vip"]})
    r = client.post(f"/api/campaigns/{c['id']}/start", headers=admin_key_headers)
    assert r.status_code == 422 and reviewed.id in r.get_json()["error"]["details"]["template_id"][0]


def test_viewers_read_campaigns_agents_cannot_write_and_others_are_404(client, session, org, admin_key_headers, ready):
    from tests.auth_helpers import api_key_headers

    c = create(client, admin_key_headers, name="A", client_ids=[ready[0].id], message="Hi", audience={"all": True})
    viewer = api_key_headers(session, org, role="viewer")
    agent = api_key_headers(session, org, role="agent")
    assert client.get(f"/api/campaigns/{c['id']}", headers=viewer).status_code == 200
    assert client.post(f"/api/campaigns/{c['id']}/start", headers=agent).status_code == 403
    other = f.make_campaign(session)
    assert client.get(f"/api/campaigns/{other.id}", headers=admin_key_headers).status_code == 404
    assert client.post(f"/api/campaigns/{other.id}/pause", headers=admin_key_headers).status_code == 404


# ----------------------------------------------------------------------------- fan-out

def test_fan_out_writes_one_message_per_recipient_skips_opted_out_and_spreads_over_clients(
        client, session, org, admin_key_headers, ready):
    contacts = people(session, org, 5, tags=["vip"])
    opted = f.make_contact(session, organization_id=org.id, phone="+14155569999", tags=["vip"], opted_out=True)
    f.make_contact(session, organization_id=org.id, phone="+14155568888", tags=["other"])
    tpl = template(client, admin_key_headers)
    c = create(client, admin_key_headers, name="Promo", client_ids=[r.id for r in ready], template_id=tpl,
               variables={"offer": "2 for 1"}, audience={"tags": ["vip"]})
    assert c["status"] == "draft" and c["progress"]["total"] == 0
    estimate = client.post(f"/api/campaigns/{c['id']}/estimate", headers=admin_key_headers).get_json()
    assert estimate["recipients"] == 5 and estimate["skipped"] == 1
    assert act(client, admin_key_headers, c["id"], "start")["status"] == "running"
    assert sending.run_fan_out(c["id"]) == 6
    msgs = messages_of(session, c["id"])
    assert len(msgs) == 5 and {m.status for m in msgs} == {"queued"}
    assert msgs[0].text == "Hi P0, 2 for 1 in Porto!" or any(m.text == "Hi P0, 2 for 1 in Porto!" for m in msgs)
    assert sorted(m.contact_id for m in msgs) == sorted(x.id for x in contacts)
    assert {m.client_id for m in msgs} == {ready[0].id, ready[1].id}  # spread over both
    got = get(client, admin_key_headers, c["id"])
    assert got["progress"] == {"total": 6, "queued": 5, "sent": 0, "delivered": 0, "read": 0, "failed": 0,
                               "skipped": 1, "cancelled": 0, "replied": 0}
    assert got["eta"]["recipients"] == 5 and got["eta"]["seconds"] > 0
    skipped = client.get(f"/api/campaigns/{c['id']}/recipients?status=skipped", headers=admin_key_headers).get_json()
    assert [(x["contact_id"], x["reason"]) for x in skipped["items"]] == [(opted.id, "opted_out")]
    queued = session.scalar(select(func.count()).select_from(WebhookEvent).where(WebhookEvent.type == "message.queued"))
    assert queued == 5  # every campaign message is an ordinary one, with its events


def test_a_plain_message_takes_the_contacts_fields_and_the_campaigns_variables(client, session, org,
                                                                                admin_key_headers, ready):
    a, = people(session, org, 1, tags=["vip"])
    nameless = f.make_contact(session, organization_id=org.id, phone="+14155561111", tags=["vip"], name=None)
    r = client.post("/api/campaigns", headers=admin_key_headers, json={
        "name": "Plain", "client_ids": [ready[0].id], "message": "Hi {{name}}, {{offer}}", "audience": {"tags": ["vip"]}})
    assert r.status_code == 422 and "offer" in r.get_json()["error"]["details"]["variables"][0]
    c = create(client, admin_key_headers, name="Plain", client_ids=[ready[0].id], message="Hi {{name}}, {{offer}}",
               variables={"offer": "see you soon"}, audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    (m,) = messages_of(session, c["id"])
    assert m.contact_id == a.id and m.text == "Hi P0, see you soon"
    skipped = session.scalars(select(CampaignRecipient).where(CampaignRecipient.contact_id == nameless.id)).one()
    assert (skipped.status, skipped.reason) == ("skipped", "missing_variables: name")


def test_a_repeated_or_resumed_fan_out_never_writes_a_second_message(client, session, org, admin_key_headers, ready,
                                                                     override_settings):
    people(session, org, 7, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    override_settings(CAMPAIGN_FANOUT_CHUNK=3)
    assert sending.run_fan_out(c["id"], max_chunks=1) == 3  # a fan-out that stopped after one chunk
    assert len(messages_of(session, c["id"])) == 3
    sending.run_fan_out(c["id"])  # goes on from its cursor
    assert len(messages_of(session, c["id"])) == 7
    # the worst case: the cursor lost, everything walked again
    session.execute(update(Campaign).where(Campaign.id == c["id"]).values(fanout_cursor=None, fanout_done_at=None))
    sending.run_fan_out(c["id"])
    assert len(messages_of(session, c["id"])) == 7
    assert get(client, admin_key_headers, c["id"])["progress"]["total"] == 7


def test_frequency_cap_skips_contacts_who_had_a_campaign_message_lately(client, session, org, admin_key_headers,
                                                                        ready):
    a, b = people(session, org, 2, tags=["vip"])
    earlier = f.make_campaign(session, organization_id=org.id, status="completed")
    f.make_message(session, organization_id=org.id, client_id=ready[0].id, contact_id=a.id, to_phone=a.phone,
                   campaign_id=earlier.id, status="delivered", created_at=utcnow() - timedelta(hours=3))
    c = create(client, admin_key_headers, name="Capped", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]}, frequency_cap={"max": 1, "hours": 24})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    recipients = {r.contact_id: (r.status, r.reason) for r in session.scalars(
        select(CampaignRecipient).where(CampaignRecipient.campaign_id == c["id"]))}
    assert recipients == {a.id: ("skipped", "frequency_cap"), b.id: ("queued", None)}


def test_send_window_holds_messages_until_it_opens_in_the_recipients_time_zone(client, session, org,
                                                                               admin_key_headers, ready):
    from zoneinfo import ZoneInfo

    from app.campaigns.windows import DAYS

    lisbon = f.make_contact(session, organization_id=org.id, phone="+351912345678", tags=["w"],
                            attributes={"timezone": "Europe/Lisbon"})
    tokyo = f.make_contact(session, organization_id=org.id, phone="+819012345678", tags=["w"],
                           attributes={"timezone": "Asia/Tokyo"})
    plain = f.make_contact(session, organization_id=org.id, phone="+14155551234", tags=["w"])
    # open only on the weekday three days from now, 10:00-11:00: closed now wherever one is
    day = (utcnow() + timedelta(days=3)).date()
    c = create(client, admin_key_headers, name="Windowed", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["w"]}, send_window={"start": "10:00", "end": "11:00", "days": [DAYS[day.weekday()]],
                                                      "timezone": "America/New_York"})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    at = {m.contact_id: m.scheduled_at for m in messages_of(session, c["id"])}

    def opening(tz: str) -> datetime:
        return datetime(day.year, day.month, day.day, 10, 0, tzinfo=ZoneInfo(tz)).astimezone(UTC)

    assert at[lisbon.id] == opening("Europe/Lisbon")
    assert at[tokyo.id] == opening("Asia/Tokyo") or at[tokyo.id] == opening("Asia/Tokyo") + timedelta(days=7)
    assert at[plain.id] == opening("America/New_York")  # the window's own zone
    # a job that comes while the window is closed waits for it, without a sending slot
    assert dispatch.run_send_job(next(m.id for m in messages_of(session, c["id"]))) == "waiting"


def test_pause_holds_resume_goes_on_and_cancel_cancels_what_has_not_left(client, session, org, admin_key_headers,
                                                                          ready):
    people(session, org, 4, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    msgs = messages_of(session, c["id"])
    assert all(m.scheduled_for is not None for m in msgs)
    assert act(client, admin_key_headers, c["id"], "pause")["status"] == "paused"
    assert dispatch.run_send_job(msgs[0].id) == "held"
    assert sending.run_hold(c["id"]) == 4
    assert all(m.scheduled_for is None and m.status == "queued" for m in messages_of(session, c["id"]))
    act(client, admin_key_headers, c["id"], "pause", 409)
    assert act(client, admin_key_headers, c["id"], "resume")["status"] == "running"
    assert sending.run_resume(c["id"]) == 4
    assert all(m.scheduled_for is not None for m in messages_of(session, c["id"]))
    # one message is sent; then the campaign is cancelled: the rest is cancelled, the sent one stays
    session.execute(update(Message).where(Message.id == msgs[0].id).values(status="sent", sent_at=utcnow()))
    assert act(client, admin_key_headers, c["id"], "cancel")["status"] == "cancelled"
    assert sending.run_cancel_rest(c["id"]) == 3
    assert [m.status for m in messages_of(session, c["id"])] == ["sent", "cancelled", "cancelled", "cancelled"]
    p = get(client, admin_key_headers, c["id"])["progress"]
    assert (p["sent"], p["cancelled"], p["queued"]) == (1, 3, 0)
    events = [e.type for e in session.scalars(select(WebhookEvent).where(WebhookEvent.type.like("campaign.%"))
                                              .order_by(WebhookEvent.id))]
    assert events == ["campaign.started", "campaign.paused", "campaign.started", "campaign.cancelled"]


def test_a_paused_campaigns_message_cannot_be_claimed_even_by_a_job_already_past_its_checks(
        client, session, org, admin_key_headers, ready):
    people(session, org, 1, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    (m,) = messages_of(session, c["id"])
    session.execute(update(Campaign).where(Campaign.id == c["id"]).values(status="paused"))
    claimed = session.execute(dispatch.CLAIM, {"ids": [m.id], "at": utcnow()}).first()
    assert claimed is None


def test_the_scheduler_starts_a_due_campaign_once(client, session, org, admin_key_headers, ready):
    people(session, org, 2, tags=["vip"])
    at = utcnow() + timedelta(hours=1)
    c = create(client, admin_key_headers, name="Later", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]}, scheduled_at=at.isoformat())
    s = act(client, admin_key_headers, c["id"], "start")
    assert s["status"] == "scheduled" and s["eta"]["finishes_at"] > at.isoformat()
    assert sending.start_due(session) == []  # not yet
    session.execute(update(Campaign).where(Campaign.id == c["id"]).values(scheduled_at=utcnow() - timedelta(seconds=1)))
    assert sending.start_due(session) == [c["id"]]
    assert sending.start_due(session) == []  # exactly once
    assert get(client, admin_key_headers, c["id"])["status"] == "running"


def test_a_campaign_completes_when_every_recipient_has_left_and_counts_replies(client, session, org,
                                                                               admin_key_headers, ready):
    a, b = people(session, org, 2, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    m1, m2 = messages_of(session, c["id"])
    session.execute(update(Message).where(Message.id == m1.id).values(status="read"))
    assert sending.complete_finished(session) == []  # one still queued
    session.execute(update(Message).where(Message.id == m2.id).values(status="failed"))
    from app.campaigns.replies import record_reply

    record_reply(session, org.id, m1.contact_id)
    record_reply(session, org.id, m1.contact_id)  # counted once
    assert sending.complete_finished(session) == [c["id"]]
    got = get(client, admin_key_headers, c["id"])
    assert got["status"] == "completed" and got["eta"] is None
    assert got["progress"] == {"total": 2, "queued": 0, "sent": 1, "delivered": 1, "read": 1, "failed": 1,
                               "skipped": 0, "cancelled": 0, "replied": 1}
    assert session.scalar(select(func.count()).select_from(WebhookEvent)
                          .where(WebhookEvent.type == "campaign.completed")) == 1


def test_a_banned_clients_queued_share_moves_to_the_other_clients(client, session, org, admin_key_headers, ready):
    people(session, org, 6, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[r.id for r in ready], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    assert sorted(m.client_id for m in messages_of(session, c["id"])).count(ready[0].id) == 3
    session.execute(update(type(ready[0])).where(type(ready[0]).id == ready[0].id).values(status="banned"))
    assert sending.rebalance(session) == 3
    msgs = messages_of(session, c["id"])
    assert {m.client_id for m in msgs} == {ready[1].id} and all(m.scheduled_for for m in msgs)
    assert {r.client_id for r in session.scalars(select(CampaignRecipient)
                                                 .where(CampaignRecipient.campaign_id == c["id"]))} == {ready[1].id}
    assert sending.rebalance(session) == 0


def test_progress_follows_the_messages_whatever_changes_them(client, session, org, admin_key_headers, ready):
    people(session, org, 3, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    sending.run_fan_out(c["id"])
    ids = [m.id for m in messages_of(session, c["id"])]
    # one statement moving several messages (an ack batch), then single ones
    session.execute(text("UPDATE messages SET status = 'delivered' WHERE id = ANY(:ids)"), {"ids": ids[:2]})
    session.execute(text("UPDATE messages SET status = 'read' WHERE id = :id"), {"id": ids[0]})
    session.execute(text("UPDATE messages SET status = 'sending' WHERE id = :id"), {"id": ids[2]})
    p = get(client, admin_key_headers, c["id"])["progress"]
    assert (p["queued"], p["sent"], p["delivered"], p["read"]) == (1, 2, 2, 1)
    exact = dict(session.execute(select(CampaignRecipient.status, func.count())
                                 .where(CampaignRecipient.campaign_id == c["id"]).group_by(CampaignRecipient.status))
                 .all())
    assert exact == {"read": 1, "delivered": 1, "queued": 1}


def test_eta_from_the_clients_limits_and_the_send_window(client, session, org, admin_key_headers):
    cli = f.make_client(session, organization_id=org.id, status="ready", min_gap_ms=1000, max_gap_ms=1000,
                        per_minute=30, per_hour=5000, per_day=1000)
    people(session, org, 3, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[cli.id], message="Hello",
               audience={"tags": ["vip"]})
    e = client.post(f"/api/campaigns/{c['id']}/estimate", headers=admin_key_headers).get_json()
    assert e["recipients"] == 3 and e["seconds"] == pytest.approx(6.0)  # 30 a minute: one every 2 s
    from app.campaigns.eta import seconds_for

    assert seconds_for(2500, 0.5, 1000, 86_400) == pytest.approx(2 * 86_400 + 500 / 0.5)  # the daily cap
    assert seconds_for(100, 1.0, 1e9, 3600) == pytest.approx(100)
    assert seconds_for(7200, 1.0, 1e9, 3600) == pytest.approx(86_400 + 3600)  # one hour a day open


def test_test_send_writes_one_message_that_is_not_a_recipient(client, session, org, admin_key_headers, ready):
    f.make_contact(session, organization_id=org.id, phone="+14155550177", name="Tess", attributes={"city": "Faro"})
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id],
               template_id=template(client, admin_key_headers), variables={"offer": "10% off"},
               audience={"all": True})
    r = client.post(f"/api/campaigns/{c['id']}/test", json={"to": "+14155550177"}, headers=admin_key_headers)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["text"] == "Hi Tess, 10% off in Faro!" and r.get_json()["campaign_id"] is None
    missing = client.post(f"/api/campaigns/{c['id']}/test", json={"to": "+14155550178"}, headers=admin_key_headers)
    assert missing.status_code == 422 and missing.get_json()["error"]["details"]["missing"] == \
        ["name", "attributes.city"]
    assert get(client, admin_key_headers, c["id"])["progress"]["total"] == 0


def test_a_running_campaign_keeps_its_content_and_cannot_be_deleted(client, session, org, admin_key_headers, ready):
    people(session, org, 1, tags=["vip"])
    c = create(client, admin_key_headers, name="Promo", client_ids=[ready[0].id], message="Hello",
               audience={"tags": ["vip"]})
    act(client, admin_key_headers, c["id"], "start")
    r = client.patch(f"/api/campaigns/{c['id']}", json={"message": "Other"}, headers=admin_key_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "campaign_not_editable"
    assert client.patch(f"/api/campaigns/{c['id']}", json={"name": "Renamed"},
                        headers=admin_key_headers).get_json()["name"] == "Renamed"
    assert client.delete(f"/api/campaigns/{c['id']}", headers=admin_key_headers).status_code == 409
    act(client, admin_key_headers, c["id"], "cancel")
    assert client.delete(f"/api/campaigns/{c['id']}", headers=admin_key_headers).status_code == 204


def test_next_open_in_several_zones():
    from app.campaigns.windows import next_open

    window = {"start": "09:00", "end": "20:00", "days": ["mon", "tue", "wed", "thu", "fri"]}
    friday_night = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)  # a Friday
    assert next_open(window, "Europe/Lisbon", friday_night) == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    assert next_open(window, "Asia/Tokyo", friday_night) == datetime(2026, 12, 7, 0, 0, tzinfo=UTC)
    noon = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    assert next_open(window, "Europe/Lisbon", noon) == noon  # open now
    assert next_open(window, "Not/AZone", noon) == noon  # unknown zone: the window's, else UTC
