"""Clients: CRUD, validation, tenancy and agents, the lifecycle and its status reports, the QR
endpoint, and a sim client connecting through a real `default` worker pool."""
from __future__ import annotations

import io
import json

import pytest
import segno
from PIL import Image
from sqlalchemy import select

from app.audit.models import AuditLog
from app.clients import lifecycle, session_state
from app.clients.info import load_client_info
from app.clients.models import BanAlert, Client, ClientSession, ClientStatusHistory
from app.db import utcnow
from app.models import JobOutbox
from app.security.crypto import encrypt
from app.webhooks.models import WebhookEvent
from config import settings
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers, user_with_headers
from tests.procs import wait_for


def audit_rows(session, action, target_id):
    return list(session.scalars(select(AuditLog).where(AuditLog.action == action, AuditLog.target_id == target_id)))


def history(session, client_id):
    return [(h.from_status, h.status) for h in session.scalars(
        select(ClientStatusHistory).where(ClientStatusHistory.client_id == client_id).order_by(ClientStatusHistory.id))]


def events(session, client_id, event_type=None):
    rows = session.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at, WebhookEvent.id))
    return [e for e in rows if e.payload.get("id") == client_id and (event_type is None or e.type == event_type)]


def outbox_jobs(session, actor_name):
    return list(session.scalars(select(JobOutbox).where(JobOutbox.actor_name == actor_name)))


# ----------------------------------------------------------------------------------- CRUD

def test_create_get_list_update_delete(client, session, org, admin_headers):
    body = {"name": "Sales line", "transport": "sim", "config": {"scan_after_ms": 500, "seed": 7},
            "limits": {"per_minute": 10, "per_hour": 50, "per_day": 400, "min_gap_ms": 1000, "max_gap_ms": 3000}}
    resp = client.post("/api/clients", json=body, headers=admin_headers)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert created["id"].startswith("cli_") and created["name"] == "Sales line" and created["transport"] == "sim"
    assert created["status"] == "created" and created["phone"] is None and created["last_seen_at"] is None
    assert created["limits"] == body["limits"] and created["config"] == {"scan_after_ms": 500, "seed": 7}
    assert created["paused"] is False and created["proxy_id"] is None and created["created_at"]
    client_id = created["id"]
    assert history(session, client_id) == [(None, "created")]
    assert audit_rows(session, "client.create", client_id)[0].changes["limits"] == body["limits"]

    assert client.get(f"/api/clients/{client_id}", headers=admin_headers).get_json() == created
    assert [c["id"] for c in client.get("/api/clients", headers=admin_headers).get_json()["items"]] == [client_id]

    resp = client.patch(f"/api/clients/{client_id}", json={"name": "Support", "limits": {"per_minute": 5}},
                        headers=admin_headers)
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["name"] == "Support" and resp.get_json()["limits"]["per_minute"] == 5
    assert resp.get_json()["limits"]["per_hour"] == 50  # the other limits are kept
    [update] = audit_rows(session, "client.update", client_id)
    assert update.changes == {"name": {"from": "Sales line", "to": "Support"}, "per_minute": {"from": 10, "to": 5}}

    assert client.delete(f"/api/clients/{client_id}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/clients/{client_id}", headers=admin_headers).status_code == 404
    assert client.get("/api/clients", headers=admin_headers).get_json()["items"] == []
    assert session.get(Client, client_id).deleted_at is not None
    assert audit_rows(session, "client.delete", client_id)
    assert outbox_jobs(session, "clients.logout") == [], "a client that never ran has nothing to log out"


def test_default_limits_and_transport(client, admin_headers):
    created = client.post("/api/clients", json={"name": "Defaults"}, headers=admin_headers).get_json()
    assert created["transport"] == settings.DEFAULT_TRANSPORT == "sim"
    assert created["limits"] == {"per_minute": 20, "per_hour": 100, "per_day": 1000, "min_gap_ms": 2000,
                                 "max_gap_ms": 5000}


