"""The OpenAPI document is valid and complete: every operation has an operationId, a description,
the errors it can answer in the contract's format (with ``Retry-After`` where it applies), and
examples that are valid against their schemas. What it says about authentication, ids, bodies,
idempotency and rate limits is checked against the routes themselves."""
import re

import jsonschema
import pytest
from apispec.exceptions import APISpecError
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from app.security.protection import limit_scope

METHODS = ("get", "post", "put", "patch", "delete")


def operations(spec):
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def _handler(app, path, method):
    """The view method answering ``method path`` of the document."""
    rule_path = re.sub(r"\{(\w+)\}", r"<\1>", path)
    rule = next(r for r in app.url_map.iter_rules() if re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", r.rule) == rule_path)
    return rule, getattr(app.view_functions[rule.endpoint].view_class, method)


def _validator(spec, schema):
    """A validator of ``schema`` (a $ref into the document, or inline) with the document's components."""
    return OAS30Validator({**schema, "components": spec["components"]})


def test_openapi_document_validates(spec):
    validate(spec)
    assert spec["info"]["title"] == "WhatsApp Service API"
    assert "/health" in spec["paths"]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_the_error_schema_is_the_contracts(spec, client):
    schemas = spec["components"]["schemas"]
    assert schemas["Error"]["required"] == ["error"]
    info = schemas["ErrorInfo"]
    assert sorted(info["required"]) == ["code", "details", "message"]
    assert {name: p["type"] for name, p in info["properties"].items()} == {
        "code": "string", "message": "string", "details": "object"}
    # and real error bodies are valid against it
    for resp in (client.get("/api/clients"), client.get("/api/nope"), client.post("/api/auth/login", json={})):
        _validator(spec, {"$ref": "#/components/schemas/Error"}).validate(resp.get_json())


def test_every_operation_has_a_unique_readable_operation_id_a_summary_and_a_description(spec):
    seen = {}
    for path, method, op in operations(spec):
        where = f"{method.upper()} {path}"
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", op.get("operationId", "")), where
        assert seen.setdefault(op["operationId"], where) == where, f"{where} repeats {seen[op['operationId']]}"
        assert op.get("summary"), where
        assert len(op.get("description", "")) > 40 and op["description"] != op["summary"], where


def test_operation_ids_follow_the_naming_rule(spec):
    ids = {f"{m.upper()} {p}": op["operationId"] for p, m, op in operations(spec)}
    assert ids["GET /api/clients"] == "clients_list"
    assert ids["POST /api/clients"] == "clients_create"
    assert ids["GET /api/clients/{client_id}"] == "clients_get"
    assert ids["PATCH /api/clients/{client_id}"] == "clients_update"
    assert ids["DELETE /api/clients/{client_id}"] == "clients_delete"
    assert ids["POST /api/clients/{client_id}/start"] == "clients_start"
    assert ids["GET /api/clients/{client_id}/qr"] == "clients_qr"
    assert ids["POST /api/auth/login"] == "auth_login"
    assert ids["PUT /api/users/{user_id}/clients"] == "users_clients_replace"
    assert ids["GET /api/webhooks/{webhook_id}/deliveries"] == "webhooks_deliveries_list"
    assert ids["GET /health"] == "health"


def test_a_duplicate_operation_id_stops_the_app(session):
    from flask.views import MethodView
    from flask_smorest import Blueprint

    from app import create_app
    from app.security.guard import public

    app = create_app(TESTING=True)
    blp = Blueprint("dup", __name__)
    for path in ("/api/a-b", "/api/a_b"):
        @blp.route(path, endpoint=path.replace("/", ""))
        class View(MethodView):
            @public
            def get(self):
                """Probe

                A route whose derived operationId collides with the other one's.
                """
    with pytest.raises(APISpecError, match="a_b"):
        app.extensions["smorest_api"].register_blueprint(blp)


def test_every_operation_documents_the_errors_it_can_answer(spec, app):
    for path, method, op in operations(spec):
        where = f"{method.upper()} {path}"
        responses = op["responses"]
        rule, handler = _handler(app, path, method)
        expected = {"400", "422", "503"}
        if getattr(handler, "permission", None):
            expected |= {"401", "403"}
            assert op["x-permission"] == handler.permission, where
            assert f"`{handler.permission}`" in responses["403"]["description"], where
        if rule.arguments:
            expected.add("404")
        if "requestBody" in op:
            expected |= {"413", "415"}
        if getattr(handler, "idempotent", False):
            expected.add("409")
            assert "idempotency_in_flight" in responses["409"]["description"], where
            assert "Retry-After" in responses["409"]["headers"], where
            assert any(p["name"] == "Idempotency-Key" for p in op["parameters"]), where
        if limit_scope(rule.rule, handler):
            expected.add("429")
            assert "Retry-After" in responses["429"]["headers"], where
        assert expected <= set(responses), f"{where} lacks {sorted(expected - set(responses))}"
        assert "Retry-After" in responses["503"]["headers"], where
        for status, response in responses.items():
            if status[0] not in "45" or path == "/health":
                continue
            media = response["content"]["application/json"]
            assert media["schema"] == {"$ref": "#/components/schemas/Error"}, (where, status)
            _validator(spec, media["schema"]).validate(media["example"])
            code = media["example"]["error"]["code"]
            assert f"`{code}`" in response["description"], (where, status)


def test_operation_specific_error_codes(spec):
    ops = {f"{m.upper()} {p}": op for p, m, op in operations(spec)}

    def codes(where, status):
        return set(re.findall(r"`([a-z_]+)`", ops[where]["responses"][status]["description"]))

    assert "client_not_in_qr_state" in codes("GET /api/clients/{client_id}/qr", "409")
    assert "client_already_running" in codes("POST /api/clients/{client_id}/start", "409")
    assert "message_not_cancellable" in codes("POST /api/messages/{message_id}/cancel", "409")
    assert "contact_exists" in codes("POST /api/contacts", "409")
    assert {"contact_exists", "idempotency_in_flight"} <= codes("POST /api/contacts", "409")
    assert "contact_opted_out" in codes("POST /api/messages", "422")
    assert "invalid_credentials" in codes("POST /api/auth/login", "401")
    assert "login_throttled" in codes("POST /api/auth/login", "429")
    assert "401" not in ops["GET /health"]["responses"] and "429" not in ops["GET /health"]["responses"]


def test_every_json_body_has_an_example_valid_against_its_schema(spec):
    for path, method, op in operations(spec):
        where = f"{method.upper()} {path}"
        bodies = [("request", op.get("requestBody", {}).get("content", {}))]
        bodies += [(status, r.get("content", {})) for status, r in op["responses"].items() if status[0] == "2"]
        for what, content in bodies:
            media = content.get("application/json")
            if media is None:
                continue
            assert "example" in media, (where, what)
            _validator(spec, media["schema"]).validate(media["example"])


def test_examples_are_checked_for_real(spec):
    """The example check above can fail: a wrong example is refused."""
    with pytest.raises(jsonschema.ValidationError):
        _validator(spec, {"$ref": "#/components/schemas/ClientCreate"}).validate({"name": 3})
    with pytest.raises(jsonschema.ValidationError):
        _validator(spec, {"$ref": "#/components/schemas/Error"}).validate({"error": {"code": "x"}})
