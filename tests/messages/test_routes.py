"""The messages API and pipeline pieces, in a rolled-back transaction (no worker processes).

The end-to-end behaviour with real workers over the sim transport is tests/messages/test_workers.py.
"""
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event, func, select, text

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.messages import dispatch, pacing, planning, service, sweeper, tracking
from app.messages.pacing import Limits
from app.models import Contact, Message, MessageStatusHistory, WebhookEvent
from app.transports.base import PermanentSendError, SendResult, TransientSendError
from config import settings
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers, user_with_headers

TO = "+14155550123"


@pytest.fixture
def paced_client(session, org):
    """A ready client of ``org``, paced at one send a second."""
    return f.make_client(session, organization_id=org.id, status="ready", phone="+14155550100",
                         min_gap_ms=1000, max_gap_ms=1000)


def queued_jobs(redis_conn, queue="messages") -> list[dict]:
    raw = redis_conn.lrange(f"dramatiq:{queue}", 0, -1)
    delayed = redis_conn.lrange(f"dramatiq:{queue}.DQ", 0, -1)
    msgs = [json.loads(r) for r in raw + delayed]
    # the Redis broker keeps message bodies in a hash and only ids in the list
    if msgs and isinstance(msgs[0], str):
        bodies = redis_conn.hmget(f"dramatiq:{queue}.msgs", raw) + redis_conn.hmget(f"dramatiq:{queue}.DQ.msgs", delayed)
        msgs = [json.loads(b) for b in bodies if b]
    return msgs


def send_jobs(redis_conn) -> list[str]:
    from dramatiq.common import dq_name

    out = []
    for queue in ("messages", dq_name("messages")):
        ids = redis_conn.lrange(f"dramatiq:{queue}", 0, -1)
        bodies = redis_conn.hmget(f"dramatiq:{queue}.msgs", ids) if ids else []
        out += [json.loads(b)["args"][0] for b in bodies if b and json.loads(b)["actor_name"] == "messages.send"]
    return out


# ----------------------------------------------------------------------------- accepting

def test_send_message_v2_returns_202_and_queues_one_job(session, client, paced_client, admin_key_headers, redis_conn):
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": "Hello"},
                    headers=admin_key_headers)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body == {"messageId": body["id"], "id": body["id"], "status": "queued"}
    msg = session.get(Message, body["id"])
    assert (msg.direction, msg.to_phone, msg.text, msg.type, msg.from_phone) == ("outbound", TO, "Hello", "text",
                                                                               "+14155550100")
    contact = session.get(Contact, msg.contact_id)
    assert contact.phone == TO and contact.organization_id == paced_client.organization_id
    assert msg.scheduled_for is not None and msg.queued_at is not None
    history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == msg.id)).all()
    assert history == ["queued"]
    event = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "message.queued")).one()
    assert event.payload["id"] == msg.id and event.payload["status"] == "queued" and event.payload["to"] == TO
    assert send_jobs(redis_conn) == [msg.id]
    got = client.get(f"/api/messages/{msg.id}", headers=admin_key_headers).get_json()
    assert got == event.payload


def test_post_messages_text_template_and_media(session, client, paced_client, admin_key_headers, org):
    tpl = f.make_template(session, organization_id=org.id, body="Hi {{name}}, your code is {{ code }}",
                          variables=["name", "code"])
    image = f.make_media(session, organization_id=org.id, mime_type="image/jpeg")
    pdf = f.make_media(session, organization_id=org.id, mime_type="application/pdf", filename="a.pdf")
    r = client.post("/api/messages",
                    json={"client_id": paced_client.id, "to": TO, "type": "template", "template_id": tpl.id,
                          "variables": {"name": "Ann", "code": 42}}, headers=admin_key_headers)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["text"] == "Hi Ann, your code is 42" and r.get_json()["type"] == "template"
    r = client.post("/api/messages",
                    json={"client_id": paced_client.id, "to": TO, "media_id": image.id, "caption": "look"},
                    headers=admin_key_headers)
    assert r.status_code == 202 and r.get_json()["type"] == "image" and r.get_json()["caption"] == "look"
    r = client.post("/api/messages",
                    json={"client_id": paced_client.id, "to": TO, "type": "document", "media_id": pdf.id},
                    headers=admin_key_headers)
    assert r.status_code == 202 and r.get_json()["media_id"] == pdf.id
    r = client.post(f"/api/clients/{paced_client.id}/send-message",
                    json={"to": TO, "message": "see", "media_id": image.id},
                    headers=admin_key_headers)
    assert r.status_code == 202
    assert session.get(Message, r.get_json()["id"]).caption == "see"


@pytest.mark.parametrize("to", ["4155550123", "+1 415 555 0123", "+1415555012", "+0123456789", "+1415555012345678",
                                "tel:+14155550123", ""])
def test_to_must_be_e164(client, paced_client, admin_key_headers, to):
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": to, "text": "x"},
                    headers=admin_key_headers)
    assert r.status_code == 422
    assert "to" in r.get_json()["error"]["details"]


