"""The SSRF guard with WEBHOOK_ALLOW_PRIVATE off: every non-public range is refused, at registration
and, what really protects, at connect time (names resolving to one, DNS answers that changed
since registration, any one bad address among several), and proxies from the environment are
ignored. With it on (development), the loopback receiver is reachable."""
from __future__ import annotations

import socket

import pytest
from sqlalchemy import select

import jobs.webhooks as webhook_jobs
from app.security import crypto, ssrf
from app.security.principal import SystemPrincipal
from app.webhooks import delivery, service
from app.webhooks import events as webhook_events
from app.webhooks.events import emit
from app.webhooks.models import WebhookDelivery, WebhookDeliveryAttempt
from tests import factories as f
from tests.auth_helpers import principal_headers

BLOCKED = {
    "127.0.0.1": "loopback", "127.255.0.9": "loopback", "10.1.2.3": "private", "172.16.0.1": "private",
    "172.31.255.254": "private", "192.168.1.1": "private", "169.254.169.254": "link-local (cloud metadata)",
    "169.254.10.1": "link-local", "100.64.0.1": "carrier-grade NAT (shared)", "100.127.255.254": "carrier-grade NAT (shared)",
    "0.0.0.0": "unspecified", "0.1.2.3": "private", "224.0.0.1": "multicast", "239.255.255.250": "multicast",
    "240.0.0.1": "private", "255.255.255.255": "private", "198.18.0.1": "private", "192.0.2.10": "private",
    "::1": "loopback", "::": "unspecified", "fc00::1": "private", "fd12:3456::1": "private", "fe80::1": "link-local",
    "fe80::1%1": "link-local", "ff02::1": "multicast", "fec0::1": "site-local",
    "::ffff:127.0.0.1": "IPv4-mapped loopback", "::ffff:10.0.0.1": "IPv4-mapped private",
    "::ffff:169.254.169.254": "IPv4-mapped link-local (cloud metadata)", "::ffff:100.64.1.1": "IPv4-mapped carrier-grade NAT (shared)",
    "2002:7f00:1::1": "6to4 loopback", "2002:a00:1::1": "6to4 private", "64:ff9b::a00:1": "NAT64 private",
    "64:ff9b::7f00:1": "NAT64 loopback", "2001:db8::1": "private",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2a00:1450:4001:80b::200e"]


@pytest.fixture(autouse=True)
def guard_on(override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE=False)


@pytest.mark.parametrize("address,reason", sorted(BLOCKED.items()))
def test_every_non_public_range_is_refused(address, reason):
    assert ssrf.blocked_reason(address) == reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address):
    assert ssrf.blocked_reason(address) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://localhost:8080/hook", "http://[::1]/", "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:127.0.0.1]:80/", "http://10.0.0.1/", "http://2130706433/", "http://0x7f000001/",
    "https://192.168.0.10/x", "http://[fd00::1]/", "http://100.64.0.1/", "http://0.0.0.0:3002/",
])
def test_registration_refuses_private_targets(client, session, url):
    headers = principal_headers(session, f.make_organization(session), "admin")
    resp = client.post("/api/webhooks", json={"url": url, "events": ["*"]}, headers=headers)
    assert resp.status_code == 422, (url, resp.get_json())
    assert "public" in resp.get_json()["error"]["details"]["url"][0]


def test_registration_refuses_a_name_that_resolves_privately_and_accepts_unresolvable_ones(monkeypatch):
    real = socket.getaddrinfo

    def fake(host, *args, **kwargs):
        if host == "internal.example.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", 443))]
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    assert "resolves to 10.20.30.40" in ssrf.check_url("https://internal.example.test/hook")
    assert ssrf.check_url("https://no-such-host.example.test/hook") is None  # checked again at connect time
    assert ssrf.check_url("gopher://example.test/") == "Only http and https URLs are allowed."
    assert ssrf.check_url("file:///etc/passwd") == "Only http and https URLs are allowed."


def _delivery_to(session, org_id):
    event = emit(session, org_id, "message.sent", {"id": "msg_1"})
    session.flush()
    webhook_events.fan_out(session, event.id)
    return session.scalars(select(WebhookDelivery.id).where(WebhookDelivery.event_id == event.id)).one()


def _last_attempt(session, delivery_id):
    return session.scalars(select(WebhookDeliveryAttempt).where(WebhookDeliveryAttempt.delivery_id == delivery_id)
                           .order_by(WebhookDeliveryAttempt.id.desc())).first()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::ffff:127.0.0.1]"])
def test_the_guard_refuses_at_connect_time(session, receiver, host):
    """Registered while private targets were allowed (or DNS said otherwise then): refused now,
    before a byte is sent, and the receiver sees nothing."""
    org = f.make_organization(session)
    f.make_webhook(session, organization_id=org.id, url=receiver.url("/hook", host=host),
                   secret_encrypted=crypto.encrypt("whsec_" + "A" * 44))
    delivery_id = _delivery_to(session, org.id)
    webhook_jobs.deliver(delivery_id, 1)
    attempt = _last_attempt(session, delivery_id)
    assert attempt.status_code is None and "refused to connect to" in attempt.error and "loopback" in attempt.error
    assert receiver.count() == 0