def test_secret_config_is_encrypted_never_returned_and_merged_on_patch(client, session, admin_headers):
    config = {"phone_number_id": "1234567890", "access_token": "EAAG-secret-token", "app_secret": "app-secret-1",
              "verify_token": "verify-me"}
    resp = client.post("/api/clients", json={"name": "Cloud", "transport": "cloud", "config": config},
                       headers=admin_headers)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert created["config"] == {"phone_number_id": "1234567890"}
    assert "EAAG-secret-token" not in resp.get_data(as_text=True)
    row = session.get(Client, created["id"])
    assert "EAAG" not in row.secrets_encrypted and row.secrets_encrypted.startswith("v1:")
    info = load_client_info(session, created["id"])
    assert info.secrets == {"access_token": "EAAG-secret-token", "app_secret": "app-secret-1", "verify_token": "verify-me"}
    assert info.config == {"phone_number_id": "1234567890"} and info.transport == "cloud" and info.proxy is None

    resp = client.patch(f"/api/clients/{created['id']}", headers=admin_headers, json={
        "config": {"access_token": "EAAG-rotated", "verify_token": None, "api_version": "v21.0"}})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["config"] == {"phone_number_id": "1234567890", "api_version": "v21.0"}
    assert "EAAG" not in resp.get_data(as_text=True)
    session.expire_all()
    assert load_client_info(session, created["id"]).secrets == {"access_token": "EAAG-rotated",
                                                                        "app_secret": "app-secret-1"}
    audits = json.dumps([a.changes for a in session.scalars(select(AuditLog).where(AuditLog.target_id == created["id"]))])
    assert "EAAG" not in audits and "app-secret-1" not in audits and "verify-me" not in audits
    assert "access_token" in audits  # the key names are recorded, never the values


@pytest.mark.parametrize("body, field", [
    ({"name": ""}, "name"),
    ({}, "name"),
    ({"name": "x", "transport": "telegram"}, "transport"),
    ({"name": "x", "limits": {"per_minute": 0}}, "limits"),
    ({"name": "x", "limits": {"per_minute": 30, "per_hour": 20}}, "limits"),
    ({"name": "x", "limits": {"per_hour": 5000}}, "limits"),  # above the default per_day
    ({"name": "x", "limits": {"min_gap_ms": 6000}}, "limits"),  # above the default max_gap_ms
    ({"name": "x", "limits": {"per_minute": "many"}}, "limits"),
    ({"name": "x", "config": {"scan_after_ms": -5}}, "config"),
    ({"name": "x", "config": {"scan_aftr_ms": 5}}, "config"),
    ({"name": "x", "config": {"reply_rate": 2}}, "config"),
    ({"name": "x", "config": {"access_token": 42}}, "config"),
    ({"name": "x", "config": {"blob": "x" * 20000}}, "config"),
    ({"name": "x", "proxy_id": "prx_unknown"}, "proxy_id"),
    ({"name": "x", "colour": "blue"}, "colour"),
])
def test_create_validation(client, admin_headers, body, field):
    resp = client.post("/api/clients", json=body, headers=admin_headers)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["error"]["code"] == "validation_error"
    assert field in resp.get_json()["error"]["details"]


def test_limit_order_is_checked_against_the_stored_limits_on_patch(client, session, org, admin_headers):
    c = f.make_client(session, organization_id=org.id)
    resp = client.patch(f"/api/clients/{c.id}", json={"limits": {"per_day": 50}},  # per_hour is 100
                        headers=admin_headers)
    assert resp.status_code == 422
    assert resp.get_json()["error"]["details"] == {"limits": {"per_day": ["Must be at least per_hour (100)."]}}
    assert client.patch(f"/api/clients/{c.id}", json={"transport": "web"}, headers=admin_headers).status_code == 422
    assert client.patch(f"/api/clients/{c.id}", json={"limits": {"max_gap_ms": 1000}},
                        headers=admin_headers).status_code == 422


