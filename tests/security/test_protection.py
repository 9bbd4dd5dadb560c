"""API protection (app/security/protection.py): rate limits shared through Redis, the client
address behind trusted proxies, security headers, CORS, and request body limits.

The routes under test are registered by ``build_app`` (also used by a second process and by a
real gunicorn, see below), so these tests do not depend on which product endpoints exist yet.
"""
from __future__ import annotations

import base64
import http.client
import io
import json
import socket
import sys

import pytest
from flask import Blueprint, jsonify, request
from flask.views import MethodView
from werkzeug.test import EnvironBuilder

from app.security.guard import public, requires
from config import settings
from tests.factories import make_organization, make_user
from tests.procs import spawn, stop, wait_for

# ----------------------------------------------------------------------------- the app under test


class Public(MethodView):
    @public
    def get(self):
        return jsonify(ok=True)


class Private(MethodView):
    @requires("org:read")
    def get(self):
        from app.security.auth import current_principal

        p = current_principal()
        return jsonify(organization_id=p.organization_id, principal=p.id)


class Echo(MethodView):
    @public
    def post(self):
        return jsonify(received=request.get_json())


class Upload(MethodView):
    @public
    def post(self):
        f = request.files["file"]
        return jsonify(size=len(f.read()))


class WhoAmI(MethodView):
    @public
    def get(self):
        return jsonify(ip=request.remote_addr, scheme=request.scheme)


class Cacheable(MethodView):
    @public
    def get(self):
        resp = jsonify(ok=True)
        resp.headers["Cache-Control"] = "max-age=60"
        return resp


class ProviderWebhook(MethodView):
    @public
    def post(self):
        return jsonify(ok=True)


class DashboardPage(MethodView):
    @public
    def get(self):
        return "<html><body>dashboard</body></html>"


def build_app():
    """The product's app plus the routes above (test-only paths)."""
    from app import create_app

    application = create_app(TESTING=True)
    bp = Blueprint("protection_test", __name__)
    bp.add_url_rule("/api/t/public", view_func=Public.as_view("public"))
    bp.add_url_rule("/api/t/private", view_func=Private.as_view("private"))
    bp.add_url_rule("/api/t/echo", view_func=Echo.as_view("echo"))
    bp.add_url_rule("/api/t/upload", view_func=Upload.as_view("upload"))
    bp.add_url_rule("/api/t/whoami", view_func=WhoAmI.as_view("whoami"))
    bp.add_url_rule("/api/t/cacheable", view_func=Cacheable.as_view("cacheable"))
    bp.add_url_rule("/webhooks/t/provider", view_func=ProviderWebhook.as_view("provider"))
    bp.add_url_rule("/dashboard/t-page", view_func=DashboardPage.as_view("dashboard_page"))
    application.register_blueprint(bp)
    return application


@pytest.fixture
def papp(session):
    return build_app()


@pytest.fixture
def pclient(papp):
    return papp.test_client()


@pytest.fixture
def limits_on(override_settings):
    """``with limits_on(RATE_LIMIT_PUBLIC=...):`` rate limits on, with these settings, for the block."""
    return lambda **changes: override_settings(RATE_LIMIT_ENABLED=True, **changes)


