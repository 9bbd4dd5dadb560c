"""Per-organisation caps: one more client, key, proxy, user or contact than the setting allows is
a 422 ``limit_reached``; deleted or revoked ones do not count; another organisation is not affected;
concurrent creations cannot pass the cap together."""
from __future__ import annotations

import threading

import pytest

from app.db import utcnow
from tests import factories as f
from tests.auth_helpers import principal_headers


@pytest.fixture
def caps(override_settings):
    names = ("MAX_CLIENTS_PER_ORG", "MAX_API_KEYS_PER_ORG", "MAX_PROXIES_PER_ORG", "MAX_USERS_PER_ORG",
             "MAX_CONTACTS_PER_ORG")
    override_settings(**{n: 2 for n in names})


NEW = {
    "/api/clients": lambda n: {"name": f"Phone {n}", "transport": "sim"},
    "/api/api-keys": lambda n: {"name": f"key {n}", "role": "viewer"},
    "/api/proxies": lambda n: {"scheme": "http", "host": f"proxy{n}.example.test", "port": 3128},
    "/api/users": lambda n: {"email": f"user{n}@example.test", "name": f"User {n}", "password": "a long enough secret",
                             "role": "viewer"},
    "/api/contacts": lambda n: {"phone": f"+1415555{n:04d}"},
}


@pytest.mark.parametrize("path", list(NEW))
def test_one_more_than_the_cap_is_limit_reached(client, session, caps, path):
    org = f.make_organization(session)
    admin = principal_headers(session, org, "admin")  # a user: counts against MAX_USERS_PER_ORG itself
    start = 1 if path == "/api/users" else 0
    for n in range(start, 2):
        resp = client.post(path, json=NEW[path](n), headers=admin)
        assert resp.status_code == 201, resp.get_json()
    refused = client.post(path, json=NEW[path](9), headers=admin)
    assert refused.status_code == 422, refused.get_json()
    error = refused.get_json()["error"]
    assert error["code"] == "limit_reached" and error["details"]["limit"] == 2 and error["details"]["count"] == 2
    other = f.make_organization(session)
    assert client.post(path, json=NEW[path](9), headers=principal_headers(session, other, "admin")).status_code == 201


def test_deleted_and_revoked_rows_do_not_count(client, session, caps):
    org = f.make_organization(session)
    admin = principal_headers(session, org, "admin")
    f.make_client(session, organization_id=org.id, deleted_at=utcnow())
    f.make_client(session, organization_id=org.id, deleted_at=utcnow())
    assert client.post("/api/clients", json=NEW["/api/clients"](1), headers=admin).status_code == 201
    keys = [client.post("/api/api-keys", json=NEW["/api/api-keys"](n), headers=admin).get_json()["id"] for n in (1, 2)]
    assert client.delete(f"/api/api-keys/{keys[0]}", headers=admin).status_code == 204
    assert client.post("/api/api-keys", json=NEW["/api/api-keys"](3), headers=admin).status_code == 201


def test_concurrent_creations_cannot_pass_the_cap_together(committed, committed_app, caps):
    org = f.make_organization(committed)
    admin = principal_headers(committed, org, "admin")
    committed.commit()
    answers, barrier = [], threading.Barrier(6)

    def create(n):
        with committed_app.test_client() as c:
            barrier.wait()
            answers.append(c.post("/api/clients", json=NEW["/api/clients"](n), headers=admin).status_code)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(answers) == [201, 201, 422, 422, 422, 422]