def test_list_filters_and_pagination(client, session, org, admin_headers):
    a = f.make_client(session, organization_id=org.id, status="ready")
    b = f.make_client(session, organization_id=org.id, transport="cloud")
    c = f.make_client(session, organization_id=org.id, transport="web", status="stopped")
    ids = lambda q: [x["id"] for x in  # noqa: E731
                     client.get(f"/api/clients{q}", headers=admin_headers).get_json()["items"]]
    assert ids("") == [c.id, b.id, a.id]
    assert ids("?status=ready") == [a.id]
    assert ids("?transport=cloud") == [b.id]
    assert ids("?transport=web&status=stopped") == [c.id]
    first = client.get("/api/clients?limit=2", headers=admin_headers).get_json()
    assert [x["id"] for x in first["items"]] == [c.id, b.id] and first["next_cursor"]
    assert ids(f"?limit=2&cursor={first['next_cursor']}") == [a.id]
    assert client.get("/api/clients?status=sleeping", headers=admin_headers).status_code == 422


def test_other_organisations_clients_are_404(client, session, org, admin_headers):
    other = f.make_client(session, status="qr", qr="2@x")
    for method, path in [("get", ""), ("patch", ""), ("delete", ""), ("post", "/start"), ("post", "/stop"),
                         ("post", "/logout"), ("get", "/qr")]:
        kwargs = {"json": {"name": "mine now"}} if method == "patch" else {}
        resp = getattr(client, method)(f"/api/clients/{other.id}{path}", headers=admin_headers, **kwargs)
        assert resp.status_code == 404, (method, path, resp.status_code)
    assert client.get("/api/clients", headers=admin_headers).get_json()["items"] == []
    assert session.get(Client, other.id).name != "mine now"


def test_agents_see_and_use_only_their_assigned_clients(client, session, org):
    mine = f.make_client(session, organization_id=org.id, status="ready")
    theirs = f.make_client(session, organization_id=org.id, status="ready")
    _, agent = user_with_headers(session, org, "agent", client_ids=[mine.id])
    assert [c["id"] for c in client.get("/api/clients", headers=agent).get_json()["items"]] == [mine.id]
    assert client.get(f"/api/clients/{mine.id}", headers=agent).status_code == 200
    assert client.get(f"/api/clients/{theirs.id}", headers=agent).status_code == 404
    assert client.get("/api/clients?status=ready", headers=agent).get_json()["items"][0]["id"] == mine.id
    # agents neither create nor operate clients
    assert client.post("/api/clients", json={"name": "x"}, headers=agent).status_code == 403
    assert client.post(f"/api/clients/{mine.id}/stop", headers=agent).status_code == 403
    # the sim hooks: on their own client only
    assert client.get(f"/api/clients/{mine.id}/sim/network", headers=agent).status_code == 200
    assert client.get(f"/api/clients/{theirs.id}/sim/network", headers=agent).status_code == 404
    viewer = api_key_headers(session, org, "viewer")
    assert client.get("/api/clients", headers=viewer).status_code == 200
    assert client.patch(f"/api/clients/{mine.id}", json={"name": "x"}, headers=viewer).status_code == 403
    assert client.get(f"/api/clients/{mine.id}/sim/network", headers=viewer).status_code == 403


def test_proxy_must_belong_to_the_organisation_and_reaches_the_transport(client, session, org, admin_headers):
    own = f.make_proxy(session, organization_id=org.id, scheme="socks5", host="10.1.2.3", port=1080, username="u",
                       password_encrypted=encrypt("p@ss"))
    foreign = f.make_proxy(session)
    resp = client.post("/api/clients", json={"name": "x", "proxy_id": foreign.id}, headers=admin_headers)
    assert resp.status_code == 422 and "proxy_id" in resp.get_json()["error"]["details"]
    created = client.post("/api/clients", json={"name": "x", "proxy_id": own.id}, headers=admin_headers).get_json()
    assert created["proxy_id"] == own.id
    proxy = load_client_info(session, created["id"]).proxy
    assert (proxy.scheme, proxy.host, proxy.port, proxy.username, proxy.password) == ("socks5", "10.1.2.3", 1080, "u", "p@ss")
    assert client.patch(f"/api/clients/{created['id']}", json={"proxy_id": foreign.id},
                        headers=admin_headers).status_code == 422
    resp = client.patch(f"/api/clients/{created['id']}", json={"proxy_id": None}, headers=admin_headers)
    assert resp.status_code == 200 and resp.get_json()["proxy_id"] is None
    assert load_client_info(session, created["id"]).proxy is None