def ip(addr: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": addr}}


def api_key(session, org_id: str, role: str = "viewer") -> dict:
    from app.apikeys.service import create_api_key
    from app.security.principal import SystemPrincipal

    _, secret = create_api_key(session, SystemPrincipal(org_id), name="rate test", role=role)
    return {"X-API-Key": secret}


def bearer(session, org_id: str) -> dict:
    from app.security.tokens import issue_access_token

    user = make_user(session, organization_id=org_id, role="viewer")
    token, _ = issue_access_token(user.id, org_id, "viewer")
    return {"Authorization": f"Bearer {token}"}


def assert_rate_headers(resp, limit: int, remaining: int, window: int):
    assert resp.headers["RateLimit-Limit"] == str(limit)
    assert resp.headers["RateLimit-Remaining"] == str(remaining)
    assert 1 <= int(resp.headers["RateLimit-Reset"]) <= window


def assert_limited(resp, scope: str, window: int):
    assert resp.status_code == 429, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"]["code"] == "rate_limited"
    assert body["error"]["details"]["scope"] == scope
    retry_after = int(resp.headers["Retry-After"])
    assert 1 <= retry_after <= window
    assert resp.headers["RateLimit-Remaining"] == "0"
    assert resp.headers["RateLimit-Reset"] == str(retry_after)


# ----------------------------------------------------------------------------- per-IP limit


def test_public_endpoints_are_limited_per_ip(pclient, limits_on):
    with limits_on(RATE_LIMIT_PUBLIC="3 per minute"):
        for remaining in (2, 1, 0):
            resp = pclient.get("/api/t/public", **ip("203.0.113.1"))
            assert resp.status_code == 200
            assert_rate_headers(resp, 3, remaining, 60)
        assert_limited(pclient.get("/api/t/public", **ip("203.0.113.1")), "ip", 60)
        # the refused request was not counted, and another address has its own budget
        other = pclient.get("/api/t/public", **ip("203.0.113.2"))
        assert other.status_code == 200
        assert_rate_headers(other, 3, 2, 60)


def test_several_windows_in_one_setting(pclient, limits_on):
    with limits_on(RATE_LIMIT_PUBLIC="2 per hour; 3 per day"):
        first = pclient.get("/api/t/public")
        assert first.status_code == 200
        assert_rate_headers(first, 2, 1, 3600)  # the headers show the bucket closest to its limit
        assert pclient.get("/api/t/public").status_code == 200
        resp = pclient.get("/api/t/public")
    assert resp.status_code == 429
    assert resp.get_json()["error"]["details"]["window_seconds"] == 3600


def test_health_metrics_provider_webhooks_and_dashboard_are_not_limited(pclient, limits_on):
    with limits_on(RATE_LIMIT_PUBLIC="1 per minute"):
        for _ in range(3):
            for resp in (pclient.get("/health"), pclient.get("/metrics"),
                         pclient.post("/webhooks/t/provider", json={}), pclient.get("/dashboard/t-page"),
                         pclient.get("/api/openapi.json"), pclient.get("/api/docs"),
                         pclient.get("/api/docs/swagger-ui-bundle.js")):
                assert resp.status_code != 429
                assert "RateLimit-Limit" not in resp.headers
        # and none of them used the public budget
        assert pclient.get("/api/t/public").status_code == 200


def test_requests_without_valid_credentials_fall_under_the_per_ip_limit(session, pclient, limits_on):
    key = api_key(session, make_organization(session).id)
    with limits_on(RATE_LIMIT_PUBLIC="3 per minute"):
        missing = pclient.get("/api/t/private", **ip("198.51.100.4"))
        bad_key = pclient.get("/api/t/private", headers={"X-API-Key": "sk_guess"}, **ip("198.51.100.4"))
        bad_token = pclient.get("/api/t/private", headers={"Authorization": "Bearer x.y.z"}, **ip("198.51.100.4"))
        assert [r.status_code for r in (missing, bad_key, bad_token)] == [401, 401, 401]
        assert_rate_headers(bad_token, 3, 0, 60)
        # further guesses get 429 (valid credentials would still pass); public routes share the budget
        assert_limited(pclient.get("/api/t/private", headers={"X-API-Key": "sk_guess2"}, **ip("198.51.100.4")),
                       "ip", 60)
        assert_limited(pclient.get("/api/t/public", **ip("198.51.100.4")), "ip", 60)
        # a valid key from the same address counts against its organisation, not the address
        assert pclient.get("/api/t/private", headers=key, **ip("198.51.100.4")).status_code == 200


def test_disabled_limits_send_no_headers_and_never_refuse(pclient, override_settings):
    assert settings.RATE_LIMIT_ENABLED is False  # the suite's default (conftest)
    with override_settings(RATE_LIMIT_PUBLIC="1 per minute"):
        responses = [pclient.get("/api/t/public") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "RateLimit-Limit" not in responses[-1].headers


def test_redis_down_lets_requests_through(pclient, limits_on):
    from app.kv import reset_redis_client

    with limits_on(RATE_LIMIT_PUBLIC="1 per minute", REDIS_URL="redis://127.0.0.1:1/0"):
        reset_redis_client()
        try:
            responses = [pclient.get("/api/t/public") for _ in range(2)]
        finally:
            reset_redis_client()
    assert [r.status_code for r in responses] == [200, 200]
    assert "RateLimit-Limit" not in responses[-1].headers


# ----------------------------------------------------------------------------- authenticated API


def test_organisation_limit_is_shared_by_its_keys_and_isolated_from_other_orgs(session, pclient, limits_on):
    org_a, org_b = make_organization(session).id, make_organization(session).id
    key_a1, key_a2, key_b = api_key(session, org_a), api_key(session, org_a), api_key(session, org_b)
    with limits_on(RATE_LIMIT_API="3 per minute", RATE_LIMIT_PUBLIC="1 per minute"):
        first = pclient.get("/api/t/private", headers=key_a1)
        assert first.status_code == 200 and first.get_json()["organization_id"] == org_a
        assert_rate_headers(first, 3, 2, 60)
        assert pclient.get("/api/t/private", headers=key_a2).status_code == 200
        assert pclient.get("/api/t/private", headers=key_a1).status_code == 200
        # org A's budget is spent, whichever of its keys asks
        assert_limited(pclient.get("/api/t/private", headers=key_a2), "organization", 60)
        assert_limited(pclient.get("/api/t/private", headers=key_a1), "organization", 60)
        # org B is untouched: same client IP, its own budget
        other = pclient.get("/api/t/private", headers=key_b)
        assert other.status_code == 200 and other.get_json()["organization_id"] == org_b
        assert_rate_headers(other, 3, 2, 60)
        # authenticated calls do not use the per-IP budget (1 per minute here)
        assert pclient.get("/api/t/public").status_code == 200


def test_each_key_and_user_has_its_own_limit_within_the_organisation(session, pclient, limits_on):
    org = make_organization(session).id
    key1, key2, user = api_key(session, org), api_key(session, org), bearer(session, org)
    with limits_on(RATE_LIMIT_API="10 per minute", RATE_LIMIT_PRINCIPAL="2 per minute"):
        assert [pclient.get("/api/t/private", headers=key1).status_code for _ in range(2)] == [200, 200]
        assert_limited(pclient.get("/api/t/private", headers=key1), "principal", 60)
        resp = pclient.get("/api/t/private", headers=key2)
        assert resp.status_code == 200
        assert_rate_headers(resp, 2, 1, 60)  # the tighter of org (10 - 3) and key (2 - 1)
        assert [pclient.get("/api/t/private", headers=user).status_code for _ in range(3)] == [200, 200, 429]


def test_limits_are_shared_by_app_instances_through_redis(session, redis_conn, limits_on):
    org = make_organization(session).id
    key = api_key(session, org)
    first, second = build_app().test_client(), build_app().test_client()
    with limits_on(RATE_LIMIT_API="3 per minute"):
        assert first.get("/api/t/private", headers=key).status_code == 200
        assert first.get("/api/t/private", headers=key).status_code == 200
        resp = second.get("/api/t/private", headers=key)
        assert resp.status_code == 200
        assert_rate_headers(resp, 3, 0, 60)
        assert_limited(first.get("/api/t/private", headers=key), "organization", 60)
        # the counters live in Redis: the count is there, and without it the budget is back
        assert redis_conn.get(f"wa:rl:org:{org}:3/60") == b"3"
        redis_conn.flushdb()
        assert second.get("/api/t/private", headers=key).status_code == 200


def test_limits_are_shared_with_another_process(pclient, limits_on):
    """A separate process (its own app, its own Redis connection) spends part of the per-IP budget
    of an address; this process sees the rest."""
    code = (
        "from tests.security.test_protection import build_app\n"
        "c = build_app().test_client()\n"
        "print([c.get('/api/t/public', environ_base={'REMOTE_ADDR': '192.0.2.77'}).status_code"
        " for _ in range(3)])\n"
    )
    proc = spawn(["-c", code], RATE_LIMIT_ENABLED="true", RATE_LIMIT_PUBLIC="4 per minute")
    proc.wait(timeout=60)
    out = stop(proc)
    assert proc.returncode == 0 and "[200, 200, 200]" in out, out
    with limits_on(RATE_LIMIT_PUBLIC="4 per minute"):
        last = pclient.get("/api/t/public", **ip("192.0.2.77"))
        assert last.status_code == 200
        assert_rate_headers(last, 4, 0, 60)
        assert_limited(pclient.get("/api/t/public", **ip("192.0.2.77")), "ip", 60)


def test_product_auth_routes_login_per_ip_and_me_per_organisation(session, pclient, limits_on):
    """The real /api/auth routes: login (public) spends the caller's per-IP budget; ``me`` with
    credentials counts against the organisation and key instead."""
    key = api_key(session, make_organization(session).id)
    with limits_on(RATE_LIMIT_PUBLIC="2 per minute", RATE_LIMIT_API="50 per minute"):
        wrong = {"email": "nobody@example.test", "password": "not-the-password"}
        assert [pclient.post("/api/auth/login", json=wrong).status_code for _ in range(2)] == [401, 401]
        assert_limited(pclient.post("/api/auth/login", json=wrong), "ip", 60)
        me = pclient.get("/api/auth/me", headers=key)
        assert me.status_code == 200
        assert_rate_headers(me, 50, 49, 60)


# ----------------------------------------------------------------------------- client address


def test_forwarded_for_is_believed_only_from_trusted_proxies(pclient, override_settings):
    via_proxy = pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "203.0.113.9"}, **ip("127.0.0.1"))
    assert via_proxy.get_json()["ip"] == "203.0.113.9"
    # a client that sends the header itself: its proxy appends the real address, which wins
    with override_settings(TRUSTED_PROXIES=["127.0.0.1/32", "10.0.0.5/32"]):
        spoofed = pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "10.9.9.9, 1.1.1.1, 203.0.113.9"},
                              **ip("10.0.0.5"))
    assert spoofed.get_json()["ip"] == "203.0.113.9"
    # a peer that is not a trusted proxy cannot choose its address
    direct = pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "203.0.113.50"}, **ip("198.51.100.20"))
    assert direct.get_json()["ip"] == "198.51.100.20"
    with override_settings(TRUSTED_PROXIES=[]):
        untrusted = pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "203.0.113.9"}, **ip("127.0.0.1"))
    assert untrusted.get_json()["ip"] == "127.0.0.1"