def test_validation_errors_name_the_fields(session, client, paced_client, admin_key_headers, org):
    other_org = f.make_organization(session)
    foreign_media = f.make_media(session, organization_id=other_org.id)
    audio = f.make_media(session, organization_id=org.id, mime_type="audio/ogg")
    tpl = f.make_template(session, organization_id=org.id, body="Dear {{first}} {{last}}", variables=["first", "last"])
    cases = [
        ({"text": "x" * 4097}, "text"),
        ({"text": "   "}, "text"),
        ({"type": "image", "media_id": foreign_media.id}, "media_id"),
        ({"type": "image", "media_id": "med_nope"}, "media_id"),
        ({"type": "image", "media_id": audio.id}, "media_id"),
        ({"type": "video"}, "media_id"),
        ({"type": "template", "template_id": tpl.id, "variables": {"first": "A"}}, "variables"),
        ({"type": "template", "template_id": "tpl_nope"}, "template_id"),
        ({"type": "carousel", "text": "x"}, "type"),
        ({"text": "x", "colour": "red"}, "colour"),
    ]
    for extra, field in cases:
        r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, **extra},
                        headers=admin_key_headers)
        assert r.status_code == 422, (extra, r.get_json())
        assert field in r.get_json()["error"]["details"], (extra, r.get_json())
    r = client.post("/api/messages",
                    json={"client_id": paced_client.id, "to": TO, "type": "template", "template_id": tpl.id,
                          "variables": {"first": "A"}}, headers=admin_key_headers)
    assert r.get_json()["error"]["details"]["variables"] == ["Missing: last."]
    assert session.scalar(select(func.count()).select_from(Message)) == 0


def test_the_client_must_exist_be_usable_and_not_deleted(session, client, org, paced_client, admin_key_headers):
    other = f.make_client(session, status="ready")
    deleted = f.make_client(session, organization_id=org.id, status="ready", deleted_at=datetime.now(UTC))
    for client_id in (other.id, deleted.id, "cli_nope"):
        r = client.post("/api/messages", json={"client_id": client_id, "to": TO, "text": "x"},
                        headers=admin_key_headers)
        assert r.status_code == 422 and "client_id" in r.get_json()["error"]["details"]
        r = client.post(f"/api/clients/{client_id}/send-message", json={"to": TO, "message": "x"},
                        headers=admin_key_headers)
        assert r.status_code == 404
    mine = f.make_client(session, organization_id=org.id, status="ready")
    _, agent = user_with_headers(session, org, "agent", client_ids=[mine.id])
    assert client.post(f"/api/clients/{mine.id}/send-message", json={"to": TO, "message": "x"}, headers=agent).status_code == 202
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": "x"}, headers=agent)
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "client_not_assigned"
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "text": "x"}, headers=agent)
    assert r.status_code == 422 and "client_id" in r.get_json()["error"]["details"]
    viewer = principal_headers(session, org, "viewer")
    assert client.post(f"/api/clients/{mine.id}/send-message", json={"to": TO, "message": "x"}, headers=viewer).status_code == 403


def test_a_body_over_the_request_limit_is_413(client, paced_client, admin_key_headers):
    big = "x" * (settings.MAX_REQUEST_BYTES + 10)
    r = client.post("/api/messages", data=json.dumps({"client_id": paced_client.id, "to": TO, "text": big}),
                    content_type="application/json", headers=admin_key_headers)
    assert r.status_code == 413


def test_text_is_up_to_4096_characters_and_one_more_is_422_not_413(client, paced_client, admin_key_headers):
    longest = "é" * 4096  # characters, not bytes: 8 KB of UTF-8, far under the request limit
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "text": longest},
                    headers=admin_key_headers)
    assert r.status_code == 202 and r.get_json()["text"] == longest
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": longest},
                    headers=admin_key_headers)
    assert r.status_code == 202
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "text": longest + "x"},
                    headers=admin_key_headers)
    assert r.status_code == 422 and "text" in r.get_json()["error"]["details"]
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": longest + "x"},
                    headers=admin_key_headers)
    assert r.status_code == 422 and "message" in r.get_json()["error"]["details"]
    r = client.post("/api/messages/batch", json={"client_id": paced_client.id, "messages": [
        {"to": TO, "text": longest}, {"to": TO, "text": longest + "x"}]}, headers=admin_key_headers)
    first, second = r.get_json()["messages"]
    assert r.status_code == 202 and first["status"] == "queued" and "text" in second["error"]["details"]


def test_a_medium_of_another_kind_is_refused_naming_media_id(session, client, paced_client, admin_key_headers, org):
    webp = f.make_media(session, organization_id=org.id, mime_type="image/webp")  # an image, not a sticker
    mp3 = f.make_media(session, organization_id=org.id, mime_type="audio/mpeg")
    for kind, medium, words in (("sticker", webp, "kind=sticker"), ("voice", mp3, "Ogg Opus"),
                                ("video", mp3, "not video")):
        r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "type": kind,
                                               "media_id": medium.id}, headers=admin_key_headers)
        assert r.status_code == 422 and words in r.get_json()["error"]["details"]["media_id"][0], kind


@pytest.mark.parametrize("mime_type,kind,media_kind", [
    ("image/jpeg", "image", "image"), ("video/mp4", "video", "video"), ("audio/ogg", "audio", "audio"),
    ("application/pdf", "document", "document"), ("image/webp", "sticker", "sticker"), ("audio/ogg", "voice", "audio")])