def test_a_name_resolving_to_several_addresses_is_refused_if_any_is_private(monkeypatch):
    calls = []

    def fake(host, port, *args, **kwargs):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    outcome = delivery.send("http://rebind.example.test/hook", b"{}", {"Content-Type": "application/json"}, timeout=2)
    assert calls == ["rebind.example.test"]
    assert outcome.status_code is None and "169.254.169.254" in outcome.error and "cloud metadata" in outcome.error


def test_dns_rebinding_after_registration_is_caught(monkeypatch, receiver):
    """The name was public when registered; at delivery time it points at loopback."""
    answers = {"hooks.rebind.test": "93.184.216.34"}
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    url = f"http://hooks.rebind.test:{receiver.port}/hook"
    assert ssrf.check_url(url) is None
    answers["hooks.rebind.test"] = "127.0.0.1"
    outcome = delivery.send(url, b"{}", {"Content-Type": "application/json"}, timeout=2)
    assert outcome.status_code is None and "loopback" in outcome.error
    assert receiver.count() == 0


def test_https_is_guarded_too():
    outcome = delivery.send("https://127.0.0.1:1/hook", b"{}", {}, timeout=2)
    assert outcome.status_code is None and "refused to connect to 127.0.0.1: loopback" in outcome.error


def test_proxies_from_the_environment_are_ignored(monkeypatch, receiver, allow_private):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    outcome = delivery.send(receiver.url("/hook"), b"{}", {"Content-Type": "application/json"}, timeout=5)
    assert outcome.status_code == 200 and receiver.count("/hook") == 1


def test_with_private_targets_allowed_the_loopback_receiver_is_reached(client, session, receiver, allow_private):
    org = f.make_organization(session)
    headers = principal_headers(session, org, "admin")
    resp = client.post("/api/webhooks", json={"url": receiver.url("/hook", host="localhost"), "events": ["*"]},
                       headers=headers)
    assert resp.status_code == 201, resp.get_json()
    delivery_id = _delivery_to(session, org.id)
    webhook_jobs.deliver(delivery_id, 1)
    assert receiver.count("/hook") == 1 and _last_attempt(session, delivery_id).status_code == 200


def test_a_connection_opened_while_allowed_is_not_reused_once_forbidden(receiver, override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE=True)
    assert delivery.send(receiver.url("/hook"), b"{}", {}, timeout=5).status_code == 200
    override_settings(WEBHOOK_ALLOW_PRIVATE=False)
    outcome = delivery.send(receiver.url("/hook"), b"{}", {}, timeout=5)
    assert outcome.status_code is None and "loopback" in outcome.error
    assert receiver.count("/hook") == 1


def test_redact_url_hides_credentials_and_query():
    assert ssrf.redact_url("https://user:pw@hooks.example.test:8443/in?token=s3cret") == \
        "https://***@hooks.example.test:8443/in?…"
    assert ssrf.redact_url("http://[::1]:80/x") == "http://[::1]:80/x"


def test_the_system_principal_can_create_on_public_names(session):
    org = f.make_organization(session)
    created = service.create_webhook(session, SystemPrincipal(org.id), url="https://hooks.example.test/in",
                                     events=["message.sent"])
    assert created["url"] == "https://hooks.example.test/in"


# ----------------------------------------------------------------------------- the policy


@pytest.mark.parametrize("address", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"])
def test_loopback_policy_allows_this_machine(address, override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE="loopback")
    assert ssrf.refusal(address) is None


@pytest.mark.parametrize("address", ["10.0.0.1", "192.168.1.1", "172.16.0.1", "169.254.169.254", "100.64.0.1",
                                     "0.0.0.0", "fd00::1", "fe80::1", "::ffff:10.0.0.1", "2002:7f00:1::1"])
def test_loopback_policy_still_refuses_the_network_around(address, override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE="loopback")
    assert ssrf.refusal(address) is not None


@pytest.mark.parametrize("raw, app_env, host, expected", [
    ("", "development", "127.0.0.1", "loopback"), ("", "development", "localhost", "loopback"),
    ("", "development", "::1", "loopback"), ("", "development", "0.0.0.0", "none"),
    ("", "development", "192.168.1.5", "none"), ("", "test", "127.0.0.1", "none"),
    ("", "production", "127.0.0.1", "none"), ("true", "production", "0.0.0.0", "all"),
    ("false", "development", "127.0.0.1", "none"), ("loopback", "production", "0.0.0.0", "loopback"),
])
def test_the_default_depends_on_where_the_api_listens(raw, app_env, host, expected):
    from config import Settings

    built = Settings.from_env({"WEBHOOK_ALLOW_PRIVATE": raw, "APP_ENV": app_env, "HOST": host,
                               "DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x"})
    assert built.private_targets == expected


def test_a_bad_value_stops_every_process_at_start():
    from config import Settings, check_production_settings

    built = Settings.from_env({"WEBHOOK_ALLOW_PRIVATE": "sometimes", "DATABASE_URL": "x", "REDIS_URL": "x"})
    with pytest.raises(SystemExit, match="WEBHOOK_ALLOW_PRIVATE"):
        check_production_settings(built)


def test_a_decimal_ip_is_judged_by_what_it_resolves_to(client, session):
    """http://2130706433/ is 127.0.0.1: refused at registration with the guard on."""
    assert "loopback" in ssrf.check_url("http://2130706433:3002/")
    assert "loopback" in ssrf.check_url("http://0x7f.1:3002/")