def test_by_default_only_loopback_is_a_trusted_proxy(pclient, limits_on, override_settings):
    """Any host of a private network used to be believed: it could send X-Forwarded-For and start
    every per-IP limit afresh (login, sign-up) with each request."""
    from config import SETTINGS

    [default] = [s.default for s in SETTINGS if s.name == "TRUSTED_PROXIES"]
    assert default == "127.0.0.1/32,::1/128"
    with override_settings(TRUSTED_PROXIES=default.split(",")), limits_on(RATE_LIMIT_PUBLIC="2 per minute"):
        for peer in ("10.0.0.5", "172.18.0.3", "192.168.1.20", "fd00::5"):
            seen = pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "203.0.113.9"}, **ip(peer))
            assert seen.get_json()["ip"] == peer
        attacker = ip("10.0.0.66")
        for n in range(2):
            assert pclient.get("/api/t/public", headers={"X-Forwarded-For": f"198.51.100.{n}"},
                               **attacker).status_code == 200
        assert_limited(pclient.get("/api/t/public", headers={"X-Forwarded-For": "198.51.100.77"}, **attacker),
                       "ip", 60)
        assert pclient.get("/api/t/whoami", headers={"X-Forwarded-For": "203.0.113.9"},
                           **ip("::1")).get_json()["ip"] == "203.0.113.9", "nginx on this host is believed"