def test_every_media_kind_is_accepted(session, client, paced_client, admin_key_headers, org, mime_type, kind,
                                      media_kind):
    medium = f.make_media(session, organization_id=org.id, mime_type=mime_type, kind=media_kind)
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "media_id": medium.id},
                    headers=admin_key_headers)
    assert r.status_code == 202 and r.get_json()["type"] == media_kind and r.get_json()["media_id"] == medium.id
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "type": kind, "media_id": medium.id,
                                           "caption": "see"}, headers=admin_key_headers)
    if kind in ("image", "video", "document"):
        assert r.status_code == 202 and r.get_json()["caption"] == "see"
    else:  # WhatsApp shows no caption with audio, voice notes and stickers
        assert r.status_code == 422 and "caption" in r.get_json()["error"]["details"]
        r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "type": kind,
                                               "media_id": medium.id}, headers=admin_key_headers)
        assert r.status_code == 202 and r.get_json()["type"] == kind
    processing = f.make_media(session, organization_id=org.id, mime_type=mime_type, status="processing")
    r = client.post("/api/messages",
                    json={"client_id": paced_client.id, "to": TO, "type": kind, "media_id": processing.id},
                    headers=admin_key_headers)
    assert r.status_code == 422 and "media_id" in r.get_json()["error"]["details"]


def test_sends_to_a_client_that_is_not_ready_are_accepted_and_wait(session, client, org, admin_key_headers, redis_conn):
    offline = f.make_client(session, organization_id=org.id, status="disconnected")
    paused = f.make_client(session, organization_id=org.id, status="ready", paused=True)
    for c in (offline, paused):
        r = client.post(f"/api/clients/{c.id}/send-message", json={"to": TO, "message": "later"},
                        headers=admin_key_headers)
        assert r.status_code == 202
        msg = session.get(Message, r.get_json()["id"])
        assert msg.status == "queued" and msg.scheduled_for is None
        assert pacing.slots(c.id) == []


def test_scheduled_at_waits_parked_until_the_feeder_releases_it(session, client, paced_client, admin_key_headers,
                                                                redis_conn):
    when = datetime.now(UTC) + timedelta(hours=2)
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "text": "later",
                                           "scheduled_at": when.isoformat()}, headers=admin_key_headers)
    assert r.status_code == 202
    body = r.get_json()
    assert body["scheduled_at"].startswith(when.isoformat()[:19]) and body["scheduled_for"] is None
    assert send_jobs(redis_conn) == [] and pacing.slots(paced_client.id) == []
    assert redis_conn.zscore(planning.PARKED_KEY, body["id"]) is not None
    assert planning.release_parked() == 0  # not due within MESSAGE_PARK_AFTER yet
    clock = pacing.FixedClock(int(when.timestamp() * 1000) - 30_000)
    pacing.set_clock(clock)
    try:
        assert planning.release_parked() == 1
    finally:
        pacing.set_clock(None)
    assert redis_conn.zcard(planning.PARKED_KEY) == 0
    assert send_jobs(redis_conn) == [body["id"]]
    assert redis_conn.llen("dramatiq:messages.DQ") == 1  # delayed until its time
    # the job, run early, waits again (parked, no slot taken); run at its time it reserves a slot and sends
    assert dispatch.run_send_job(body["id"]) == "waiting"
    assert redis_conn.zscore(planning.PARKED_KEY, body["id"]) is not None and pacing.slots(paced_client.id) == []
    session.expire_all()
    assert session.get(Message, body["id"]).status == "queued"


def test_a_soon_scheduled_message_waits_in_the_broker(session, client, paced_client, admin_key_headers, redis_conn):
    when = datetime.now(UTC) + timedelta(seconds=20)
    r = client.post("/api/messages", json={"client_id": paced_client.id, "to": TO, "text": "soon",
                                           "scheduled_at": when.isoformat()}, headers=admin_key_headers)
    assert r.status_code == 202
    assert redis_conn.llen("dramatiq:messages") == 0 and redis_conn.llen("dramatiq:messages.DQ") == 1
    assert redis_conn.zcard(planning.PARKED_KEY) == 0


def test_pacing_slots_are_reserved_at_intake(session, client, paced_client, admin_key_headers):
    # one moment for the three requests: the second and third are planned behind the first, not
    # at "now" (which they would be if the machine took longer than a gap between two requests)
    pacing.set_clock(pacing.FixedClock(pacing.now_ms()))
    try:
        ids = [client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": str(i)},
                           headers=admin_key_headers).get_json()["id"] for i in range(3)]
    finally:
        pacing.set_clock(None)
    msgs = [session.get(Message, i) for i in ids]
    slots = [m.scheduled_for for m in msgs]
    assert slots == sorted(slots)
    gap = timedelta(milliseconds=1000 + settings.PACING_SLACK_MS)
    assert slots[1] - slots[0] == gap and slots[2] - slots[1] == gap
    assert [m for m, _ in pacing.slots(paced_client.id)] == [f"{i}:0" for i in ids]


def test_opted_out_contact_is_422(session, client, org, paced_client, admin_key_headers):
    f.make_contact(session, organization_id=org.id, phone=TO, opted_out=True)
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": "x"},
                    headers=admin_key_headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "contact_opted_out"


