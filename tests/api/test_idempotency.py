"""Idempotency-Key on creating POSTs (app/idempotency.py)."""
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from app.models import IdempotencyKey, Message
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers

TO = "+14155550123"


@pytest.fixture
def setup(session):
    org = f.make_organization(session)
    client_row = f.make_client(session, organization_id=org.id, status="ready")
    return org, client_row, api_key_headers(session, org, "admin")


def count_messages(session) -> int:
    return session.scalar(select(func.count()).select_from(Message))


def test_same_key_and_body_replays_the_first_response(session, client, setup):
    org, cli, headers = setup
    h = {**headers, "Idempotency-Key": "order-1"}
    first = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "hi"}, headers=h)
    assert first.status_code == 202
    again = client.post(f"/api/clients/{cli.id}/send-message", json={"message": "hi", "to": TO}, headers=h)
    assert again.status_code == 202 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert count_messages(session) == 1
    row = session.scalars(select(IdempotencyKey)).one()
    assert row.status == "completed" and row.response_status == 202 and row.response_body == first.get_json()
    assert row.expires_at - row.created_at == timedelta(hours=24)


def test_same_key_with_another_body_or_path_is_422(session, client, setup):
    org, cli, headers = setup
    h = {**headers, "Idempotency-Key": "k-2"}
    assert client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "a"}, headers=h).status_code == 202
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "b"}, headers=h)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "idempotency_key_reused"
    r = client.post("/api/messages", json={"client_id": cli.id, "to": TO, "text": "a"}, headers=h)
    assert r.status_code == 422
    assert count_messages(session) == 1


def test_a_failed_request_does_not_keep_the_key(session, client, setup):
    org, cli, headers = setup
    h = {**headers, "Idempotency-Key": "k-3"}
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": "nope", "message": "a"}, headers=h)
    assert r.status_code == 422
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "a"}, headers=h)
    assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers


def test_while_the_first_is_in_flight_409(session, app, client, setup):
    org, cli, headers = setup
    from app import idempotency

    path, body = f"/api/clients/{cli.id}/send-message", {"to": TO, "message": "a"}
    key_id = session.scalar(text("SELECT id FROM api_keys ORDER BY created_at DESC LIMIT 1"))
    with app.test_request_context(path, method="POST", json=body):
        fingerprint = idempotency._fingerprint()
    f.make_idempotency_key(session, organization_id=org.id, key="k-4", status="in_flight", principal_id=key_id,
                           request_hash=fingerprint, path=path)
    r = client.post(path, json=body, headers={**headers, "Idempotency-Key": "k-4"})
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "idempotency_in_flight"
    assert r.headers["Retry-After"] == "1"
    # a claim abandoned by a dead process is taken over after the in-flight timeout
    session.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '1 hour' WHERE key = 'k-4'"))
    r = client.post(path, json=body, headers={**headers, "Idempotency-Key": "k-4"})
    assert r.status_code == 202
    assert count_messages(session) == 1


def test_keys_are_per_organisation_and_caller(session, client, setup):
    org, cli, headers = setup
    body = {"to": TO, "message": "a"}
    assert client.post(f"/api/clients/{cli.id}/send-message", json=body,
                       headers={**headers, "Idempotency-Key": "shared"}).status_code == 202
    other_org = f.make_organization(session)
    other_cli = f.make_client(session, organization_id=other_org.id, status="ready")
    other = api_key_headers(session, other_org, "admin")
    assert client.post(f"/api/clients/{other_cli.id}/send-message", json=body,
                       headers={**other, "Idempotency-Key": "shared"}).status_code == 202
    colleague = principal_headers(session, org, "admin")
    r = client.post(f"/api/clients/{cli.id}/send-message", json=body, headers={**colleague, "Idempotency-Key": "shared"})
    assert r.status_code == 422
    assert count_messages(session) == 2