def test_per_ip_limit_keys_on_the_forwarded_client(pclient, limits_on, override_settings):
    behind_nginx = {"X-Forwarded-For": "203.0.113.9"}
    with override_settings(TRUSTED_PROXIES=["172.18.0.3/32"]), limits_on(RATE_LIMIT_PUBLIC="2 per minute"):
        for _ in range(2):
            assert pclient.get("/api/t/public", headers=behind_nginx, **ip("172.18.0.3")).status_code == 200
        assert_limited(pclient.get("/api/t/public", headers=behind_nginx, **ip("172.18.0.3")), "ip", 60)
        # another client behind the same proxy is not affected
        other = pclient.get("/api/t/public", headers={"X-Forwarded-For": "203.0.113.10"}, **ip("172.18.0.3"))
        assert other.status_code == 200


def test_ipv6_clients_are_counted_per_64(pclient, limits_on):
    with limits_on(RATE_LIMIT_PUBLIC="2 per minute"):
        assert pclient.get("/api/t/public", **ip("2001:db8:1:2::10")).status_code == 200
        assert pclient.get("/api/t/public", **ip("2001:db8:1:2:ffff::1")).status_code == 200
        assert pclient.get("/api/t/public", **ip("2001:db8:1:2::99")).status_code == 429
        assert pclient.get("/api/t/public", **ip("2001:db8:1:3::10")).status_code == 200