# ----------------------------------------------------------------------------------- lifecycle (API)

def test_start_stop_logout_move_the_status_and_enqueue_jobs(client, session, org, admin_headers):
    c = f.make_client(session, organization_id=org.id)
    assert client.post(f"/api/clients/{c.id}/stop", headers=admin_headers).status_code == 409
    resp = client.post(f"/api/clients/{c.id}/logout", headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "client_not_started"

    resp = client.post(f"/api/clients/{c.id}/start", headers=admin_headers)
    assert resp.status_code == 202 and resp.get_json()["status"] == "starting"
    assert [j.args for j in outbox_jobs(session, "clients.start")] == [[c.id]]
    again = client.post(f"/api/clients/{c.id}/start", headers=admin_headers)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "client_already_running"

    resp = client.post(f"/api/clients/{c.id}/stop", headers=admin_headers)
    assert resp.status_code == 202 and resp.get_json()["status"] == "stopped"
    assert [j.args for j in outbox_jobs(session, "clients.stop")] == [[c.id]]
    assert client.post(f"/api/clients/{c.id}/stop",
                       headers=admin_headers).get_json()["error"]["code"] == "client_not_running"

    resp = client.post(f"/api/clients/{c.id}/logout", headers=admin_headers)
    assert resp.status_code == 202 and resp.get_json()["status"] == "stopped"
    assert [j.args for j in outbox_jobs(session, "clients.logout")] == [[c.id]]

    assert history(session, c.id) == [("created", "starting"), ("starting", "stopped")]
    for action in ("client.start", "client.stop", "client.logout"):
        assert audit_rows(session, action, c.id), action
    assert session.get(Client, c.id).status_changed_at is not None


def test_deleting_a_running_client_stops_it_and_logs_it_out(client, session, org, admin_headers):
    c = f.make_client(session, organization_id=org.id, status="ready", phone="+15550001111")
    assert client.delete(f"/api/clients/{c.id}", headers=admin_headers).status_code == 204
    session.expire_all()
    assert session.get(Client, c.id).status == "stopped"
    assert [j.args for j in outbox_jobs(session, "clients.logout")] == [[c.id]]
    assert [e.type for e in events(session, c.id)] == ["client.disconnected"]
    # the logout job still finds the deleted client
    assert load_client_info(session, c.id).id == c.id


def qr_matrix_from_png(png: bytes, size: int, border: int = 4) -> list[list[bool]]:
    """The dark/light modules of a QR PNG with ``size`` modules a side and a ``border`` quiet zone."""
    image = Image.open(io.BytesIO(png)).convert("L")
    width, height = image.size
    assert width == height and width % (size + 2 * border) == 0, (width, size)
    scale = width // (size + 2 * border)
    assert all(image.getpixel((x, 1)) > 128 for x in range(width)), "the quiet zone is light"
    return [[image.getpixel(((border + col) * scale + scale // 2, (border + row) * scale + scale // 2)) < 128
             for col in range(size)] for row in range(size)]


def decode_qr_png(png: bytes) -> list[str]:
    """What a scanner reads from the image: the payloads of every QR code zxing-cpp finds in it."""
    import zxingcpp

    image = Image.open(io.BytesIO(png))
    return [r.text for r in zxingcpp.read_barcodes(image.convert("L"), formats=zxingcpp.BarcodeFormat.QRCode)]


def assert_png_is_qr_of(png: bytes, payload: str) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert decode_qr_png(png) == [payload], "a QR scanner reads the payload back from the PNG"
    expected = [[bool(v) for v in row] for row in segno.make_qr(payload, error="m").matrix]
    assert qr_matrix_from_png(png, len(expected)) == expected


def test_the_qr_decoder_of_these_tests_reads_what_it_is_shown():
    """The check above can fail: another payload, or an image without a code, do not decode to it."""
    from app.clients.service import qr_png

    assert decode_qr_png(qr_png("2@other,payload")) != ["2@sim,expected"]
    blank = io.BytesIO()
    Image.new("L", (200, 200), 255).save(blank, format="PNG")
    assert decode_qr_png(blank.getvalue()) == []


def test_qr_endpoint_json_png_and_409(client, session, org, admin_headers):
    c = f.make_client(session, organization_id=org.id)
    resp = client.get(f"/api/clients/{c.id}/qr", headers=admin_headers)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "client_not_in_qr_state"

    lifecycle.set_status(session, c, "starting")
    payload = "2@sim,QUJDREVGR0hJSktMTU5PUFFSU1RVVldY,cli_test"
    lifecycle.record_status(session, c.id, "qr", {"qr": payload, "expires_at": "2030-01-01T00:00:20+00:00"})
    body = client.get(f"/api/clients/{c.id}/qr", headers=admin_headers).get_json()
    assert body == {"qr": payload, "expires_at": "2030-01-01T00:00:20+00:00"}
    resp = client.get(f"/api/clients/{c.id}/qr", headers={**admin_headers, "Accept": "image/png"})
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    assert resp.headers["Cache-Control"] == "no-store"
    assert_png_is_qr_of(resp.data, payload)

    lifecycle.record_status(session, c.id, "ready", {"phone": "+15550002222"})
    assert client.get(f"/api/clients/{c.id}/qr", headers={**admin_headers, "Accept": "image/png"}).status_code == 409
    viewer = principal_headers(session, org, "viewer")
    assert client.get(f"/api/clients/{c.id}/qr", headers=viewer).status_code == 403


# ----------------------------------------------------------------------------------- status reports

def test_reports_walk_a_client_to_ready_with_history_and_events(session):
    c = f.make_client(session, status="starting", paused=True)
    lifecycle.record_status(session, c.id, "qr", {"qr": "2@one", "expires_at": "2030-01-01T00:00:00Z"})
    lifecycle.record_status(session, c.id, "qr", {"qr": "2@two", "expires_at": "2030-01-01T00:00:20Z"})
    assert session.get(Client, c.id).qr == "2@two"
    lifecycle.record_status(session, c.id, "ready", {"phone": "+15550003333"})
    row = session.get(Client, c.id)
    assert (row.status, row.phone, row.paused, row.qr) == ("ready", "+15550003333", False, None)
    assert row.last_seen_at is not None
    assert history(session, c.id) == [("starting", "qr"), ("qr", "ready")]
    sent = events(session, c.id)
    assert [e.type for e in sent] == ["client.qr", "client.qr", "client.connected"]
    assert [e.payload["qr"] for e in sent[:2]] == ["2@one", "2@two"] and sent[1].payload["qr_expires_at"]
    assert "qr" not in sent[2].payload
    assert sent[-1].payload["status"] == "ready" and sent[-1].payload["phone"] == "+15550003333"
    assert sent[-1].payload["limits"]["per_minute"] == 20 and "secrets_encrypted" not in sent[-1].payload


def test_late_reports_of_a_stopped_session_are_ignored(session):
    c = f.make_client(session, status="stopped")
    for status in ("qr", "ready", "disconnected", "failed", "logged_out"):
        assert lifecycle.record_status(session, c.id, status, {"qr": "x"}) is None
    assert session.get(Client, c.id).status == "stopped" and history(session, c.id) == []
    gone = f.make_client(session, status="ready", deleted_at=utcnow())
    assert lifecycle.record_status(session, gone.id, "banned", {}) is None
    assert lifecycle.record_status(session, "cli_nobody", "ready", {}) is None


def test_ban_pauses_the_client_and_raises_an_alert(session):
    c = f.make_client(session, status="ready")
    lifecycle.record_status(session, c.id, "banned", {"reason": "spam reports"})
    row = session.get(Client, c.id)
    assert (row.status, row.paused, row.last_error) == ("banned", True, "spam reports")
    [alert] = session.scalars(select(BanAlert).where(BanAlert.client_id == c.id))
    assert alert.kind == "banned" and alert.details["reason"] == "spam reports"
    assert [e.type for e in events(session, c.id)] == ["client.banned"]


def test_logout_from_the_phone_stops_pauses_alerts_and_forgets_the_login(session):
    c = f.make_client(session, status="ready", transport="web")
    f.make_client_session(session, client_id=c.id, state_encrypted=encrypt(b"cookies"))
    lifecycle.record_status(session, c.id, "logged_out", {"reason": "unlinked on the phone"})
    row = session.get(Client, c.id)
    assert (row.status, row.paused) == ("stopped", True)
    assert [a.kind for a in session.scalars(select(BanAlert).where(BanAlert.client_id == c.id))] == ["logged_out"]
    assert session.get(ClientSession, c.id).state_encrypted is None
    assert [e.type for e in events(session, c.id)] == ["client.disconnected"]


def test_disconnects_reconnect_with_backoff_then_give_up(session, override_settings):
    c = f.make_client(session, status="ready")
    with override_settings(CLIENT_RECONNECT_ATTEMPTS=2, CLIENT_RECONNECT_BASE_MS=1000):
        lifecycle.record_status(session, c.id, "disconnected", {"reason": "network"})
        assert session.get(Client, c.id).status == "disconnected"
        [job] = outbox_jobs(session, "clients.start")
        assert job.args == [c.id] and job.queue_name == "default" and job.options["eta"]
        # the reconnect attempt starts and is dropped again
        assert lifecycle.begin_start(session, c.id).id == c.id
        lifecycle.record_status(session, c.id, "disconnected", {"reason": "network"})
        assert len(outbox_jobs(session, "clients.start")) == 2
        lifecycle.begin_start(session, c.id)
        lifecycle.record_status(session, c.id, "disconnected", {"reason": "network"})
    row = session.get(Client, c.id)
    assert row.status == "failed" and "gave up" in row.last_error
    assert len(outbox_jobs(session, "clients.start")) == 2, "no third attempt"
    assert [a.kind for a in session.scalars(select(BanAlert).where(BanAlert.client_id == c.id))] == ["disconnected"]
    assert history(session, c.id)[-2:] == [("starting", "disconnected"), ("disconnected", "failed")]


def test_reconnect_delays_double_up_to_the_cap(override_settings):
    with override_settings(CLIENT_RECONNECT_BASE_MS=1000, CLIENT_RECONNECT_MAX_MS=5000):
        delays = [lifecycle.reconnect_delay_ms(n) for n in (1, 2, 3, 4, 10)]
    assert 800 <= delays[0] <= 1000 and 1600 <= delays[1] <= 2000 and 3200 <= delays[2] <= 4000
    assert 4000 <= delays[3] <= 5000 and 4000 <= delays[4] <= 5000


def test_ready_sends_on_the_messages_that_waited_for_the_client(session):
    from app.models import JobOutbox, Message

    c = f.make_client(session, status="qr", paused=True)
    waiting = [f.make_message(session, client_id=c.id, organization_id=c.organization_id) for _ in range(2)]
    lifecycle.record_status(session, c.id, "ready", {})
    jobs_for = lambda: sorted(r.args[0] for r in session.scalars(  # noqa: E731
        select(JobOutbox).where(JobOutbox.actor_name == "messages.send")))
    assert jobs_for() == sorted(m.id for m in waiting), "each waiting message gets its send job"
    assert all(session.get(Message, m.id).status == "queued" for m in waiting)
    lifecycle.record_status(session, c.id, "ready", {})  # still ready, not paused: nothing to resume
    assert len(jobs_for()) == 2


def test_session_state_is_stored_encrypted(session):
    import base64

    from jobs.clients import save_session_state

    c = f.make_client(session, transport="web")
    save_session_state.fn(c.id, base64.b64encode(b'{"cookies": "secret-cookie"}').decode())
    row = session.get(ClientSession, c.id)
    assert row.organization_id == c.organization_id and b"secret-cookie" not in row.state_encrypted.encode()
    assert session_state.load_session_state(session, c.id) == b'{"cookies": "secret-cookie"}'
    save_session_state.fn(c.id, base64.b64encode(b"newer").decode())
    assert session_state.load_session_state(session, c.id) == b"newer"


# ----------------------------------------------------------------------------------- real workers

@pytest.fixture
def committed_admin(committed):
    org = f.make_organization(committed)
    headers = principal_headers(committed, org, "admin")
    committed.commit()
    return org, headers


def status_of(http, client_id, headers):
    return http.get(f"/api/clients/{client_id}", headers=headers).get_json()["status"]


@pytest.mark.workers
def test_a_sim_client_connects_through_real_workers(committed, committed_client, committed_admin, run_pool):
    org, headers = committed_admin
    run_pool("default")
    created = committed_client.post("/api/clients", headers=headers, json={
        "name": "Demo", "transport": "sim", "config": {"scan_after_ms": 300, "phone": "+15550009999"}}).get_json()
    resp = committed_client.post(f"/api/clients/{created['id']}/start", headers=headers)
    assert resp.status_code == 202 and resp.get_json()["status"] == "starting"
    wait_for(lambda: status_of(committed_client, created["id"], headers) == "ready", timeout=30,
             message="the sim client to become ready")
    ready = committed_client.get(f"/api/clients/{created['id']}", headers=headers).get_json()
    assert ready["phone"] == "+15550009999" and ready["last_seen_at"] and ready["paused"] is False
    committed.expire_all()
    assert history(committed, created["id"]) == [(None, "created"), ("created", "starting"), ("starting", "qr"),
                                                  ("qr", "ready")]
    assert [e.type for e in events(committed, created["id"])] == ["client.qr", "client.connected"]

    # stop keeps the login: the next start connects without a QR code
    assert committed_client.post(f"/api/clients/{created['id']}/stop", headers=headers).status_code == 202
    committed_client.post(f"/api/clients/{created['id']}/start", headers=headers)
    wait_for(lambda: status_of(committed_client, created["id"], headers) == "ready", timeout=30,
             message="the restarted client to be ready")
    committed.expire_all()
    assert history(committed, created["id"])[-2:] == [("stopped", "starting"), ("starting", "ready")]


@pytest.mark.workers
def test_the_qr_code_of_a_waiting_client_as_json_and_png(committed, committed_client, committed_admin, run_pool):
    org, headers = committed_admin
    run_pool("default")
    created = committed_client.post("/api/clients", headers=headers, json={
        "name": "Scan me", "config": {"auto_scan": False}}).get_json()
    assert committed_client.get(f"/api/clients/{created['id']}/qr", headers=headers).status_code == 409
    committed_client.post(f"/api/clients/{created['id']}/start", headers=headers)
    wait_for(lambda: status_of(committed_client, created["id"], headers) == "qr", timeout=30,
             message="the client to show a QR code")
    qr = committed_client.get(f"/api/clients/{created['id']}/qr", headers=headers).get_json()
    assert qr["qr"].startswith("2@sim,") and qr["expires_at"]
    png = committed_client.get(f"/api/clients/{created['id']}/qr", headers={**headers, "Accept": "image/png"})
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert_png_is_qr_of(png.data, qr["qr"])

    assert committed_client.post(f"/api/clients/{created['id']}/logout", headers=headers).status_code == 202
    assert committed_client.get(f"/api/clients/{created['id']}/qr", headers=headers).status_code == 409