def test_batch_validates_each_item_and_inserts_once(session, client, paced_client, admin_key_headers, engine,
                                                    redis_conn):
    f.make_contact(session, organization_id=paced_client.organization_id, phone="+14155550999", opted_out=True)
    items = [{"to": f"+1415555{1000 + i:04d}", "text": f"n{i}"} for i in range(50)]
    items[3] = {"to": "nope", "text": "x"}
    items[7] = {"to": TO, "text": "x", "unknown": True}
    items[9] = {"to": "+14155550999", "text": "x"}
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    conn = session.connection()
    event.listen(conn, "before_cursor_execute", count)
    try:
        r = client.post("/api/messages/batch", json={"client_id": paced_client.id, "messages": items},
                        headers=admin_key_headers)
    finally:
        event.remove(conn, "before_cursor_execute", count)
    assert r.status_code == 202, r.get_json()
    results = r.get_json()["messages"]
    assert len(results) == 50
    assert "to" in results[3]["error"]["details"]
    assert "unknown" in results[7]["error"]["details"]
    assert results[9]["error"]["code"] == "contact_opted_out"
    ok = [res for i, res in enumerate(results) if i not in (3, 7, 9)]
    assert all(res["status"] == "queued" and res["id"].startswith("msg_") for res in ok)
    # one statement writes the messages and their history rows; the jobs need no outbox row (sent after commit)
    writes = [" ".join(s.split()).upper() for s in statements if "INSERT INTO MESSAGES " in " ".join(s.split()).upper()]
    assert len(writes) == 1 and "INSERT INTO MESSAGE_STATUS_HISTORY " in writes[0]
    assert not [s for s in statements if "JOB_OUTBOX" in s.upper()]
    assert len([s for s in statements if "INSERT INTO MESSAGE_STATUS_HISTORY" in s.upper()]) == 1
    # due within a minute: a delayed job in the broker; later slots: parked for the feeder
    parked = [m.decode() for m in redis_conn.zrange(planning.PARKED_KEY, 0, -1)]
    assert parked and sorted(send_jobs(redis_conn) + parked) == sorted(res["id"] for res in ok)


def test_a_batch_records_its_events_and_deliveries_in_one_statement_each(session, client, paced_client,
                                                                         admin_key_headers, engine):
    from app.models import WebhookDelivery

    hook = f.make_webhook(session, organization_id=paced_client.organization_id, events=["message.queued"])
    f.make_webhook(session, organization_id=paced_client.organization_id, events=["message.sent"])  # not this type
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.lstrip().upper())

    conn = session.connection()
    event.listen(conn, "before_cursor_execute", count)
    try:
        items = [{"to": f"+1415555{2000 + i:04d}", "text": f"n{i}"} for i in range(20)]
        r = client.post("/api/messages/batch", json={"client_id": paced_client.id, "messages": items},
                        headers=admin_key_headers)
    finally:
        event.remove(conn, "before_cursor_execute", count)
    assert r.status_code == 202, r.get_json()
    ids = sorted(m["id"] for m in r.get_json()["messages"])
    org_id = paced_client.organization_id
    events = session.scalars(select(WebhookEvent).where(WebhookEvent.organization_id == org_id)).all()
    assert sorted(e.payload["id"] for e in events) == ids and {e.type for e in events} == {"message.queued"}
    assert all(e.payload["status"] == "queued" and e.payload["client_id"] == paced_client.id for e in events)
    deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.organization_id == org_id)).all()
    assert sorted(d.event_id for d in deliveries) == sorted(e.id for e in events)
    assert {d.webhook_id for d in deliveries} == {hook.id}
    assert len([s for s in statements if "INSERT INTO WEBHOOK_EVENTS" in s]) == 1
    assert not [s for s in statements if s.startswith("SELECT W.ID FROM WEBHOOKS")], \
        "the statement that records the events finds their subscribers"
    assert len([s for s in statements if s.startswith("INSERT INTO WEBHOOK_DELIVERIES")]) == 1


def test_batch_limits(client, paced_client, admin_key_headers):
    r = client.post("/api/messages/batch", json={"client_id": paced_client.id, "messages": [
        {"to": f"+1415556{i:04d}", "text": f"n{i}"} for i in range(1000)]}, headers=admin_key_headers)
    assert r.status_code == 202 and len(r.get_json()["messages"]) == 1000
    assert all(m["status"] == "queued" for m in r.get_json()["messages"])
    r = client.post("/api/messages/batch",
                    json={"client_id": paced_client.id, "messages": [{"to": TO, "text": "x"}] * 1001},
                    headers=admin_key_headers)
    assert r.status_code == 422 and "messages" in r.get_json()["error"]["details"]
    r = client.post("/api/messages/batch", json={"client_id": paced_client.id, "messages": []},
                    headers=admin_key_headers)
    assert r.status_code == 422


# ----------------------------------------------------------------------------- reading

def test_get_is_tenant_scoped_and_agents_see_their_clients_only(session, client, org, paced_client, admin_key_headers):
    msg = f.make_message(session, client_id=paced_client.id)
    assert client.get(f"/api/messages/{msg.id}", headers=admin_key_headers).status_code == 200
    other = api_key_headers(session, f.make_organization(session), "admin")
    assert client.get(f"/api/messages/{msg.id}", headers=other).status_code == 404
    _, agent = user_with_headers(session, org, "agent", client_ids=[])
    assert client.get(f"/api/messages/{msg.id}", headers=agent).status_code == 404
    assert client.get("/api/messages", headers=agent).get_json()["items"] == []