# ----------------------------------------------------------------------------- security headers


def _assert_base_headers(resp):
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["Referrer-Policy"] == "no-referrer"
    assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


def test_security_headers_on_every_kind_of_response(pclient):
    responses = {
        "json": pclient.get("/api/t/public"),
        "401": pclient.get("/api/t/private"),
        "404": pclient.get("/api/t/nope"),
        "405": pclient.delete("/api/t/public"),
        "413": pclient.post("/api/t/echo", data=b"{" + b" " * settings.MAX_REQUEST_BYTES + b"}",
                            content_type="application/json"),
        "health": pclient.get("/health"),
    }
    for name, resp in responses.items():
        _assert_base_headers(resp)
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'none'"), name
        assert "Strict-Transport-Security" not in resp.headers, f"{name}: HSTS over plain http"
    assert responses["413"].status_code == 413


def test_hsts_only_over_https(pclient):
    direct_tls = pclient.get("/api/t/public", base_url="https://localhost")
    assert direct_tls.headers["Strict-Transport-Security"].startswith("max-age=")
    via_proxy = pclient.get("/api/t/whoami", headers={"X-Forwarded-Proto": "https"}, **ip("127.0.0.1"))
    assert via_proxy.get_json()["scheme"] == "https"
    assert "Strict-Transport-Security" in via_proxy.headers
    # X-Forwarded-Proto from a peer that is not a trusted proxy is ignored
    forged = pclient.get("/api/t/whoami", headers={"X-Forwarded-Proto": "https"}, **ip("198.51.100.20"))
    assert forged.get_json()["scheme"] == "http"
    assert "Strict-Transport-Security" not in forged.headers
    assert "Strict-Transport-Security" not in pclient.get("/api/t/public").headers


def test_rate_limited_response_carries_security_headers(pclient, limits_on):
    with limits_on(RATE_LIMIT_PUBLIC="1 per minute"):
        pclient.get("/api/t/public")
        resp = pclient.get("/api/t/public")
    assert resp.status_code == 429
    _assert_base_headers(resp)


def test_headers_survive_a_response_replaced_after_a_failed_commit(session, pclient, monkeypatch, limits_on):
    """The request wrapper answers 503 itself when the commit fails; that response is built after
    the view, and still gets the security and rate limit headers."""
    import sqlalchemy.exc

    from app import db

    real = db.end_request_session

    def failing_commit(commit):
        if commit:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, Exception("connection lost"))
        real(commit=False)

    monkeypatch.setattr(db, "end_request_session", failing_commit)
    with limits_on(RATE_LIMIT_PUBLIC="5 per minute"):
        resp = pclient.get("/api/t/public")
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "service_unavailable"
    _assert_base_headers(resp)
    assert resp.headers["Cache-Control"] == "no-store"
    assert_rate_headers(resp, 5, 4, 60)


def test_cache_control_no_store_on_api_responses(session, pclient):
    key = api_key(session, make_organization(session).id)
    assert pclient.get("/api/t/private", headers=key).headers["Cache-Control"] == "no-store"
    assert pclient.get("/api/t/private").headers["Cache-Control"] == "no-store"
    assert pclient.get("/api/t/public").headers["Cache-Control"] == "no-store"
    # a public route may choose its own caching, but never for a caller with credentials
    assert pclient.get("/api/t/cacheable").headers["Cache-Control"] == "max-age=60"
    assert pclient.get("/api/t/cacheable", headers=key).headers["Cache-Control"] == "no-store"


