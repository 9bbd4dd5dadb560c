"""Hostile input is a clear 400/422 in the contract's format, never a 500: NUL characters and
unpaired surrogates anywhere, JSON nested too deep, times at the edges of the calendar."""
import json

import pytest

from app.request_guard import MAX_JSON_DEPTH
from tests import factories as f


def _error(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def test_nul_in_the_body_of_the_unauthenticated_login_is_422_naming_the_field(client):
    err = _error(client.post("/api/auth/login", json={"email": "a\u0000@example.test", "password": "x" * 12}),
                 422, "validation_error")
    assert list(err["details"]) == ["email"]


def test_nul_in_a_path_id_is_422_naming_it(client, admin_key_headers):
    err = _error(client.get("/api/clients/cli_%00x", headers=admin_key_headers), 422, "validation_error")
    assert list(err["details"]) == ["client_id"]
    err = _error(client.delete("/api/contacts/%00", headers=admin_key_headers), 422, "validation_error")
    assert list(err["details"]) == ["contact_id"]


def test_nul_in_a_query_argument_is_422_naming_it(client, admin_key_headers):
    err = _error(client.get("/api/messages?contact=ctc_%00", headers=admin_key_headers), 422, "validation_error")
    assert list(err["details"]) == ["contact"]
    err = _error(client.get("/api/audit-logs?target=%00", headers=admin_key_headers), 422, "validation_error")
    assert list(err["details"]) == ["target"]
    # an escaped percent sign is text, not a NUL
    assert client.get("/api/audit-logs?target=%2500", headers=admin_key_headers).status_code == 200


def test_nul_in_a_header_is_400(client):
    err = _error(client.post("/api/auth/login", json={"email": "a@example.test", "password": "x" * 12},
                             headers={"User-Agent": "curl\u0000"}), 400, "invalid_header")
    assert err["details"] == {"header": "User-Agent"}


def test_nul_or_a_lone_surrogate_deep_in_a_body_names_the_field(client, admin_key_headers):
    resp = client.post("/api/contacts", headers=admin_key_headers,
                       json={"phone": "+14155550123", "tags": ["ok", "n\u0000"]})
    assert _error(resp, 422, "validation_error")["details"] == {"tags.1": [
        "Must not contain NUL characters or unpaired surrogates."]}
    raw = '{"phone": "+14155550123", "name": "\\ud800"}'
    resp = client.post("/api/contacts", headers=admin_key_headers, data=raw, content_type="application/json")
    assert list(_error(resp, 422, "validation_error")["details"]) == ["name"]
    resp = client.post("/api/contacts", headers=admin_key_headers,
                       json={"phone": "+14155550123", "attributes": {"k\u0000": 1}})
    assert list(_error(resp, 422, "validation_error")["details"]) == ["attributes"]
    resp = client.post("/api/messages/batch", headers=admin_key_headers, json={"client_id": "cli_x", "messages": [
        {"to": "+14155550123", "text": "fine"}, {"to": "+14155550123", "text": "not \u0000 fine"}]})
    assert list(_error(resp, 422, "validation_error")["details"]) == ["messages.1.text"]


def test_a_body_is_checked_only_after_the_caller_is_authenticated(client):
    resp = client.post("/api/contacts", json={"phone": "+14155550123", "name": "\u0000"})
    _error(resp, 401, "unauthorized")


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 1000, 100_000])
def test_json_nested_too_deep_is_400_malformed_json(client, admin_key_headers, depth):
    raw = '{"phone": "+14155550123", "attributes": {"a": ' + "[" * depth + "]" * depth + "}}"
    resp = client.post("/api/contacts", headers=admin_key_headers, data=raw, content_type="application/json")
    _error(resp, 400, "malformed_json")


def test_json_nested_to_the_limit_is_accepted(client, admin_key_headers):
    nested = "[" * (MAX_JSON_DEPTH - 2) + "]" * (MAX_JSON_DEPTH - 2)  # inside {"attributes": {"a": ...}}
    raw = '{"phone": "+14155550123", "attributes": {"a": ' + nested + "}}"
    resp = client.post("/api/contacts", headers=admin_key_headers, data=raw, content_type="application/json")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    assert json.dumps(resp.get_json()["attributes"]["a"]).count("[") == MAX_JSON_DEPTH - 2


def test_times_at_the_edges_of_the_calendar(client, session, org, admin_key_headers):
    message = f.make_message(session, organization_id=org.id)
    for query in ("since=0001-01-01T00:00:00Z", "until=9999-12-31T23:59:59Z", "since=1960-01-01T00:00:00Z"):
        resp = client.get(f"/api/messages?{query}", headers=admin_key_headers)
        assert resp.status_code == 200, (query, resp.get_data(as_text=True))
        assert [m["id"] for m in resp.get_json()["items"]] == [message.id], query
    for query in ("since=0001-01-01T00:00:00%2B05:00", "until=9999-12-31T23:59:59-05:00"):
        err = _error(client.get(f"/api/messages?{query}", headers=admin_key_headers), 422, "validation_error")
        assert list(err["details"]) == [query.split("=")[0]]
    err = _error(client.get("/api/audit-logs?since=0001-01-01T00:00:00%2B01:00", headers=admin_key_headers),
                 422, "validation_error")
    assert list(err["details"]) == ["since"]
    assert client.get("/api/audit-logs?since=0001-01-01T00:00:00Z", headers=admin_key_headers).status_code == 200


def test_a_cursor_the_server_did_not_make_is_422(client, session, org, admin_key_headers):
    import base64

    hook = f.make_webhook(session, organization_id=org.id)
    for raw in (b"a_\x00", "cli_\u00e9".encode(), b"att_\xc2\xb2", b"cli_01J' OR 1=1", b"nounderscore"):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for path in ("/api/clients", "/api/messages", "/api/audit-logs", f"/api/webhooks/{hook.id}/deliveries"):
            resp = client.get(f"{path}?cursor={cursor}", headers=admin_key_headers)
            assert _error(resp, 422, "validation_error")["details"] == {"cursor": ["Invalid cursor."]}, (path, raw)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_numbers_json_does_not_have_are_400_malformed_json(client, admin_key_headers, number):
    raw = '{"phone": "+14155550123", "attributes": {"a": ' + number + "}}"
    resp = client.post("/api/contacts", headers=admin_key_headers, data=raw, content_type="application/json")
    _error(resp, 400, "malformed_json")
    raw = '{"phone": "+14155550123", "attributes": {"a": 1.5e300, "b": 12345678901234567890123}}'
    assert client.post("/api/contacts", headers=admin_key_headers, data=raw,
                       content_type="application/json").status_code == 201
