"""Proxies: CRUD with the password encrypted and never returned, tenancy and roles, in-use
protection, and the health check against real proxy servers on loopback (HTTP CONNECT, SOCKS5)."""
from __future__ import annotations

import base64
import json
import socket
import socketserver
import threading

import pytest
from sqlalchemy import select

from app.audit.models import AuditLog
from app.clients import proxy_service
from app.clients.models import BanAlert, Proxy
from app.db import utcnow
from app.models import JobOutbox
from app.security.crypto import decrypt
from app.transports.base import ProxyInfo
from tests import factories as f
from tests.auth_helpers import principal_headers

NEW = {"name": "Frankfurt", "scheme": "http", "host": "proxy.example.test", "port": 3128, "username": "alice",
       "password": "s3cret-pass"}


# ----------------------------------------------------------------------------------- CRUD

def test_create_get_list_update_delete_with_an_encrypted_password(client, session, org, admin_headers):
    resp = client.post("/api/proxies", json=NEW, headers=admin_headers)
    assert resp.status_code == 201, resp.get_json()
    created = resp.get_json()
    assert created["id"].startswith("prx_") and created["has_password"] is True and created["status"] == "unchecked"
    assert {k: created[k] for k in ("name", "scheme", "host", "port", "username")} == {
        k: NEW[k] for k in ("name", "scheme", "host", "port", "username")}
    assert "password" not in created and "s3cret-pass" not in resp.get_data(as_text=True)
    row = session.get(Proxy, created["id"])
    assert "s3cret" not in row.password_encrypted and decrypt(row.password_encrypted) == "s3cret-pass"

    assert client.get(f"/api/proxies/{created['id']}", headers=admin_headers).get_json() == created
    assert [p["id"] for p in client.get("/api/proxies", headers=admin_headers).get_json()["items"]] == [created["id"]]
    assert client.get("/api/proxies?status=dead", headers=admin_headers).get_json()["items"] == []

    row.status, row.last_error = "dead", "refused"
    session.flush()
    resp = client.patch(f"/api/proxies/{created['id']}", json={"port": 8080, "password": None}, headers=admin_headers)
    assert resp.status_code == 200, resp.get_json()
    updated = resp.get_json()
    assert updated["port"] == 8080 and updated["has_password"] is False
    assert updated["status"] == "unchecked" and updated["last_error"] is None, "a new address needs a new check"
    resp = client.patch(f"/api/proxies/{created['id']}", json={"password": "n3w-pass"}, headers=admin_headers)
    assert resp.get_json()["has_password"] is True

    assert client.delete(f"/api/proxies/{created['id']}", headers=admin_headers).status_code == 204
    assert client.get(f"/api/proxies/{created['id']}", headers=admin_headers).status_code == 404
    audits = list(session.scalars(select(AuditLog).where(AuditLog.target_id == created["id"]).order_by(AuditLog.id)))
    assert [a.action for a in audits] == ["proxy.create", "proxy.update", "proxy.update", "proxy.delete"]
    assert audits[1].changes["password_change"] == "removed" and audits[2].changes["password_change"] == "set"
    assert "s3cret" not in json.dumps([a.changes for a in audits]) and "n3w-pass" not in json.dumps(
        [a.changes for a in audits])


@pytest.mark.parametrize("body, field", [
    ({**NEW, "scheme": "ftp"}, "scheme"), ({**NEW, "port": 0}, "port"), ({**NEW, "port": 70000}, "port"),
    ({**NEW, "host": "bad host/x"}, "host"), ({**NEW, "host": ""}, "host"), ({"scheme": "http", "port": 1}, "host"),
    ({**NEW, "password": ""}, "password"), ({**NEW, "extra": 1}, "extra"),
])
def test_validation(client, admin_headers, body, field):
    resp = client.post("/api/proxies", json=body, headers=admin_headers)
    assert resp.status_code == 422 and field in resp.get_json()["error"]["details"]


def test_tenancy_and_roles(client, session, org, admin_headers):
    foreign = f.make_proxy(session)
    assert client.get(f"/api/proxies/{foreign.id}", headers=admin_headers).status_code == 404
    assert client.patch(f"/api/proxies/{foreign.id}", json={"port": 1}, headers=admin_headers).status_code == 404
    assert client.delete(f"/api/proxies/{foreign.id}", headers=admin_headers).status_code == 404
    assert client.get("/api/proxies", headers=admin_headers).get_json()["items"] == []
    manager = principal_headers(session, org, "manager")
    assert client.post("/api/proxies", json=NEW, headers=manager).status_code == 201
    for role in ("agent", "viewer"):
        headers = principal_headers(session, org, role)
        assert client.get("/api/proxies", headers=headers).status_code == 403
        assert client.post("/api/proxies", json=NEW, headers=headers).status_code == 403