def test_dashboard_policy_allows_its_own_assets_only(pclient):
    csp = pclient.get("/dashboard/t-page").headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "blob:" in directives["img-src"]  # the QR code is shown from a fetched blob
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp


def test_swagger_ui_policy_allows_this_server_only(pclient):
    for path in ("/api/docs", "/api/docs/swagger-ui-bundle.js"):
        resp = pclient.get(path)
        assert resp.status_code == 200
        csp = resp.headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'none'"
        assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'" and directives["frame-ancestors"] == "'none'"
        assert "http" not in csp and "unsafe" not in csp
    assert b"<script>" not in pclient.get("/api/docs").data  # no inline script to allow


# ----------------------------------------------------------------------------- CORS


@pytest.fixture
def cors_app(session, override_settings):
    def make(origins: str, env: str = "test"):
        with override_settings(CORS_ORIGINS=origins, APP_ENV=env):
            return build_app().test_client()
    return make


def test_cors_allows_listed_origins_with_preflight(session, cors_app):
    client = cors_app("https://app.example.com, https://admin.example.com:8443")
    pre = client.options("/api/t/private", headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, X-API-Key, Idempotency-Key, Content-Type, X-Request-ID"})
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    allowed = {h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {"authorization", "x-api-key", "idempotency-key", "content-type", "x-request-id"}
    assert "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in pre.headers  # header credentials, no cookies
    key = api_key(session, make_organization(session).id)
    resp = client.get("/api/t/private", headers={"Origin": "https://admin.example.com:8443", **key})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "https://admin.example.com:8443"
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "Retry-After", "X-Request-ID"} <= exposed
    assert "Origin" in resp.headers.get("Vary", "")
    # errors carry CORS headers too, so a browser app can read them
    assert client.get("/api/t/private", headers={"Origin": "https://app.example.com"}) \
        .headers["Access-Control-Allow-Origin"] == "https://app.example.com"


def test_cors_refuses_other_origins(cors_app):
    client = cors_app("https://app.example.com")
    for origin in ("https://evil.example.com", "https://app.example.com.evil.test", "http://app.example.com"):
        pre = client.options("/api/t/public", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
        assert "Access-Control-Allow-Origin" not in pre.headers, origin
        assert "Access-Control-Allow-Origin" not in client.get("/api/t/public", headers={"Origin": origin}).headers


def test_no_cors_headers_when_no_origin_is_configured(cors_app):
    client = cors_app("")
    resp = client.options("/api/t/public", headers={"Origin": "https://app.example.com",
                                                     "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_wildcard_origin_only_in_development(cors_app, override_settings):
    dev = cors_app("*", env="development")
    assert dev.get("/api/t/public", headers={"Origin": "http://localhost:5173"}) \
        .headers["Access-Control-Allow-Origin"] == "*"
    for env in ("test", "production"):
        with pytest.raises(SystemExit, match="CORS_ORIGINS"):
            with override_settings(SECRET_KEY="s" * 40, API_KEY_PEPPER="p" * 20,
                            APP_ENCRYPTION_KEYS="k1:" + base64.b64encode(b"k" * 32).decode()):
                cors_app("*", env=env)


def test_malformed_origins_are_refused_at_start(cors_app):
    for bad in ("app.example.com", "https://app.example.com/path", "https://*.example.com"):
        with pytest.raises(SystemExit, match="CORS_ORIGINS"):
            cors_app(bad)


def test_preflight_is_not_rate_limited(cors_app, limits_on):
    client = cors_app("https://app.example.com")
    with limits_on(RATE_LIMIT_PUBLIC="1 per minute"):
        statuses = [client.options("/api/t/public", headers={
            "Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"}).status_code
            for _ in range(3)]
        assert statuses == [200, 200, 200]
        assert client.get("/api/t/public").status_code == 200


def test_malformed_settings_are_refused_when_set():
    for name, value in (("RATE_LIMIT_PUBLIC", "lots"), ("RATE_LIMIT_API", "100 per fortnight"),
                        ("RATE_LIMIT_PRINCIPAL", "x"), ("TRUSTED_PROXIES", ["10.0.0.0/33"])):
        before = getattr(settings, name)
        with pytest.raises(SystemExit, match=name):
            settings.override(**{name: value})
        assert getattr(settings, name) == before


# ----------------------------------------------------------------------------- body limits


def _chunked(client, path: str, body: bytes, content_type: str = "application/json"):
    """A request whose body has no Content-Length (Transfer-Encoding: chunked), as gunicorn
    hands it to the app: a stream that the server terminates."""
    env = EnvironBuilder(path=path, method="POST", data=body, content_type=content_type).get_environ()
    del env["CONTENT_LENGTH"]
    env["HTTP_TRANSFER_ENCODING"] = "chunked"
    env["wsgi.input_terminated"] = True
    from werkzeug.test import run_wsgi_app

    app_iter, status, headers = run_wsgi_app(client.application, env, buffered=True)
    return int(status.split()[0]), json.loads(b"".join(app_iter))


def test_json_body_limit_with_content_length(pclient, override_settings):
    with override_settings(MAX_REQUEST_BYTES=1000):
        at_limit = b'{"a":"' + b"x" * (1000 - 8) + b'"}'
        assert len(at_limit) == 1000
        ok = pclient.post("/api/t/echo", data=at_limit, content_type="application/json")
        assert ok.status_code == 200
        over = pclient.post("/api/t/echo", data=at_limit + b" ", content_type="application/json")
    assert over.status_code == 413
    assert over.get_json()["error"]["code"] == "payload_too_large"
    assert over.get_json()["error"]["details"] == {"limit_bytes": 1000}


def test_chunked_json_body_limit(pclient, override_settings):
    with override_settings(MAX_REQUEST_BYTES=1000):
        status, body = _chunked(pclient, "/api/t/echo", b'{"a":"' + b"x" * 2000 + b'"}')
        assert (status, body["error"]["code"]) == (413, "payload_too_large")
        # padding after a small document used to be cut off at the limit and the rest accepted
        status, body = _chunked(pclient, "/api/t/echo", b'{"a":1}' + b" " * 5000)
        assert (status, body["error"]["code"]) == (413, "payload_too_large")
        status, body = _chunked(pclient, "/api/t/echo", b'{"a":"' + b"y" * 992 + b'"}')
        assert (status, body) == (200, {"received": {"a": "y" * 992}})


def test_upload_limit_with_and_without_content_length(session, override_settings):
    with override_settings(MAX_UPLOAD_BYTES=20_000, MAX_REQUEST_BYTES=1000):
        client = build_app().test_client()
        small = client.post("/api/t/upload", data={"file": (io.BytesIO(b"a" * 10_000), "a.bin")},
                            content_type="multipart/form-data")
        assert small.get_json() == {"size": 10_000}  # above the JSON limit: uploads have their own
        big = client.post("/api/t/upload", data={"file": (io.BytesIO(b"a" * 30_000), "a.bin")},
                          content_type="multipart/form-data")
        assert big.status_code == 413 and big.get_json()["error"]["code"] == "payload_too_large"
        builder = EnvironBuilder(method="POST", data={"file": (io.BytesIO(b"a" * 30_000), "a.bin")})
        status, body = _chunked(client, "/api/t/upload", builder.get_environ()["wsgi.input"].read(),
                                content_type=builder.get_environ()["CONTENT_TYPE"])
    assert (status, body["error"]["code"]) == (413, "payload_too_large")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _send_chunked(port: int, body: bytes):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("POST", "/api/t/echo")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for i in range(0, len(body), 4096):
            piece = body[i:i + 4096]
            conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        conn.send(b"0\r\n\r\n")
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def test_chunked_body_limit_under_gunicorn():
    """The real server: gunicorn decodes the chunked body, the app refuses it past the limit."""
    port = _free_port()
    proc = spawn(["-m", "gunicorn", "-c", "python:app.system.gunicorn_conf", "tests.security.test_protection:build_app()",
                  "--bind", f"127.0.0.1:{port}", "--workers", "1"], MAX_REQUEST_BYTES="1000")
    try:
        def up():
            if proc.poll() is not None:
                raise AssertionError(stop(proc))
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_for(up, timeout=30, message="gunicorn")
        assert _send_chunked(port, b'{"a":"' + b"x" * 5000 + b'"}')[0] == 413
        assert _send_chunked(port, b'{"a":"ok"}') == (200, {"received": {"a": "ok"}})
    finally:
        stop(proc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
