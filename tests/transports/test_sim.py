"""The sim transport: QR login, acks and replies on schedule (never sleeping), determinism under
a seed, the network counts shared by every process, injected faults, and its API hooks — with
real workers where the behaviour crosses processes (reconnects, bans)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.clients.info import load_client_info
from app.clients.models import BanAlert, Client, ClientStatusHistory
from app.db import new_id
from app.transports import transport_class
from app.transports.base import ClientInfo, MediaRef, OutboundMessage, PermanentSendError, TransientSendError
from app.transports.sim import SimNetwork, SimTransport, fake_phone, validate_config
from tests import factories as f
from tests.auth_helpers import principal_headers
from tests.procs import ROOT, wait_for
from tests.reports import reported


class RecordingSink:
    """Test double of the EventSink: remembers every report with its delay."""

    def __init__(self):
        self.statuses, self.acks, self.inbound_messages = [], [], []

    def status(self, client, status, detail=None, *, delay_ms=0):
        self.statuses.append((status, detail or {}, delay_ms))

    def ack(self, client, external_id, status, *, error=None, at=None, delay_ms=0, message_id=None):
        self.acks.append((external_id, status, delay_ms, at))

    def inbound(self, client, message, *, delay_ms=0):
        self.inbound_messages.append((message, delay_ms))

    def session_state(self, client, state):
        raise AssertionError("the sim keeps no login state")


def sim(config=None, client_id=None, sink=None):
    info = ClientInfo(id=client_id or new_id("cli"), organization_id="org_test", transport="sim", config=config or {})
    return SimTransport(info, sink or RecordingSink())


def text(to="+14155550123", message_id=None, body="hello"):
    return OutboundMessage(message_id=message_id or new_id("msg"), to=to, type="text", text=body)


# ----------------------------------------------------------------------------------- login

def test_registered_as_the_sim_transport():
    assert transport_class("sim") is SimTransport and SimTransport.stateful is False


def test_start_shows_a_qr_code_now_and_the_phone_scans_it_later():
    t = sim({"scan_after_ms": 1500})
    before = datetime.now(UTC)
    t.start()
    after = datetime.now(UTC)
    (qr, qr_detail, qr_delay), (ready, ready_detail, ready_delay) = t.events.statuses
    assert (qr, qr_delay) == ("qr", 0) and qr_detail["qr"].startswith("2@sim,")
    # the code lives 20 s (qr_ttl_ms) from the start, however long the start took
    expires = datetime.fromisoformat(qr_detail["expires_at"])
    assert before + timedelta(seconds=20) - timedelta(milliseconds=1) <= expires <= after + timedelta(seconds=20)
    assert (ready, ready_delay) == ("ready", 1500)
    assert ready_detail["phone"] == fake_phone(t.client.id) and ready_detail["phone"].startswith("+1555")
    assert qr_detail["session"] == ready_detail["session"] == t.network.session()


def test_slow_scans_rotate_the_qr_and_unscanned_ones_time_out():
    t = sim({"scan_after_ms": 45000, "qr_ttl_ms": 20000})
    t.start()
    assert [(s, d) for s, _, d in t.events.statuses] == [("qr", 0), ("qr", 20000), ("qr", 40000), ("ready", 45000)]
    assert len({detail["qr"] for s, detail, _ in t.events.statuses if s == "qr"}) == 3

    never = sim({"auto_scan": False, "qr_ttl_ms": 10000, "qr_rotations": 3})
    never.start()
    assert [(s, d) for s, _, d in never.events.statuses] == [("qr", 0), ("qr", 10000), ("qr", 20000), ("failed", 30000)]
    assert never.events.statuses[-1][1]["reason"].startswith("qr_timeout")


def test_a_scan_by_hand_links_the_account_and_makes_the_pending_reports_stale():
    t = sim({"auto_scan": False, "qr_ttl_ms": 10000, "qr_rotations": 3})
    t.start()
    pending = [detail["session"] for _, detail, _ in t.events.statuses]  # later QR codes and the timeout
    t.scan()
    ready, detail, delay = t.events.statuses[-1]
    assert (ready, delay) == ("ready", 0) and detail["phone"] == fake_phone(t.client.id)
    assert SimTransport.is_current_session(t.client.id, detail["session"])
    assert not any(SimTransport.is_current_session(t.client.id, token) for token in pending)
    assert t.network.linked(), "the login is kept: the next start needs no QR"


def test_the_login_survives_stop_but_not_logout():
    t = sim({"scan_after_ms": 0, "connect_after_ms": 50, "phone": "+447700900123"})
    t.start()
    first_session = t.network.session()
    t.stop()
    assert t.network.session() is None
    t.events.statuses.clear()
    t.start()
    assert [(s, d["phone"], delay) for s, d, delay in t.events.statuses] == [("ready", "+447700900123", 50)]
    assert not SimTransport.is_current_session(t.client.id, first_session), "the old session's reports are stale"
    assert SimTransport.is_current_session(t.client.id, t.network.session())
    t.logout()
    t.events.statuses.clear()
    t.start()
    assert [s for s, _, _ in t.events.statuses] == ["qr", "ready"]


def test_stopping_before_the_scan_forgets_the_pending_login():
    t = sim({"scan_after_ms": 60000, "qr_ttl_ms": 60000})
    t.start()
    t.stop()
    t.events.statuses.clear()
    t.start()
    assert t.events.statuses[0][0] == "qr"


def test_qr_payloads_are_fixed_by_the_seed():
    client_id = new_id("cli")
    a, b = sim({"seed": "s1"}, client_id), sim({"seed": "s1"}, client_id)
    a.start()
    b.network = SimNetwork(new_id("cli"))  # the same start number on a fresh network
    b.start()
    assert a.events.statuses[0][1]["qr"] == b.events.statuses[0][1]["qr"]
    c = sim({}, client_id)
    c.start()
    c.start()
    assert c.events.statuses[0][1]["qr"] != c.events.statuses[2][1]["qr"]


# ----------------------------------------------------------------------------------- sending

def test_send_returns_at_once_and_acks_come_later():
    t = sim({"deliver_after_ms": 300, "read_after_ms": 1500})
    message = text()
    result = t.send(message)
    assert result.status == "sent" and result.external_id.startswith("sim_")
    assert result.external_id == t.external_id(message.message_id)
    assert [(e, s, d) for e, s, d, _ in t.events.acks] == [(result.external_id, "delivered", 300),
                                                           (result.external_id, "read", 1500)]
    delivered_at, read_at = t.events.acks[0][3], t.events.acks[1][3]
    assert round((read_at - delivered_at).total_seconds(), 1) == 1.2
    assert t.events.inbound_messages == []  # reply_rate defaults to 0


def test_contacts_reply_and_read_at_the_configured_rates_deterministically():
    config = {"reply_rate": 0.5, "read_rate": 0.3, "reply_after_ms": 900, "reply_text": "Re: {text}", "seed": 42}
    client_id = new_id("cli")
    ids = [f"msg_{i:04d}" for i in range(400)]

    def run(cfg):
        t = sim(cfg, client_id)
        for mid in ids:
            t.send(text(message_id=mid, to="+14155550100", body=f"hi {mid}"))
        replied = {m.text.removeprefix("Re: hi ") for m, _ in t.events.inbound_messages}
        read = {e for e, s, _, _ in t.events.acks if s == "read"}
        return t, replied, read

    t, replied, read = run(config)
    assert 150 < len(replied) < 250 and 70 < len(read) < 170
    message, delay = t.events.inbound_messages[0]
    assert delay == 900 and message.from_phone == "+14155550100" and message.type == "text"
    SimNetwork(client_id).redis.delete(*[SimNetwork(client_id).key(k) for k in ("ids", "received")])
    _, replied_again, read_again = run(config)
    assert (replied_again, read_again) == (replied, read), "the same seed makes the same choices"
    SimNetwork(client_id).redis.delete(*[SimNetwork(client_id).key(k) for k in ("ids", "received")])
    _, replied_other, _ = run({**config, "seed": 43})
    assert replied_other != replied


def test_a_resend_is_counted_as_a_duplicate_and_not_acked_twice():
    t = sim()
    message = text()
    first, second = t.send(message), t.send(message)
    t.send(text())
    assert first.external_id == second.external_id
    assert t.network.counts() == {"received": 3, "distinct": 2, "duplicates": 1}
    assert sum(1 for e, s, _, _ in t.events.acks if e == first.external_id and s == "delivered") == 1


def test_every_media_type_is_sent_and_acked_like_a_text():
    t = sim({"reply_rate": 1.0, "reply_text": "Got: {text}"})
    media = MediaRef(media_id="med_1", mime_type="image/webp", path="/stored/med_1")
    kinds = ("image", "video", "audio", "voice", "document", "sticker")
    results = [t.send(OutboundMessage(message_id=f"msg_{kind}", to="+14155550123", type=kind, media=media,
                                      caption="a caption" if kind == "image" else None)) for kind in kinds]
    assert all(r.status == "sent" and r.external_id == t.external_id(f"msg_{k}") for r, k in zip(results, kinds))
    assert t.network.counts() == {"received": len(kinds), "distinct": len(kinds), "duplicates": 0}
    delivered = [e for e, s, _, _ in t.events.acks if s == "delivered"]
    assert delivered == [r.external_id for r in results]
    assert [m.text for m, _ in t.events.inbound_messages] == ["Got: a caption"] + ["Got: "] * (len(kinds) - 1)


def test_network_counts_are_shared_across_processes():
    client_id = new_id("cli")
    sim(client_id=client_id).send(text(message_id="msg_shared"))
    script = ("from app.transports.base import ClientInfo, OutboundMessage\n"
              "from app.transports.sim import SimTransport\n"
              "class Sink:\n    def ack(self, *a, **k): pass\n    def inbound(self, *a, **k): pass\n"
              f"t = SimTransport(ClientInfo(id='{client_id}', organization_id='o', transport='sim'), Sink())\n"
              "for m in ('msg_shared', 'msg_other'):\n"
              "    t.send(OutboundMessage(message_id=m, to='+14155550123', type='text', text='x'))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=os.environ, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert SimNetwork(client_id).counts() == {"received": 3, "distinct": 2, "duplicates": 1}


def test_fail_rate_refuses_recipients_permanently():
    t = sim({"fail_rate": 1})
    with pytest.raises(PermanentSendError) as err:
        t.send(text())
    assert err.value.code == "invalid_recipient" and t.network.counts()["received"] == 0


def test_injected_send_failures_transient_then_permanent():
    t = sim()
    t.inject_fail_next(2)
    for _ in range(2):
        with pytest.raises(TransientSendError):
            t.send(text())
    assert t.send(text()).status == "sent"
    t.inject_fail_next(1, permanent=True)
    with pytest.raises(PermanentSendError) as err:
        t.send(text())
    assert err.value.code == "sim_fault"
    assert t.network.counts()["received"] == 1, "failed sends never reached the network"


def test_a_banned_account_cannot_start_or_send():
    t = sim({"scan_after_ms": 0})
    t.start()
    t.inject_ban()
    assert t.events.statuses[-1][0] == "banned"
    t.events.statuses.clear()
    t.start()
    assert [s for s, _, _ in t.events.statuses] == ["banned"]
    with pytest.raises(TransientSendError):
        t.send(text())
    t.network.clear_faults()
    t.events.statuses.clear()
    t.start()
    assert [s for s, _, _ in t.events.statuses] == ["qr", "ready"], "the ban also ended the login"


def test_disconnect_fault_refuses_count_minus_one_reconnects():
    t = sim({"scan_after_ms": 0})
    t.start()
    t.inject_disconnect(3)
    assert t.events.statuses[-1][0] == "disconnected"
    for expected in ("disconnected", "disconnected", "ready"):
        t.events.statuses.clear()
        t.start()
        assert t.events.statuses[0][0] == expected


@pytest.mark.parametrize("config, field", [
    ({"scan_after_ms": -1}, "scan_after_ms"), ({"scan_after_ms": "soon"}, "scan_after_ms"),
    ({"qr_ttl_ms": 10}, "qr_ttl_ms"), ({"read_rate": 1.5}, "read_rate"), ({"reply_rate": True}, "reply_rate"),
    ({"phone": "0612345678"}, "phone"), ({"auto_scan": "no"}, "auto_scan"), ({"reply_text": ""}, "reply_text"),
    ({"qr_rotations": 0}, "qr_rotations"), ({"unknown": 1}, "unknown"), ({"seed": [1]}, "seed"),
])
def test_config_validation(config, field):
    assert field in validate_config(config)


def test_valid_config_passes():
    assert validate_config({"scan_after_ms": 0, "auto_scan": True, "read_rate": 0, "reply_rate": 0.25, "seed": 7,
                            "phone": "+14155550123", "reply_text": "ok {text}", "fail_rate": 0.1}) == {}


# ----------------------------------------------------------------------------------- API hooks

def queued(redis_conn, actor_name, queue="default"):
    bodies = [json.loads(v) for q in (queue, f"{queue}.DQ") for v in redis_conn.hvals(f"dramatiq:{q}.msgs")]
    return [b for b in bodies if b["actor_name"] == actor_name]


def test_inbound_endpoint_reports_an_inbound_message(client, session, org, admin_headers, redis_conn):
    c = f.make_client(session, organization_id=org.id, status="ready")
    resp = client.post(f"/api/clients/{c.id}/sim/inbound", json={"from": "+14155550199", "text": "Hi there"},
                       headers=admin_headers)
    assert resp.status_code == 202, resp.get_json()
    [row] = reported(session, "inbound")
    payload = row.payload
    assert row.client_id == c.id and payload["from_phone"] == "+14155550199" and payload["text"] == "Hi there"
    assert payload["external_id"] == resp.get_json()["external_id"]
    [job] = queued(redis_conn, "inbox.apply_due")  # the report is data: one wake-up job applies what is due
    assert job["args"][0] >= int(row.created_at.timestamp() * 1000)

    bad = client.post(f"/api/clients/{c.id}/sim/inbound", json={"from": "0612", "text": "x"}, headers=admin_headers)
    assert bad.status_code == 422 and "from" in bad.get_json()["error"]["details"]
    waiting = f.make_client(session, organization_id=org.id, status="qr")
    resp = client.post(f"/api/clients/{waiting.id}/sim/inbound", json={"from": "+14155550199", "text": "x"},
                       headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "client_not_ready"


def test_scan_endpoint_scans_the_qr_shown_now_and_only_then(client, session, org, admin_headers, redis_conn):
    c = f.make_client(session, organization_id=org.id, status="qr", config={"auto_scan": False})
    resp = client.post(f"/api/clients/{c.id}/sim/scan", headers=admin_headers)
    assert resp.status_code == 202, resp.get_json()
    assert resp.get_json()["id"] == c.id
    [row] = reported(session, "status")
    status, detail = row.payload["status"], row.payload["detail"]
    assert (row.client_id, status) == (c.id, "ready") and SimTransport.is_current_session(c.id, detail["session"])

    for state in ("ready", "created", "starting"):
        other = f.make_client(session, organization_id=org.id, status=state)
        refused = client.post(f"/api/clients/{other.id}/sim/scan", headers=admin_headers)
        assert refused.status_code == 409 and refused.get_json()["error"]["code"] == "client_not_in_qr_state"
    viewer = principal_headers(session, org, "viewer")
    assert client.post(f"/api/clients/{c.id}/sim/scan", headers=viewer).status_code == 403


def test_the_qr_of_a_starting_client_says_when_to_ask_again(client, session, org, admin_headers):
    starting = f.make_client(session, organization_id=org.id, status="starting")
    resp = client.get(f"/api/clients/{starting.id}/qr", headers=admin_headers)
    assert resp.status_code == 409 and resp.headers["Retry-After"] == "1"
    error = resp.get_json()["error"]
    assert error["code"] == "client_not_in_qr_state" and error["details"] == {"status": "starting", "retry_after": 1}
    assert "retry in 1 s" in error["message"]
    ready = f.make_client(session, organization_id=org.id, status="ready")
    resp = client.get(f"/api/clients/{ready.id}/qr", headers=admin_headers)
    assert resp.status_code == 409 and "Retry-After" not in resp.headers and "already linked" in resp.get_json()["error"]["message"]


def test_sim_endpoints_are_404_for_other_transports_and_other_organisations(client, session, org, admin_headers):
    cloud = f.make_client(session, organization_id=org.id, transport="cloud", status="ready")
    foreign = f.make_client(session, status="ready")
    for client_id in (cloud.id, foreign.id):
        assert client.get(f"/api/clients/{client_id}/sim/network", headers=admin_headers).status_code == 404
        assert client.post(f"/api/clients/{client_id}/sim/fault", json={"type": "ban"},
                           headers=admin_headers).status_code == 404
        assert client.post(f"/api/clients/{client_id}/sim/inbound", json={"from": "+14155550199", "text": "x"},
                           headers=admin_headers).status_code == 404
        assert client.post(f"/api/clients/{client_id}/sim/scan", headers=admin_headers).status_code == 404


def test_network_endpoint_and_fail_next_fault(client, session, org, admin_headers):
    c = f.make_client(session, organization_id=org.id, status="ready")
    t = SimTransport(load_client_info(session, c.id), RecordingSink())
    t.send(text(message_id="msg_a"))
    t.send(text(message_id="msg_a"))
    t.send(text(message_id="msg_b"))
    body = client.get(f"/api/clients/{c.id}/sim/network", headers=admin_headers).get_json()
    assert (body["received"], body["distinct"], body["duplicates"]) == (3, 2, 1)

    resp = client.post(f"/api/clients/{c.id}/sim/fault", json={"type": "fail_next", "count": 2}, headers=admin_headers)
    assert resp.status_code == 202 and resp.get_json()["faults"]["fail_next"] == 2
    with pytest.raises(TransientSendError):
        t.send(text())
    assert client.get(f"/api/clients/{c.id}/sim/network", headers=admin_headers).get_json()["faults"]["fail_next"] == 1
    client.post(f"/api/clients/{c.id}/sim/fault", json={"type": "clear"}, headers=admin_headers)
    assert t.send(text()).status == "sent"
    bad = client.post(f"/api/clients/{c.id}/sim/fault", json={"type": "explode"}, headers=admin_headers)
    assert bad.status_code == 422
    stopped = f.make_client(session, organization_id=org.id, status="stopped")
    resp = client.post(f"/api/clients/{stopped.id}/sim/fault", json={"type": "disconnect"}, headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "client_not_connected"


# ----------------------------------------------------------------------------------- real workers

@pytest.fixture
def ready_client(committed, committed_client):
    """A committed org, its admin headers and a function that starts a sim client and waits for ready."""
    org = f.make_organization(committed)
    headers = principal_headers(committed, org, "admin")
    committed.commit()

    def start(**config) -> str:
        created = committed_client.post("/api/clients", headers=headers, json={
            "name": "Sim", "config": {"scan_after_ms": 100, "connect_after_ms": 50, **config}}).get_json()
        committed_client.post(f"/api/clients/{created['id']}/start", headers=headers)
        wait_for(lambda: status(created["id"]) == "ready", timeout=30, message="the client to be ready")
        return created["id"]

    def status(client_id) -> str:
        return committed_client.get(f"/api/clients/{client_id}", headers=headers).get_json()["status"]

    return start, status, headers


def statuses(committed, client_id):
    committed.expire_all()
    return [h.status for h in committed.scalars(select(ClientStatusHistory).where(
        ClientStatusHistory.client_id == client_id).order_by(ClientStatusHistory.id))]


@pytest.mark.workers
def test_a_dropped_connection_reconnects_by_itself(committed, committed_client, ready_client, run_pool):
    run_pool("default", CLIENT_RECONNECT_BASE_MS="200", CLIENT_RECONNECT_ATTEMPTS="2")
    start, status, headers = ready_client
    client_id = start()
    resp = committed_client.post(f"/api/clients/{client_id}/sim/fault", json={"type": "disconnect"}, headers=headers)
    assert resp.status_code == 202
    wait_for(lambda: statuses(committed, client_id)[-3:] == ["disconnected", "starting", "ready"], timeout=30,
             message="the reconnect")
    assert statuses(committed, client_id).count("qr") == 1, "a reconnect needs no new QR"
    assert status(client_id) == "ready"

    # a network that keeps refusing: two attempts, then the client fails and an alert is raised
    committed_client.post(f"/api/clients/{client_id}/sim/fault", json={"type": "disconnect", "count": 5},
                          headers=headers)
    wait_for(lambda: status(client_id) == "failed", timeout=30, message="giving up")
    assert statuses(committed, client_id)[-6:] == ["disconnected", "starting", "disconnected", "starting",
                                                   "disconnected", "failed"]
    alerts = committed.scalars(select(BanAlert).where(BanAlert.client_id == client_id)).all()
    assert [a.kind for a in alerts] == ["disconnected"]


@pytest.mark.workers
def test_a_client_without_auto_scan_waits_for_a_scan_and_stays_ready(committed, committed_client, ready_client,
                                                                      run_pool, redis_conn):
    run_pool("default")
    _, status, headers = ready_client
    created = committed_client.post("/api/clients", headers=headers, json={
        "name": "Manual", "config": {"auto_scan": False, "qr_ttl_ms": 2000, "qr_rotations": 5}}).get_json()
    cid = created["id"]
    committed_client.post(f"/api/clients/{cid}/start", headers=headers)
    wait_for(lambda: committed_client.get(f"/api/clients/{cid}/qr", headers=headers).status_code == 200,
             timeout=30, message="the QR code")
    assert committed_client.post(f"/api/clients/{cid}/sim/scan", headers=headers).status_code == 202
    wait_for(lambda: status(cid) == "ready", timeout=30, message="ready after the scan")
    # the start's later QR codes and its qr_timeout failure (10 s after the start) come and are ignored
    wait_for(lambda: not queued(redis_conn, "inbox.apply_due"), timeout=30, message="every pending report handled")
    assert status(cid) == "ready"
    assert statuses(committed, cid) == ["created", "starting", "qr", "ready"]


@pytest.mark.workers
def test_a_ban_stops_the_client_pauses_it_and_alerts(committed, committed_client, ready_client, run_pool):
    run_pool("default")
    start, status, headers = ready_client
    client_id = start()
    committed_client.post(f"/api/clients/{client_id}/sim/fault", json={"type": "ban"}, headers=headers)
    wait_for(lambda: status(client_id) == "banned", timeout=30, message="the ban")
    committed.expire_all()
    row = committed.get(Client, client_id)
    assert row.paused is True and row.last_error
    [alert] = committed.scalars(select(BanAlert).where(BanAlert.client_id == client_id)).all()
    assert alert.kind == "banned" and alert.organization_id == row.organization_id
    body = committed_client.get(f"/api/clients/{client_id}", headers=headers).get_json()
    assert body["paused"] is True

    # still banned on the network: a restart is banned again; once lifted, a new QR login works
    committed_client.post(f"/api/clients/{client_id}/start", headers=headers)
    wait_for(lambda: statuses(committed, client_id)[-2:] == ["starting", "banned"], timeout=30, message="banned again")
    committed_client.post(f"/api/clients/{client_id}/sim/fault", json={"type": "clear"}, headers=headers)
    committed_client.post(f"/api/clients/{client_id}/start", headers=headers)
    wait_for(lambda: status(client_id) == "ready", timeout=30, message="ready after the ban was lifted")
    assert statuses(committed, client_id)[-3:] == ["starting", "qr", "ready"]
    assert committed_client.get(f"/api/clients/{client_id}", headers=headers).get_json()["paused"] is False
