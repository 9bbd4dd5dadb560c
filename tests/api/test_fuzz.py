"""Property-based fuzzing of every operation of the OpenAPI document (schemathesis): whatever a
caller sends — valid or not, NUL characters, odd types, extra parameters — the answer is never a
5xx, its status is one the document lists for the operation, and its body is what the document
says (an error in the contract's format).

Each operation is called with an admin's API key and without credentials. Path ids are tried as
generated (not found) and replaced by the id of a real object of the organisation, so that fuzzed
bodies and queries reach the services. Deterministic: Hypothesis is derandomized (the same
examples every run, nothing stored between runs) and nothing leaves the machine (host names of
webhook URLs and proxies are not resolved). ``MAX_EXAMPLES`` bounds the run.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from tests import factories as f

MAX_EXAMPLES = 10
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_app():
    from app import create_app

    return create_app(TESTING=True)


def _document() -> dict:
    from app import create_app

    return create_app(TESTING=True).test_client().get("/api/openapi.json").get_json()


schema = schemathesis.openapi.from_dict(_document())


class Target:
    """The app, an admin's credentials and the ids of real objects that fuzzed paths may point at."""

    def __init__(self, app, headers: dict, ids: dict):
        self.app, self.headers, self.ids = app, headers, ids


@pytest.fixture
def target(fuzz_app, session, monkeypatch):
    from app.apikeys.service import create_api_key
    from app.security import ssrf
    from app.security.principal import Principal
    from app.webhooks import service as webhook_service

    def no_dns(host, port):
        raise OSError("no DNS in this test")  # a host name (webhook, proxy) is then "not resolvable now"

    monkeypatch.setattr(ssrf, "resolve", no_dns)
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
    return Target(fuzz_app, {"X-API-Key": secret}, ids)


def _call(case, target, headers: dict) -> None:
    response = case.call(app=target.app, headers=headers)
    if case.method.lower() != case.operation.method.lower():  # schemathesis tries other methods too
        allowed = case.method in ("OPTIONS", "HEAD")  # Flask answers these for every route
        assert response.status_code == (200 if allowed else 405), f"{case.method} {case.formatted_path}"
        if not allowed:
            assert set(response.json()["error"]) == {"code", "message", "details"}
        return
    documented = case.operation.definition.raw["responses"]
    assert str(response.status_code) in documented, (
        f"{case.method} {case.formatted_path} answered {response.status_code}, which the document does not "
        f"list: {sorted(documented)}\n{response.text[:500]}\n{case.as_curl_command()}")
    case.validate_response(response, checks=CHECKS, headers=headers)


#: one pytest item per operation, with an id of its own (schemathesis's own parametrize gives
#: every operation the same node id, and pytest-xdist then runs one of them only)
OPERATIONS = [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_no_server_error_and_only_documented_answers(operation, target):
    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case):
        _call(case, target, target.headers)
        _call(case, target, {})
        if case.path_parameters and set(case.path_parameters) <= set(target.ids):
            case.path_parameters = {name: target.ids[name] for name in case.path_parameters}
            _call(case, target, target.headers)

    fuzz()