def test_a_proxy_in_use_cannot_be_deleted(client, session, org, admin_headers):
    proxy = f.make_proxy(session, organization_id=org.id)
    user = f.make_client(session, organization_id=org.id, proxy_id=proxy.id)
    f.make_client(session, organization_id=org.id, proxy_id=proxy.id, deleted_at=utcnow())  # deleted: no longer uses it
    resp = client.delete(f"/api/proxies/{proxy.id}", headers=admin_headers)
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "proxy_in_use" and resp.get_json()["error"]["details"] == {
        "client_ids": [user.id]}
    assert client.patch(f"/api/clients/{user.id}", json={"proxy_id": None}, headers=admin_headers).status_code == 200
    assert client.delete(f"/api/proxies/{proxy.id}", headers=admin_headers).status_code == 204


# ----------------------------------------------------------------------------------- health check

class LoopbackServer(socketserver.ThreadingTCPServer):
    """A TCP server on a free loopback port, serving its ``Handler`` from a thread of its own."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), self.Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class FakeProxy(LoopbackServer):
    """An HTTP CONNECT or SOCKS5 proxy on loopback that tunnels nowhere but answers like one."""

    def __init__(self, kind: str, username: str | None = None, password: str | None = None):
        self.kind, self.username, self.password, self.targets = kind, username, password, []
        super().__init__()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            server, sock = self.server, self.request
            sock.settimeout(5)
            if server.kind == "http":
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(1024)
                lines = head.decode().split("\r\n")
                server.targets.append(lines[0])
                expected = "Basic " + base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
                given = next((ln.split(": ", 1)[1] for ln in lines if ln.lower().startswith("proxy-authorization")), None)
                ok = server.username is None or given == expected
                sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" if ok else
                             b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                return
            version, count = sock.recv(2)
            methods = sock.recv(count)
            if server.username is not None:
                if 2 not in methods:
                    sock.sendall(b"\x05\xff")
                    return
                sock.sendall(b"\x05\x02")
                _, ulen = sock.recv(2)
                user = sock.recv(ulen).decode()
                plen = sock.recv(1)[0]
                password = sock.recv(plen).decode()
                ok = (user, password) == (server.username, server.password)
                sock.sendall(b"\x01\x00" if ok else b"\x01\x01")
                if not ok:
                    return
            else:
                sock.sendall(b"\x05\x00")
            _, _, _, atyp, length = sock.recv(5)
            name = sock.recv(length).decode()
            port = int.from_bytes(sock.recv(2), "big")
            server.targets.append(f"{name}:{port}")
            sock.sendall(b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00")


@pytest.fixture
def fake_proxies():
    servers = []

    def start(kind, username=None, password=None):
        servers.append(FakeProxy(kind, username, password))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_http_connect_with_credentials(fake_proxies, banner, allow_private):
    server = fake_proxies("http", "alice", "pw")
    good = ProxyInfo("http", "127.0.0.1", server.port, "alice", "pw")
    assert proxy_service.probe(good, target="web.whatsapp.com:443", timeout=5) is None
    assert server.targets == ["CONNECT web.whatsapp.com:443 HTTP/1.1"]
    wrong = ProxyInfo("http", "127.0.0.1", server.port, "alice", "nope")
    assert proxy_service.probe(wrong, target="web.whatsapp.com:443", timeout=5) == "auth_failed"
    assert proxy_service.probe(ProxyInfo("http", "127.0.0.1", closed_port()), timeout=2) == "refused"
    # an https proxy is spoken to over TLS: a plain-text server fails the handshake
    plain = banner(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    assert proxy_service.probe(ProxyInfo("https", "127.0.0.1", plain.port), timeout=2) == "tls_failed"


def test_probe_socks5_with_and_without_credentials(fake_proxies, allow_private):
    server = fake_proxies("socks5", "bob", "pw")
    assert proxy_service.probe(ProxyInfo("socks5", "127.0.0.1", server.port, "bob", "pw"),
                               target="web.whatsapp.com:443", timeout=5) is None
    assert server.targets == ["web.whatsapp.com:443"]
    assert proxy_service.probe(ProxyInfo("socks5", "127.0.0.1", server.port, "bob", "x"), timeout=5) == "auth_failed"
    assert proxy_service.probe(ProxyInfo("socks5", "127.0.0.1", server.port), timeout=5) == "auth_failed"
    open_server = fake_proxies("socks5")
    assert proxy_service.probe(ProxyInfo("socks5", "127.0.0.1", open_server.port), timeout=5) is None
    http = fake_proxies("http")  # waits for a request line a SOCKS5 greeting never ends
    assert proxy_service.probe(ProxyInfo("socks5", "127.0.0.1", http.port), timeout=1) == "timeout"


class Banner(LoopbackServer):
    """Something that is not a proxy: it answers every connection with ``reply`` (say an SSH
    banner, or an internal web page), and counts the connections it got."""

    def __init__(self, reply: bytes):
        self.reply, self.connections = reply, 0
        super().__init__()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            self.server.connections += 1
            self.request.sendall(self.server.reply)


@pytest.fixture
def banner():
    servers = []

    def start(reply: bytes):
        servers.append(Banner(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


SECRET_PAGE = b"HTTP/1.1 403 Forbidden\r\n\r\n<h1>internal admin: db password hunter2</h1>"


def test_a_check_reports_a_fixed_word_never_what_the_peer_sent(session, banner, allow_private):
    from jobs.clients import check_proxy

    for reply, word in ((b"SSH-2.0-OpenSSH_9.2 hunter2\r\n", "not_a_proxy"), (SECRET_PAGE, "tunnel_refused"),
                        (b"\x05\x01hunter2", "not_a_proxy")):
        server = banner(reply)
        assert proxy_service.probe(ProxyInfo("http", "127.0.0.1", server.port), timeout=5) == word
        proxy = f.make_proxy(session, host="127.0.0.1", port=server.port)
        check_proxy.fn(proxy.id)
        session.expire_all()
        assert session.get(Proxy, proxy.id).last_error == word
    assert set(proxy_service.CHECK_FAILURES) == {"refused", "timeout", "unresolvable", "blocked_address",
                                                 "tls_failed", "not_a_proxy", "auth_failed", "tunnel_refused"}


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "10.0.0.7", "169.254.169.254", "2130706433", "::1",
                                  "::ffff:127.0.0.1"])
def test_proxies_on_internal_addresses_are_refused(client, session, admin_headers, host):
    resp = client.post("/api/proxies", json={**NEW, "host": host}, headers=admin_headers)
    assert resp.status_code == 422, resp.get_json()
    assert "host" in resp.get_json()["error"]["details"]
    assert session.scalars(select(Proxy)).all() == []


def test_the_check_never_connects_to_an_internal_address(session, banner):
    """A proxy row pointing inside (created before the guard, or a name that resolves there
    later): the check refuses to connect at all."""
    from jobs.clients import check_proxy

    server = banner(SECRET_PAGE)
    assert proxy_service.probe(ProxyInfo("http", "127.0.0.1", server.port), timeout=2) == "blocked_address"
    proxy = f.make_proxy(session, host="localhost", port=server.port)
    check_proxy.fn(proxy.id)
    session.expire_all()
    assert session.get(Proxy, proxy.id).last_error == "blocked_address"
    assert server.connections == 0


def test_check_job_marks_failing_then_dead_with_one_alert_then_ok(session, fake_proxies, allow_private):
    from jobs.clients import check_proxy

    server = fake_proxies("http")
    proxy = f.make_proxy(session, host="127.0.0.1", port=server.port)
    user = f.make_client(session, organization_id=proxy.organization_id, proxy_id=proxy.id)
    check_proxy.fn(proxy.id)
    session.expire_all()
    assert (session.get(Proxy, proxy.id).status, session.get(Proxy, proxy.id).last_checked_at is not None) == ("ok", True)

    proxy.port = closed_port()
    session.flush()
    check_proxy.fn(proxy.id)
    session.expire_all()
    assert (session.get(Proxy, proxy.id).status, session.get(Proxy, proxy.id).last_error) == ("failing", "refused")
    assert session.scalars(select(BanAlert).where(BanAlert.kind == "proxy_dead")).all() == []
    check_proxy.fn(proxy.id)
    check_proxy.fn(proxy.id)
    session.expire_all()
    assert session.get(Proxy, proxy.id).status == "dead"
    [alert] = session.scalars(select(BanAlert).where(BanAlert.kind == "proxy_dead")).all()
    assert alert.organization_id == proxy.organization_id and alert.client_id is None
    assert alert.details["proxy_id"] == proxy.id and alert.details["client_ids"] == [user.id]

    session.get(Proxy, proxy.id).port = server.port
    session.flush()
    check_proxy.fn(proxy.id)
    session.expire_all()
    assert session.get(Proxy, proxy.id).status == "ok" and session.get(Proxy, proxy.id).last_error is None


def test_periodic_check_fans_out_one_job_per_live_proxy(session):
    from jobs.clients import check_proxies
    from jobs.periodic import PERIODIC

    assert "clients.check_proxies" in [p.actor_name for p in PERIODIC]
    a, b = f.make_proxy(session), f.make_proxy(session)
    f.make_proxy(session, deleted_at=utcnow())
    check_proxies.fn()
    jobs = session.scalars(select(JobOutbox).where(JobOutbox.actor_name == "clients.check_proxy")).all()
    assert sorted(j.args[0] for j in jobs) == sorted([a.id, b.id])