def test_list_filters_and_cursor(session, client, org, paced_client, admin_key_headers):
    second = f.make_client(session, organization_id=org.id, status="ready")
    contact = f.make_contact(session, organization_id=org.id, phone="+14155550777")
    a = f.make_message(session, client_id=paced_client.id, status="sent")
    b = f.make_message(session, client_id=second.id, status="queued", contact_id=contact.id, to_phone=contact.phone)
    c = f.make_message(session, client_id=paced_client.id, direction="inbound", contact_id=contact.id)

    def ids(query):
        r = client.get(f"/api/messages?{query}", headers=admin_key_headers)
        assert r.status_code == 200, r.get_json()
        return [m["id"] for m in r.get_json()["items"]]

    assert ids("") == [c.id, b.id, a.id]
    assert ids(f"client_id={paced_client.id}") == [c.id, a.id]
    assert ids("status=queued") == [b.id]
    assert ids("direction=inbound") == [c.id]
    assert ids(f"contact={contact.id}") == [c.id, b.id]
    assert ids("contact=%2B14155550777") == [c.id, b.id]
    assert ids("contact=%2B14155550778") == []
    future = (datetime.now(UTC) + timedelta(minutes=1)).isoformat().replace("+", "%2B")
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+", "%2B")
    assert ids(f"since={future}") == [] and ids(f"until={past}") == []
    assert ids(f"since={past}&until={future}") == [c.id, b.id, a.id]
    page = client.get("/api/messages?limit=2", headers=admin_key_headers).get_json()
    assert [m["id"] for m in page["items"]] == [c.id, b.id]
    rest = client.get(f"/api/messages?limit=2&cursor={page['next_cursor']}", headers=admin_key_headers).get_json()
    assert [m["id"] for m in rest["items"]] == [a.id] and rest["next_cursor"] is None
    assert client.get("/api/messages?status=nope", headers=admin_key_headers).status_code == 422


def test_a_page_of_100k_messages_is_an_index_range_scan(session, org, paced_client):
    """EXPLAIN of the page queries over 100k messages (ours are 30% of them): each one walks an
    index in id order and stops after a page (no Seq Scan, no Sort, no bitmap scan)."""
    other_org = f.make_organization(session)
    second = f.make_client(session, organization_id=org.id, status="ready")
    foreign = f.make_client(session, organization_id=other_org.id, status="ready")
    session.execute(text("SET LOCAL session_replication_role = replica"))  # skip FK triggers: a faster fill
    session.execute(text("""
        INSERT INTO messages (id, organization_id, client_id, direction, to_phone, from_phone, type, text, status,
                              created_at, contact_id)
        SELECT 'msg_' || lpad(to_hex(g), 26, '0'),
               CASE WHEN g % 10 < 3 THEN :org ELSE :other_org END,
               CASE WHEN g % 10 < 2 THEN :cli WHEN g % 10 = 2 THEN :second ELSE :foreign END,
               CASE WHEN g % 7 = 0 THEN 'inbound' ELSE 'outbound' END, '+14155550123', '+14155550124', 'text', 'x',
               (ARRAY['queued','sent','delivered','read','failed','sending'])[1 + g % 6],
               now() - make_interval(secs => 100000 - g), 'ctc_bench' || (g % 50)
        FROM generate_series(1, 100000) AS g"""),
                    {"org": org.id, "other_org": other_org.id, "cli": paced_client.id, "second": second.id,
                     "foreign": foreign.id})
    session.execute(text("SET LOCAL session_replication_role = origin"))
    session.execute(text("ANALYZE messages"))
    from app.security.principal import SystemPrincipal

    captured = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "FROM messages" in statement and "LIMIT" in statement:
            captured.append((statement, parameters))

    conn = session.connection()
    event.listen(conn, "before_cursor_execute", capture)
    principal = SystemPrincipal(org.id)
    try:
        first = service.list_messages(session, principal, limit=50)
        service.list_messages(session, principal, limit=50, client_id=second.id, cursor=first["next_cursor"])
        service.list_messages(session, principal, limit=50, status="failed")
        service.list_messages(session, principal, limit=50, direction="inbound",
                              since=datetime.now(UTC) - timedelta(hours=3))
        service.list_messages(session, principal, limit=50, contact="ctc_bench7")
    finally:
        event.remove(conn, "before_cursor_execute", capture)
    assert len(first["items"]) == 50 and all(m.organization_id == org.id for m in first["items"])
    assert len(captured) == 5
    raw = conn.connection.dbapi_connection
    for statement, params in captured:
        with raw.cursor() as cur:
            cur.execute("EXPLAIN (FORMAT JSON) " + statement, params)
            plan = json.dumps(cur.fetchone()[0])
        assert '"Seq Scan"' not in plan and '"Sort"' not in plan and "Bitmap" not in plan, plan
        assert '"Index Scan"' in plan or '"Index Only Scan"' in plan, plan
        assert '"Index Name": "messages_' in plan, plan


# ----------------------------------------------------------------------------- cancel

def test_cancel_only_while_queued_and_it_gives_back_the_slot(session, client, paced_client, admin_key_headers):
    ids = [client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": str(i)},
                       headers=admin_key_headers).get_json()["id"] for i in range(2)]
    r = client.post(f"/api/messages/{ids[1]}/cancel", headers=admin_key_headers)
    assert r.status_code == 200 and r.get_json()["status"] == "cancelled" and r.get_json()["cancelled_at"]
    assert [m for m, _ in pacing.slots(paced_client.id)] == [f"{ids[0]}:0"]
    assert client.post(f"/api/messages/{ids[1]}/cancel", headers=admin_key_headers).status_code == 409
    session.execute(text("UPDATE messages SET status = 'sending' WHERE id = :id"), {"id": ids[0]})
    r = client.post(f"/api/messages/{ids[0]}/cancel", headers=admin_key_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "message_not_cancellable"
    other = api_key_headers(session, f.make_organization(session), "admin")
    assert client.post(f"/api/messages/{ids[1]}/cancel", headers=other).status_code == 404
    history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == ids[1])
                              .order_by(MessageStatusHistory.id)).all()
    assert history == ["queued", "cancelled"]


