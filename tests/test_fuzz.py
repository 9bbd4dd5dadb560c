"""Property-based fuzzing of every operation of the OpenAPI document (schemathesis): whatever a
caller sends — valid, invalid, NUL characters, odd types — the answer is never a 5xx, and every
error speaks the contract's format.

Each operation is run with an admin's API key and without credentials. Path ids are tried as
generated (a random id: 404) and replaced by the id of a real object of the organisation, so that
fuzzed bodies and queries reach the services. Deterministic: Hypothesis is derandomized (the same
examples every run) and nothing leaves the machine (webhook URLs are not resolved).
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from tests import factories as f

MAX_EXAMPLES = 12


def _document() -> dict:
    from app import create_app

    return create_app(TESTING=True).test_client().get("/api/openapi.json").get_json()


schema = schemathesis.openapi.from_dict(_document())


class Target:
    """The app, the credentials and the ids of real objects that fuzzed paths may point at."""

    def __init__(self, app, headers: dict, ids: dict):
        self.app, self.headers, self.ids = app, headers, ids


@pytest.fixture
def target(app, session, monkeypatch):
    from app.apikeys.service import create_api_key
    from app.security.principal import Principal
    from app.webhooks import ssrf, service as webhook_service

    # no DNS: a fuzzed webhook URL with a host name is "not resolvable now" (accepted, checked later)
    monkeypatch.setattr(ssrf, "resolve", lambda host, port: (_ for _ in ()).throw(OSError("no DNS in tests")))
    org = f.make_organization(session)
    admin = f.make_user(session, organization_id=org.id, role="admin")
    principal = Principal(organization_id=org.id, kind="user", id=admin.id, role="admin")
    _, secret = create_api_key(session, principal, name="fuzz", role="admin")
    other_key, _ = create_api_key(session, principal, name="fuzz target", role="viewer")
    client = f.make_client(session, organization_id=org.id, transport="sim", status="ready")
    hook = webhook_service.create_webhook(session, principal, url="https://93.184.215.14/hook", events=["*"])
    ids = {
        "client_id": client.id,
        "proxy_id": f.make_proxy(session, organization_id=org.id).id,
        "contact_id": f.make_contact(session, organization_id=org.id).id,
        "user_id": f.make_user(session, organization_id=org.id, role="agent").id,
        "message_id": f.make_message(session, organization_id=org.id, client_id=client.id).id,
        "key_id": other_key.id,
        "webhook_id": hook["id"],
        "delivery_id": f.make_webhook_delivery(session, organization_id=org.id, webhook_id=hook["id"]).id,
    }
    session.flush()
    return Target(app, {"X-API-Key": secret}, ids)


def _check(response, case) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code < 500, f"{where}\n{response.text[:2000]}\n{case.as_curl_command()}"
    if response.status_code >= 400 and response.headers.get("Content-Type", "").startswith("application/json"):
        body = response.json()
        assert set(body) == {"error"}, where
        assert set(body["error"]) == {"code", "message", "details"}, where


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
def test_no_server_error(case, target):
    for headers in (target.headers, {}):
        _check(case.call(app=target.app, headers=headers), case)
    if case.path_parameters and set(case.path_parameters) <= set(target.ids):
        case.path_parameters = {name: target.ids[name] for name in case.path_parameters}
        _check(case.call(app=target.app, headers=target.headers), case)