def test_an_expired_key_can_be_used_again(session, client, setup):
    org, cli, headers = setup
    h = {**headers, "Idempotency-Key": "k-5"}
    first = client.post("/api/messages", json={"client_id": cli.id, "to": TO, "text": "a"}, headers=h).get_json()
    session.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    second = client.post("/api/messages", json={"client_id": cli.id, "to": TO, "text": "a"}, headers=h).get_json()
    assert second["id"] != first["id"]


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "é"])
def test_invalid_keys_are_422(client, setup, key):
    org, cli, headers = setup
    r = client.post("/api/messages", json={"client_id": cli.id, "to": TO, "text": "a"},
                    headers={**headers, "Idempotency-Key": key})
    assert r.status_code == 422 and "Idempotency-Key" in r.get_json()["error"]["details"]


def test_contacts_and_batches_take_keys_too(session, client, setup):
    org, cli, headers = setup
    h = {**headers, "Idempotency-Key": "contact-1"}
    a = client.post("/api/contacts", json={"phone": TO, "name": "Ann"}, headers=h)
    b = client.post("/api/contacts", json={"phone": TO, "name": "Ann"}, headers=h)
    assert a.status_code == b.status_code == 201 and a.get_json() == b.get_json()
    h = {**headers, "Idempotency-Key": "batch-1"}
    body = {"client_id": cli.id, "messages": [{"to": TO, "text": "x"}, {"to": "+14155550124", "text": "y"}]}
    a = client.post("/api/messages/batch", json=body, headers=h)
    b = client.post("/api/messages/batch", json=body, headers=h)
    assert a.get_json() == b.get_json() and count_messages(session) == 2


def test_the_header_is_documented_in_openapi(client):
    spec = client.get("/api/openapi.json").get_json()
    params = spec["paths"]["/api/messages"]["post"].get("parameters", [])
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params)


@pytest.mark.workers
def test_concurrent_duplicates_create_one_message(committed, committed_client):
    """Real transactions: of simultaneous requests with one key, one creates, the others replay or get 409."""
    org = f.make_organization(committed)
    cli = f.make_client(committed, organization_id=org.id, status="ready", config={"pacing": False})
    headers = api_key_headers(committed, org, "admin")
    committed.commit()
    from app import create_app

    results = []
    application = create_app(TESTING=True)  # one app: building several at once in threads is unsafe

    def post():
        with application.test_client() as c:
            r = c.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "once"},
                       headers={**headers, "Idempotency-Key": "race"})
            results.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=post) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for code, _ in results)
    assert len(codes) == 6 and set(codes) <= {202, 409} and 202 in codes, results
    ids = {body["id"] for code, body in results if code == 202}
    assert len(ids) == 1
    assert committed.scalar(select(func.count()).select_from(Message)) == 1


