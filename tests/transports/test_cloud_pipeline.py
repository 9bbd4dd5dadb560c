"""The ``cloud`` transport's whole pipeline through real worker processes: API -> messages.send ->
the fake Graph API -> ``sent``; Meta's signed callbacks -> messages.on_ack / on_inbound -> rows,
history and events; Meta's errors -> retried or failed.

One ``default`` and one ``messages`` worker serve the whole module (started once: a pool takes
seconds to boot); each test has its own organisation, client and fake Graph API. The client is not
paced (``config.pacing: false``): pacing is tests/messages/test_workers.py's subject.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select, text

from app.kv import redis_client
from app.models import Contact, Message, MessageStatusHistory, WebhookEvent
from app.security.crypto import encrypt_json
from tests import factories as f
from tests.fake_graph import FakeGraph
from tests.messages.test_workers import rows
from tests.procs import WorkerProcesses, stop, wait_for
from tests.transports.test_cloud import APP_SECRET, VERIFY_TOKEN, change, signed_post

pytestmark = [pytest.mark.workers, pytest.mark.xdist_group("cloud_pipeline")]  # one set of pools for the module

TO = "+14155550123"
BUSINESS_PHONE = "+15550783881"


class Graph(FakeGraph):
    """The fake Graph API, which also records its answers and can fail the sends to one recipient
    (so concurrent sends each get their own scripted answer, whatever order they arrive in)."""

    def __init__(self):
        super().__init__()
        self.answers: list[tuple[object, int, object]] = []   # (Recorded, http status, body)
        self._by_recipient: dict[str, list[dict]] = {}

    def fail_sends_to(self, e164: str, code: int, message: str, details: str | None = None, times: int = 1) -> None:
        error = {"message": f"(#{code}) {message}", "type": "OAuthException", "code": code, "fbtrace_id": "AfakeTrace"}
        if details:
            error["error_data"] = {"messaging_product": "whatsapp", "details": details}
        with self._lock:
            self._by_recipient.setdefault(e164.lstrip("+"), []).extend({"error": error} for _ in range(times))

    def handle(self, rec, base):
        answer = None
        if rec.method == "POST" and rec.path.endswith("/messages") and isinstance(rec.json, dict):
            with self._lock:
                queue = self._by_recipient.get(rec.json.get("to"))
                if queue:
                    answer = (400, queue.pop(0), {})
        if answer is None:
            answer = super().handle(rec, base)
        self.answers.append((rec, answer[0], answer[1]))
        return answer

    def sends_of(self, message_id: str) -> list[tuple[int, object]]:
        """(http status, body) of every send of our message ``message_id``, in order."""
        return [(status, body) for rec, status, body in self.answers
                if rec.method == "POST" and rec.path.endswith("/messages") and isinstance(rec.json, dict)
                and rec.json.get("biz_opaque_callback_data") == message_id]


@pytest.fixture(scope="module")
def pools():
    """One worker per pool the pipeline needs, for the whole module."""
    from app.system.heartbeats import live_heartbeats

    procs = WorkerProcesses()
    try:
        names = ("default", "messages")
        before = {b["pid"] for b in live_heartbeats(redis_client(), "pool")}
        # the fake Graph API listens on loopback, which the address guard allows only when told
        started = [procs.start(name, wait=False, WEBHOOK_ALLOW_PRIVATE="loopback") for name in names]

        def up() -> bool:
            beating = {b["name"] for b in live_heartbeats(redis_client(), "pool") if b["pid"] not in before}
            return beating >= set(names) or any(p.poll() is not None for p in started)

        wait_for(up, timeout=30, message="the worker pools' heartbeats")
        for name, proc in zip(names, started):
            if proc.poll() is not None:
                raise AssertionError(f"worker pool {name} exited:\n{stop(proc)}")
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def scripted_graph(allow_loopback):
    """The fake Graph API that records its answers and can fail the sends to one recipient."""
    with Graph() as g:
        yield g


@pytest.fixture
def cloud(committed, committed_org, scripted_graph, pools):
    graph = scripted_graph
    cli = f.make_client(committed, organization_id=committed_org.id, transport="cloud", status="ready",
                        phone=BUSINESS_PHONE,
                        config={"phone_number_id": graph.phone_number_id, "base_url": graph.url, "pacing": False},
                        secrets_encrypted=encrypt_json({"access_token": graph.access_token, "app_secret": APP_SECRET,
                                                        "verify_token": VERIFY_TOKEN}))
    committed.commit()
    return cli


@pytest.fixture
def wrote_first(committed, committed_org, cloud):
    """The contacts these tests write to wrote first: free-form messages are within their 24-hour
    customer service window."""
    for phone in (TO, "+14155550131", "+14155550132", "+14155550133"):
        contact = f.make_contact(committed, organization_id=committed_org.id, phone=phone)
        f.make_message(committed, organization_id=committed_org.id, client_id=cloud.id, contact_id=contact.id,
                       direction="inbound", status="received", from_phone=phone, to_phone=BUSINESS_PHONE)
    committed.commit()


# ----------------------------------------------------------------------------------- helpers


def api_message(client, auth, message_id) -> dict:
    r = client.get(f"/api/messages/{message_id}", headers=auth)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def wait_status(client, auth, message_id, status, timeout=20) -> dict:
    wait_for(lambda: api_message(client, auth, message_id)["status"] == status, timeout=timeout,
             message=f"message {message_id} to be {status}")
    return api_message(client, auth, message_id)


def history(committed, message_id) -> list[str]:
    committed.rollback()
    return list(committed.scalars(select(MessageStatusHistory.status)
                                  .where(MessageStatusHistory.message_id == message_id)
                                  .order_by(MessageStatusHistory.id)))


def events(committed, message_id) -> list[WebhookEvent]:
    committed.rollback()
    return list(committed.scalars(select(WebhookEvent).where(text("payload->>'id' = :id").bindparams(id=message_id),
                                                              WebhookEvent.type.like("message.%"))
                                  .order_by(WebhookEvent.created_at, WebhookEvent.id)))


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def when(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def status_callback(wamid: str, status: str, ts: int) -> dict:
    return change({"statuses": [{"id": wamid, "status": status, "timestamp": str(ts), "recipient_id": TO.lstrip("+"),
                                 "conversation": {"id": "c0ffee", "origin": {"type": "service"}},
                                 "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}}]})


def post_callback(client, client_id, payload) -> dict:
    r = signed_post(client, client_id, payload)
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def default_queue_drained() -> bool:
    """Every job of the ``default`` queue (immediate or delayed) has been processed and acked."""
    r = redis_client()
    return r.hlen("dramatiq:default.msgs") == 0 and r.hlen("dramatiq:default.DQ.msgs") == 0


def send_and_wait_sent(client, auth, client_id, body_text) -> tuple[str, dict]:
    r = client.post(f"/api/clients/{client_id}/send-message", json={"to": TO, "message": body_text}, headers=auth)
    assert r.status_code == 202, r.get_json()
    mid = r.get_json()["id"]
    assert r.get_json()["messageId"] == mid
    return mid, wait_status(client, auth, mid, "sent")


# ----------------------------------------------------------------------------------- sending and acks


def test_a_send_reaches_graph_becomes_sent_then_delivered_then_read(
        committed, committed_client, committed_headers, scripted_graph, cloud, wrote_first):
    client = committed_client
    mid, msg = send_and_wait_sent(client, committed_headers, cloud.id, "Your order has shipped")

    ((status, answer),) = scripted_graph.sends_of(mid)
    assert status == 200
    wamid = answer["messages"][0]["id"]
    (req,) = scripted_graph.sent_messages()
    assert req.path == f"/v21.0/{scripted_graph.phone_number_id}/messages"
    assert req.headers["authorization"] == f"Bearer {scripted_graph.access_token}"
    assert req.json["to"] == "14155550123" and req.json["type"] == "text"
    assert req.json["text"]["body"] == "Your order has shipped"
    assert msg["error"] is None and msg["attempts"] == 1 and msg["from"] == BUSINESS_PHONE
    committed.rollback()
    assert committed.get(Message, mid).external_id == wamid

    # Meta reports sent (already known: nothing moves), delivered, then read, each in its own callback
    base = int(time.time()) + 2  # Meta's timestamps are whole seconds: after our sent_at
    assert post_callback(client, cloud.id, status_callback(wamid, "sent", base))["statuses"] == 1
    post_callback(client, cloud.id, status_callback(wamid, "delivered", base + 1))
    delivered = wait_status(client, committed_headers, mid, "delivered")
    assert when(delivered["delivered_at"]) == at(base + 1) and delivered["read_at"] is None
    post_callback(client, cloud.id, status_callback(wamid, "read", base + 3))
    read = wait_status(client, committed_headers, mid, "read")
    assert when(read["read_at"]) == at(base + 3) and when(read["delivered_at"]) == at(base + 1)
    assert when(read["sending_at"]) <= when(read["sent_at"]) == when(msg["sent_at"]) <= when(read["delivered_at"])
    assert history(committed, mid) == ["queued", "sending", "sent", "delivered", "read"]

    evts = events(committed, mid)
    assert [e.type for e in evts] == ["message.queued", "message.sent", "message.delivered", "message.read"]
    by_type = {e.type: e.payload for e in evts}
    assert by_type["message.delivered"]["status"] == "delivered"
    assert when(by_type["message.delivered"]["delivered_at"]) == at(base + 1)
    assert by_type["message.read"]["status"] == "read" and when(by_type["message.read"]["read_at"]) == at(base + 3)

    # a late (Meta retried) delivered callback after read: never backwards, nothing recorded
    post_callback(client, cloud.id, status_callback(wamid, "delivered", base + 2))
    wait_for(default_queue_drained, timeout=15, message="the late ack to be processed")
    assert api_message(client, committed_headers, mid) == read
    assert history(committed, mid) == ["queued", "sending", "sent", "delivered", "read"]
    assert len(events(committed, mid)) == 4
    assert len(scripted_graph.sent_messages()) == 1


def test_read_before_delivered_ends_read_and_the_late_delivered_moves_nothing(
        committed, committed_client, committed_headers, scripted_graph, cloud, wrote_first):
    client = committed_client
    r = client.post("/api/messages", json={"client_id": cloud.id, "to": TO, "text": "Out of order"},
                    headers=committed_headers)
    assert r.status_code == 202, r.get_json()
    mid = r.get_json()["id"]
    sent = wait_status(client, committed_headers, mid, "sent")
    ((_, answer),) = scripted_graph.sends_of(mid)
    wamid = answer["messages"][0]["id"]

    base = int(time.time()) + 2
    post_callback(client, cloud.id, status_callback(wamid, "read", base + 4))
    read = wait_status(client, committed_headers, mid, "read")
    assert when(read["read_at"]) == at(base + 4)
    assert read["delivered_at"] is not None, "read implies delivered"
    assert when(sent["sent_at"]) <= when(read["delivered_at"]) <= when(read["read_at"])
    assert history(committed, mid) == ["queued", "sending", "sent", "delivered", "read"]
    types = [e.type for e in events(committed, mid)]
    assert types[-2:] == ["message.delivered", "message.read"] and types.count("message.delivered") == 1
    before_events = len(types)

    post_callback(client, cloud.id, status_callback(wamid, "delivered", base + 1))
    wait_for(default_queue_drained, timeout=15, message="the late delivered ack to be processed")
    assert api_message(client, committed_headers, mid) == read  # status, timestamps: unchanged
    assert history(committed, mid) == ["queued", "sending", "sent", "delivered", "read"]
    assert len(events(committed, mid)) == before_events


def test_a_signed_inbound_callback_becomes_an_inbound_message_and_a_contact(
        committed, committed_client, committed_headers, committed_org, cloud):
    client = committed_client
    ts = int(time.time()) - 5
    payload = change({
        "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551181"}],
        "messages": [{"from": "16315551181", "id": "wamid.HBgLMTYzMTU1NTExODEVAgASGBQzQTdDN0I", "timestamp": str(ts),
                      "type": "text", "text": {"body": "Hi, is my order ready?"}}]})
    assert post_callback(client, cloud.id, payload)["messages"] == 1

    def inbound():
        return rows(committed, Message.client_id == cloud.id, Message.direction == "inbound")

    (msg,) = wait_for(inbound, timeout=20, message="the inbound message row")
    assert (msg.from_phone, msg.to_phone, msg.text, msg.type, msg.status) == (
        "+16315551181", BUSINESS_PHONE, "Hi, is my order ready?", "text", "received")
    assert msg.external_id == "wamid.HBgLMTYzMTU1NTExODEVAgASGBQzQTdDN0I" and msg.organization_id == committed_org.id
    contact = committed.scalars(select(Contact).where(Contact.organization_id == committed_org.id,
                                                      Contact.phone == "+16315551181")).one()
    assert msg.contact_id == contact.id and contact.name == "Kerry Fisher"
    assert contact.last_inbound_at == at(ts)
    assert [e.type for e in events(committed, msg.id)] == ["message.received"]
    listed = client.get("/api/messages", query_string={"direction": "inbound", "client_id": cloud.id},
                        headers=committed_headers)
    assert [(m["id"], m["from"], m["text"]) for m in listed.get_json()["items"]] == [
        (msg.id, "+16315551181", "Hi, is my order ready?")]

    # Meta delivers the same callback again: still one message
    post_callback(client, cloud.id, payload)
    wait_for(default_queue_drained, timeout=15, message="the repeated callback to be processed")
    assert len(inbound()) == 1


# ----------------------------------------------------------------------------------- Meta's errors


def test_throughput_error_is_retried_and_window_and_recipient_errors_fail_at_once(
        committed, committed_client, committed_headers, scripted_graph, cloud, wrote_first):
    client = committed_client
    busy, closed, nobody = "+14155550131", "+14155550132", "+14155550133"
    scripted_graph.fail_sends_to(busy, 130429, "Rate limit hit",
                        "Message failed to send because there were too many messages sent from this phone number")
    scripted_graph.fail_sends_to(closed, 131047, "Re-engagement message",
                        "Message failed to send because more than 24 hours have passed since the customer last replied")
    scripted_graph.fail_sends_to(nobody, 131026, "Message Undeliverable.", "Message Undeliverable.")
    ids = {}
    for to in (busy, closed, nobody):
        r = client.post("/api/messages", json={"client_id": cloud.id, "to": to, "text": f"hello {to}"},
                        headers=committed_headers)
        assert r.status_code == 202, r.get_json()
        ids[to] = r.get_json()["id"]

    failed = wait_status(client, committed_headers, ids[closed], "failed")
    assert failed["error"]["code"] == "outside_customer_window" and failed["attempts"] == 1
    assert failed["failed_at"] is not None and failed["sent_at"] is None
    undeliverable = wait_status(client, committed_headers, ids[nobody], "failed")
    assert undeliverable["error"]["code"] == "invalid_recipient" and undeliverable["attempts"] == 1

    # 130429: back to queued, retried after Meta's backoff, then sent -- by the second request only
    retried = wait_status(client, committed_headers, ids[busy], "sent", timeout=30)
    assert retried["attempts"] == 2 and retried["error"] is None
    (first, first_body), (second, second_body) = scripted_graph.sends_of(ids[busy])
    assert (first, first_body["error"]["code"], second) == (400, 130429, 200)
    committed.rollback()
    assert committed.get(Message, ids[busy]).external_id == second_body["messages"][0]["id"]
    assert history(committed, ids[busy]) == ["queued", "sending", "queued", "sending", "sent"]
    assert [e.type for e in events(committed, ids[busy])] == ["message.queued", "message.sent"]

    # the permanent errors were never retried, not even while the throughput retry waited
    assert [s for s, _ in scripted_graph.sends_of(ids[closed])] == [400]
    assert [s for s, _ in scripted_graph.sends_of(ids[nobody])] == [400]
    for to in (closed, nobody):
        assert history(committed, ids[to]) == ["queued", "sending", "failed"]
        evts = events(committed, ids[to])
        assert [e.type for e in evts] == ["message.queued", "message.failed"]
        assert evts[-1].payload["error"]["code"] == api_message(client, committed_headers, ids[to])["error"]["code"]
    assert len(scripted_graph.sent_messages()) == 4