# ----------------------------------------------------------------------------- sending, in-process

class FakeTransport:
    def __init__(self, outcome=None):
        self.sent, self.outcome = [], outcome

    def send(self, message):
        self.sent.append(message)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return SendResult(f"ext-{message.message_id}")


def queue_one(session, client_obj, **kw):
    principal = __import__("app.security.principal", fromlist=["SystemPrincipal"]).SystemPrincipal(
        client_obj.organization_id)
    created = service.accept_messages(session, principal, client_obj, [{"to": TO, "text": "hi", **kw}], strict=True)[0]
    return session.get(Message, created["id"])


def test_perform_send_claims_once(session, unpaced):
    msg = queue_one(session, unpaced)
    transport = FakeTransport()
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "sent"
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "skipped"
    assert dispatch.run_send_job(msg.id) == "skipped"
    assert len(transport.sent) == 1
    session.expire_all()
    msg = session.get(Message, msg.id)
    assert (msg.status, msg.external_id, msg.attempts) == ("sent", f"ext-{msg.id}", 1)
    assert msg.sending_at <= msg.sent_at
    history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == msg.id)
                              .order_by(MessageStatusHistory.id)).all()
    assert history == ["queued", "sending", "sent"]
    assert session.scalar(select(func.count()).select_from(WebhookEvent).where(WebhookEvent.type == "message.sent")) == 1
    assert session.get(Contact, msg.contact_id).last_outbound_at == msg.sent_at


def test_permanent_error_fails_at_once_with_the_transports_code(session, unpaced):
    msg = queue_one(session, unpaced)
    transport = FakeTransport(PermanentSendError("no such number", code="invalid_recipient"))
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "failed"
    session.expire_all()
    msg = session.get(Message, msg.id)
    assert (msg.status, msg.error_code, msg.error_message) == ("failed", "invalid_recipient", "no such number")
    assert tracking.dump(msg)["error"] == {"code": "invalid_recipient", "message": "no such number"}
    assert msg.failed_at is not None and len(transport.sent) == 1
    history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == msg.id)
                              .order_by(MessageStatusHistory.id)).all()
    assert history == ["queued", "sending", "failed"]
    failed = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "message.failed")).one()
    assert failed.payload["id"] == msg.id and failed.payload["error"]["code"] == "invalid_recipient"


def test_transient_errors_retry_then_fail_after_the_attempts(session, unpaced):
    msg = queue_one(session, unpaced)
    transport = FakeTransport(TransientSendError("network down", code="transport_unavailable"))
    for attempt in range(1, settings.MESSAGE_MAX_ATTEMPTS):
        with pytest.raises(TransientSendError):
            dispatch.perform_send(msg.id, lambda cid: transport)
        session.expire_all()
        assert session.get(Message, msg.id).status == "queued"
        assert session.get(Message, msg.id).attempts == attempt
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "failed"
    session.expire_all()
    msg = session.get(Message, msg.id)
    assert msg.status == "failed" and msg.error_code == "transport_unavailable"
    assert len(transport.sent) == settings.MESSAGE_MAX_ATTEMPTS


def test_a_session_host_sends_a_paced_message_only_right_after_its_grant(session, paced_client):
    """perform_send (the web session host's call) refuses a grant older than its pad: the grant is
    withdrawn and the message, due at once, is paced again without losing its place."""
    msg = queue_one(session, paced_client)
    token = pacing.token_for(msg.id, 0)
    [(_, planned)] = pacing.reservations(paced_client.id)
    slot = pacing.acquire(paced_client.id, planned, Limits.of(paced_client), token)  # messages.send granted it ...
    assert slot.granted
    msg.scheduled_for = datetime.fromtimestamp(slot.at_ms / 1000, UTC)
    session.flush()
    transport = FakeTransport()
    pacing.set_clock(pacing.FixedClock(slot.at_ms + 5000))  # ... and the host got to it 5 s later
    try:
        assert dispatch.perform_send(msg.id, lambda cid: transport) == "repaced"
        assert transport.sent == [] and pacing.grants(paced_client.id) == []
        assert pacing.reservations(paced_client.id) == [(token, slot.at_ms)]
        assert dispatch.run_send_job(msg.id) == "sent"
    finally:
        pacing.set_clock(None)
    assert [s for _, s in pacing.grants(paced_client.id)] == [slot.at_ms + 5000]
    session.expire_all()
    assert (session.get(Message, msg.id).status, session.get(Message, msg.id).attempts) == ("sent", 1)


def test_a_held_client_keeps_its_messages_queued_and_resume_sends_them_on(session, paced_client, redis_conn):
    msgs = [queue_one(session, paced_client) for _ in range(3)]
    assert len(pacing.slots(paced_client.id)) == 3
    paced_client.status = "disconnected"
    session.flush()
    redis_conn.delete("dramatiq:messages", "dramatiq:messages.DQ")
    for m in msgs:
        assert dispatch.run_send_job(m.id) == "held"
    session.expire_all()
    assert all(session.get(Message, m.id).status == "queued" and session.get(Message, m.id).scheduled_for is None
               for m in msgs)
    assert pacing.slots(paced_client.id) == []
    paced_client = session.get(type(paced_client), paced_client.id)
    paced_client.status = "ready"
    session.flush()
    assert planning.resume_client(session, paced_client.id) == 3
    session.flush()
    session.expire_all()
    assert all(session.get(Message, m.id).scheduled_for is not None for m in msgs)
    assert len(pacing.slots(paced_client.id)) == 3