@pytest.mark.workers
def test_the_claim_commits_on_its_own_in_autocommit(committed, committed_client):
    """Real commits (the claim's autocommit path): a key is in flight for others as soon as it is
    claimed, replayed once completed, and an expired or abandoned one is taken over."""
    org = f.make_organization(committed)
    cli = f.make_client(committed, organization_id=org.id, status="ready", config={"pacing": False})
    headers = api_key_headers(committed, org, "admin")
    committed.commit()
    path, body = f"/api/clients/{cli.id}/send-message", {"to": TO, "message": "hi"}
    h = {**headers, "Idempotency-Key": "auto-1"}
    first = committed_client.post(path, json=body, headers=h)
    assert first.status_code == 202
    again = committed_client.post(path, json=body, headers=h)
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    assert committed_client.post(path, json={**body, "message": "other"}, headers=h).status_code == 422
    row = committed.scalars(select(IdempotencyKey).where(IdempotencyKey.key == "auto-1")).one()
    assert (row.status, row.response_status, row.response_body) == ("completed", 202, first.get_json())
    committed.execute(text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second'"))
    committed.commit()
    taken = committed_client.post(path, json={**body, "message": "other"}, headers=h)  # expired: a new request
    assert taken.status_code == 202 and taken.get_json()["id"] != first.get_json()["id"]
    committed.execute(text("UPDATE idempotency_keys SET status = 'in_flight', created_at = now() - interval '10 s'"))
    committed.commit()
    other = {**body, "message": "other"}
    assert committed_client.post(path, json=other, headers=h).status_code == 409, "in flight, not abandoned yet"
    committed.execute(text("UPDATE idempotency_keys SET created_at = now() - interval '1 hour'"))
    committed.commit()
    assert committed_client.post(path, json=body, headers=h).status_code == 202, "abandoned: taken over by anyone"
    assert committed.scalar(select(func.count()).select_from(Message)) == 3


CREATING = {  # every creating POST of API.md that a principal calls, with a valid body
    "/api/clients": ({"name": "Phone", "transport": "sim"}, None),
    "/api/proxies": ({"scheme": "http", "host": "proxy.example.test", "port": 8080, "username": "u",
                      "password": "proxy-pass-1"}, None),
    "/api/users": ({"email": "new.agent@example.test", "name": "New", "password": "a long enough secret 1",
                    "role": "agent"}, None),
    "/api/api-keys": ({"name": "script", "role": "viewer"}, "key"),
    "/api/webhooks": ({"url": "https://hooks.example.test/wa", "events": ["*"]}, "secret"),
    "/api/contacts": ({"phone": TO, "name": "Ann"}, None),
}


@pytest.mark.parametrize("path", sorted(CREATING))
def test_every_creating_post_replays_and_creates_once(session, client, setup, path):
    org, cli, headers = setup
    body, secret_field = CREATING[path]
    h = {**headers, "Idempotency-Key": f"create-{path}"}
    first = client.post(path, json=body, headers=h)
    assert first.status_code == 201, first.get_json()
    again = client.post(path, json=body, headers=h)
    assert again.status_code == 201 and again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    listed = client.get(path, headers=headers).get_json()["items"]
    assert [item["id"] for item in listed].count(first.get_json()["id"]) == 1
    row = session.scalars(select(IdempotencyKey).where(IdempotencyKey.key == f"create-{path}")).one()
    stored = str(row.response_body) + row.request_hash
    if secret_field:  # shown again to the same caller, but never kept in clear
        shown = first.get_json()[secret_field]
        assert shown and shown not in stored and list(row.response_body) == ["encrypted_response"]
    for password in ("proxy-pass-1", "a long enough secret 1"):
        assert password not in stored
    other = client.post(path, json={**body, "name": "Another"}, headers=h)
    assert other.status_code == 422 and other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_every_creating_post_documents_the_header(client):
    spec = client.get("/api/openapi.json").get_json()
    creating = sorted(path for path, ops in spec["paths"].items()
                      if "201" in ops.get("post", {}).get("responses", {}) and not path.startswith("/api/auth/"))
    assert set(CREATING) <= set(creating), creating
    for path in creating:
        params = spec["paths"][path]["post"].get("parameters", [])
        assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in params), path


def test_a_failed_release_is_retried_so_a_correct_retry_is_not_refused(session, monkeypatch):
    """The database blipped while the failed request let go of its key: the release used to be
    swallowed, and the client's correct retry got 409 in flight for a minute."""
    from app import idempotency
    from app.models import IdempotencyKey

    key = f.make_idempotency_key(session, status="in_flight")
    real, calls = idempotency._try_release, []

    def flaky(key_id):
        calls.append(key_id)
        return False if len(calls) == 1 else real(key_id)

    monkeypatch.setattr(idempotency, "_try_release", flaky)
    idempotency.release(key.id)  # answers at once; a background thread keeps trying
    idempotency._releaser._thread.join(30)  # (nothing else uses the test's connection meanwhile)
    assert session.get(IdempotencyKey, key.id, populate_existing=True) is None and len(calls) == 2