@pytest.mark.parametrize("state", ["paused", "banned", "deleted"])
def test_a_paused_banned_or_deleted_clients_messages_are_held_not_failed_and_resume(session, paced_client, state):
    from app.models import Client

    msgs = [queue_one(session, paced_client) for _ in range(2)]
    if state == "paused":
        paced_client.paused = True
    elif state == "banned":
        paced_client.status, paced_client.paused = "banned", True
    else:
        paced_client.deleted_at = datetime.now(UTC)
    session.flush()
    for m in msgs:
        assert dispatch.run_send_job(m.id) == "held"
    assert pacing.slots(paced_client.id) == []
    # long past due: the sweeper neither fails nor re-sends a held message
    session.execute(text("UPDATE messages SET updated_at = now() - interval '1 day' WHERE client_id = :c"),
                    {"c": paced_client.id})
    assert sweeper.sweep(session, sending_timeout_s=0, lost_after_s=0)["requeued"] == 0
    session.expire_all()
    held = [session.get(Message, m.id) for m in msgs]
    assert [(m.status, m.scheduled_for, m.error_code) for m in held] == [("queued", None, None)] * 2
    if state == "deleted":  # a deleted client never sends again; its messages stay as they are
        assert planning.resume_client(session, paced_client.id) == 0
        assert dispatch.run_send_job(msgs[0].id) == "held"
        session.expire_all()
        assert (session.get(Message, msgs[0].id).status, pacing.slots(paced_client.id)) == ("queued", [])
        return
    cli = session.get(Client, paced_client.id)
    cli.status, cli.paused = "ready", False
    session.flush()
    assert planning.resume_client(session, cli.id) == 2
    session.flush()
    session.expire_all()
    assert all(session.get(Message, m.id).scheduled_for is not None for m in msgs)
    assert dispatch.run_send_job(msgs[0].id) == "sent"
    session.expire_all()
    assert session.get(Message, msgs[0].id).status == "sent"


def test_a_job_before_its_slot_waits_again_without_using_retries(session, paced_client, redis_conn):
    """However often a job runs before its slot, it is deferred with a new delayed broker message
    (no retry counted, nothing failed), and its slot does not move."""
    from dramatiq.common import dq_name

    from jobs.messages import send

    first, second = queue_one(session, paced_client), queue_one(session, paced_client)
    assert second.scheduled_for > first.scheduled_for
    slot = second.scheduled_for
    session.commit()  # the intake's jobs reach the broker (a savepoint here)
    redis_conn.delete("dramatiq:messages", "dramatiq:messages.DQ", "dramatiq:messages.DQ.msgs",
                      "dramatiq:messages.msgs")
    pacing.set_clock(pacing.FixedClock(int(first.scheduled_for.timestamp() * 1000)))  # before the slot
    try:
        for _ in range(send.options["max_retries"] + 3):
            send.fn(second.id)  # the actor's body, run early each time
    finally:
        pacing.set_clock(None)
    session.expire_all()
    row = session.get(Message, second.id)
    assert (row.status, row.attempts, row.scheduled_for) == ("queued", 0, slot)
    ids = redis_conn.lrange(f"dramatiq:{dq_name('messages')}", 0, -1)
    bodies = [json.loads(b) for b in redis_conn.hmget(f"dramatiq:{dq_name('messages')}.msgs", ids)]
    assert len(bodies) == send.options["max_retries"] + 3
    assert all(b["args"] == [second.id] and "retries" not in b["options"] and b["options"]["eta"] > 0
               for b in bodies)


def test_a_message_queued_before_its_contact_opted_out_is_not_sent(session, unpaced):
    msg = queue_one(session, unpaced)
    session.get(Contact, msg.contact_id).opted_out = True
    session.flush()
    transport = FakeTransport()
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "failed"
    assert transport.sent == []
    session.expire_all()
    assert session.get(Message, msg.id).error_code == "contact_opted_out"


# ----------------------------------------------------------------------------- acks

def test_acks_out_of_order_never_move_a_message_backwards(session, unpaced):
    msg = queue_one(session, unpaced)
    dispatch.perform_send(msg.id, lambda cid: FakeTransport())
    ext = f"ext-{msg.id}"
    t0 = datetime.now(UTC)
    assert tracking.apply_ack(session, unpaced.id, "ext-unknown", "delivered") is None
    tracking.apply_ack(session, unpaced.id, ext, "read", at=t0 + timedelta(seconds=2))
    tracking.apply_ack(session, unpaced.id, ext, "delivered", at=t0 + timedelta(seconds=1))
    tracking.apply_ack(session, unpaced.id, ext, "sent", at=t0)
    tracking.apply_ack(session, unpaced.id, ext, "failed", error={"code": "late"})
    session.expire_all()
    msg = session.get(Message, msg.id)
    assert msg.status == "read" and msg.error_code is None
    assert msg.read_at == t0 + timedelta(seconds=2) and msg.delivered_at == msg.read_at
    types = session.scalars(select(WebhookEvent.type).order_by(WebhookEvent.created_at, WebhookEvent.id)).all()
    # the delivery the read overtook is recorded too (history and event), once, before the read
    assert types == ["message.queued", "message.sent", "message.delivered", "message.read"]
    history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == msg.id)
                              .order_by(MessageStatusHistory.id)).all()
    assert history == ["queued", "sending", "sent", "delivered", "read"]


def test_a_failed_ack_fails_a_sent_message(session, unpaced):
    msg = queue_one(session, unpaced)
    dispatch.perform_send(msg.id, lambda cid: FakeTransport())
    tracking.apply_ack(session, unpaced.id, f"ext-{msg.id}", "failed", error={"code": "undeliverable", "message": "x"})
    session.expire_all()
    msg = session.get(Message, msg.id)
    assert (msg.status, msg.error_code) == ("failed", "undeliverable")
    tracking.apply_ack(session, unpaced.id, f"ext-{msg.id}", "delivered")
    session.expire_all()
    assert session.get(Message, msg.id).status == "failed"


# ----------------------------------------------------------------------------- sweeper

def test_sweeper_makes_interrupted_sends_unknown_and_requeues_lost_jobs(session, unpaced, redis_conn):
    stuck = f.make_message(session, client_id=unpaced.id, status="sending",
                           sending_at=datetime.now(UTC) - timedelta(minutes=10))
    fresh = f.make_message(session, client_id=unpaced.id, status="sending", sending_at=datetime.now(UTC))
    lost = f.make_message(session, client_id=unpaced.id, status="queued",
                          updated_at=datetime.now(UTC) - timedelta(hours=1))
    waiting = f.make_message(session, client_id=unpaced.id, status="queued",
                             updated_at=datetime.now(UTC) - timedelta(hours=1),
                             scheduled_for=datetime.now(UTC) + timedelta(minutes=5))
    offline = f.make_client(session, organization_id=unpaced.organization_id, status="disconnected")
    held = f.make_message(session, client_id=offline.id, status="queued",
                          updated_at=datetime.now(UTC) - timedelta(hours=1))
    f.make_idempotency_key(session, organization_id=unpaced.organization_id,
                           expires_at=datetime.now(UTC) - timedelta(seconds=1))
    result = sweeper.sweep(session, sending_timeout_s=120, lost_after_s=300)
    assert result == {"interrupted": 1, "reconciling": 0, "requeued": 1, "idempotency_keys_purged": 1}
    session.expire_all()
    assert (session.get(Message, stuck.id).status, session.get(Message, stuck.id).error_code) == ("unknown", "interrupted")
    assert session.get(Message, fresh.id).status == "sending"
    session.commit()  # the outbox sends after commit (a savepoint here)
    assert send_jobs(redis_conn) == [lost.id]
    reconciles = [json.loads(v) for v in redis_conn.hvals("dramatiq:default.DQ.msgs")]
    assert [j["args"] for j in reconciles if j["actor_name"] == "messages.reconcile"] == [[stuck.id]]
    assert session.get(Message, waiting.id).status == "queued" and session.get(Message, held.id).status == "queued"
    assert sweeper.sweep(session, sending_timeout_s=120, lost_after_s=300)["requeued"] == 0


def test_a_send_committed_whose_job_never_reached_the_broker_is_sent_again_by_the_sweeper(
        session, client, paced_client, admin_key_headers, redis_conn, monkeypatch):
    """The send job goes to the broker after the commit, with no outbox row: a process that dies
    between the two (here: a broker that fails then) leaves a queued message and no job, and
    ``requeue_lost`` gives it one once ``MESSAGE_LOST_AFTER`` has passed."""
    from workers.broker import get_broker

    broker = get_broker()

    def lost(*args, **kwargs):
        raise RuntimeError("the process died before the job reached Redis")

    monkeypatch.setattr(broker, "enqueue", lost)
    r = client.post(f"/api/clients/{paced_client.id}/send-message", json={"to": TO, "message": "Hello"},
                    headers=admin_key_headers)
    assert r.status_code == 202, r.get_json()
    monkeypatch.undo()
    message_id = r.get_json()["id"]
    assert session.get(Message, message_id).status == "queued" and send_jobs(redis_conn) == []
    assert not session.scalar(text("SELECT count(*) FROM job_outbox"))
    assert sweeper.requeue_lost(session, lost_after_s=300) == 0, "not yet: it may still be on its way"
    # MESSAGE_LOST_AFTER later
    session.execute(text("UPDATE messages SET updated_at = updated_at - interval '1 hour', "
                         "queued_at = queued_at - interval '1 hour', scheduled_for = scheduled_for - interval '1 hour' "
                         "WHERE id = :id"), {"id": message_id})
    assert sweeper.requeue_lost(session, lost_after_s=300) == 1
    session.commit()  # the sweeper's job goes after commit (a savepoint here)
    assert send_jobs(redis_conn) == [message_id]


def test_event_data_is_exactly_the_api_resource(session, unpaced):
    """tracking.dump (used for every event) gives what MessageSchema (the API) gives."""
    from app.messages.schemas import MessageSchema

    msg = queue_one(session, unpaced)
    dispatch.perform_send(msg.id, lambda cid: FakeTransport(PermanentSendError("nope", code="bad")))
    inbound = f.make_message(session, client_id=unpaced.id, direction="inbound", variables={"a": 1})
    for row in (msg, inbound):
        session.refresh(row)
        assert tracking.dump(row) == MessageSchema().dump(row)
        assert tracking.dump(service.as_row(row)) == MessageSchema().dump(row)
        as_result_row = session.execute(select(Message.__table__).where(Message.id == row.id)).first()
        assert tracking.dump(as_result_row) == MessageSchema().dump(row)
    assert tracking.dump(msg)["error"] == {"code": "bad", "message": "nope"}
