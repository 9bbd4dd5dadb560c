"""Every endpoint of the OpenAPI document, walked: declared permissions, the role matrix, and
tenant isolation.

For every path and method of ``/api/openapi.json``:

(a) the view declares ``@requires("perm")`` or ``@public`` (a new endpoint without either fails);
(b) without credentials a protected endpoint answers 401; with the credentials of each role
    (a user's Bearer token and an API key), it answers 403 exactly when ``MATRIX`` denies that role
    the permission. Path ids are real objects of the caller's own organisation; bodies are ``{}``
    (the permission is checked before the body is validated, so 422 and the like are fine);
(c) with an id in the path, an admin of ANOTHER organisation (token and key) gets 404 for a real
    object of the first one. Bodies and required query parameters are generated from the
    document so that the request gets past validation to the lookup.

Adding a resource whose paths take ids: add one line to ``ID_FACTORIES``. If the generated body
of an endpoint cannot pass validation, add a sample to ``SAMPLE_BODIES``.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app.audit.models import AuditLog
from app.db import utcnow
from app.security.permissions import MATRIX
from tests import factories as f
from tests.auth_helpers import api_key_with_headers, bearer

ROLES = ("admin", "manager", "agent", "viewer")
METHODS = ("get", "post", "put", "patch", "delete")


@dataclass
class Org:
    """One organisation of the test world: a client every agent is assigned, users of every
    role, an API key of every role, and one object per resource type made on demand."""

    id: str
    client_id: str
    users: dict = field(default_factory=dict)
    key_headers: dict = field(default_factory=dict)
    objects: dict = field(default_factory=dict)


# The collection segment before an id in a path (``/api/clients/{client_id}`` -> "clients"), or the
# id parameter's name, -> a function making one such object in an organisation and returning its id.
# Users and keys are viewers: the lowest role, so that every role allowed to act on them may.
ID_FACTORIES: dict[str, Callable[[object, Org], str]] = {
    "users": lambda s, o: f.make_user(s, organization_id=o.id, role="viewer").id,
    "api-keys": lambda s, o: f.make_api_key(s, organization_id=o.id, role="viewer").id,
    "clients": lambda s, o: o.client_id,
    "client_id": lambda s, o: o.client_id,
    "proxies": lambda s, o: f.make_proxy(s, organization_id=o.id).id,
    "messages": lambda s, o: f.make_message(s, organization_id=o.id, client_id=o.client_id).id,
    "contacts": lambda s, o: f.make_contact(s, organization_id=o.id).id,
    "lists": lambda s, o: f.make_contact_list(s, organization_id=o.id).id,
    "contact-lists": lambda s, o: f.make_contact_list(s, organization_id=o.id).id,
    "imports": lambda s, o: f.make_contact_import(s, organization_id=o.id).id,
    "templates": lambda s, o: f.make_template(s, organization_id=o.id).id,
    "campaigns": lambda s, o: f.make_campaign_client(s, organization_id=o.id, client_id=o.client_id).campaign_id,
    "automations": lambda s, o: f.make_automation(s, organization_id=o.id).id,
    "webhooks": lambda s, o: f.make_webhook(s, organization_id=o.id).id,
    "webhook-deliveries": lambda s, o: f.make_webhook_delivery(s, organization_id=o.id).id,
    "deliveries": lambda s, o: f.make_webhook_delivery(s, organization_id=o.id).id,
    "events": lambda s, o: f.make_webhook_event(s, organization_id=o.id).id,
    "media": lambda s, o: f.make_media(s, organization_id=o.id).id,
    "exports": lambda s, o: f.make_analytics_export(s, organization_id=o.id).id,
    "alerts": lambda s, o: f.make_ban_alert(s, organization_id=o.id, client_id=o.client_id).id,
    "audit-logs": lambda s, o: f.make_audit_log(s, organization_id=o.id).id,
}

# (METHOD, path) -> a body that passes validation, where the one generated from the document does not
SAMPLE_BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/api/clients/{client_id}/send-message"): {"to": "+14155550123", "message": "hello"},
    ("POST", "/api/clients/{id}/send-message"): {"to": "+14155550123", "message": "hello"},
    ("POST", "/api/clients/{client_id}/sim/inbound"): {"from": "+14155550123", "text": "hello"},
    ("POST", "/api/clients/{id}/sim/inbound"): {"from": "+14155550123", "text": "hello"},
    ("POST", "/api/clients/{client_id}/sim/fault"): {"type": "disconnect"},
    ("POST", "/api/clients/{id}/sim/fault"): {"type": "disconnect"},
}

# ----------------------------------------------------------------------------- the document


_APP = None


def the_app():
    """One app for the module (it holds no per-test state: request sessions join ``session``)."""
    global _APP
    if _APP is None:
        from app import create_app

        _APP = create_app(TESTING=True)
    return _APP


def _spec() -> dict:
    resp = the_app().test_client().get("/api/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@dataclass(frozen=True)
class Operation:
    method: str  # upper case
    path: str    # as in the document: /api/users/{user_id}
    spec: dict = field(compare=False, hash=False, repr=False)

    def __str__(self):
        return f"{self.method} {self.path}"

    @property
    def params(self) -> list[str]:
        return re.findall(r"\{(\w+)\}", self.path)

    def handler(self):
        """The function that answers this operation (MethodView method or view function)."""
        app = the_app()
        for rule in app.url_map.iter_rules():
            if _openapi_path(rule.rule) == self.path and self.method in (rule.methods or ()):
                view = app.view_functions[rule.endpoint]
                view_class = getattr(view, "view_class", None)
                return getattr(view_class, self.method.lower()) if view_class else view
        raise AssertionError(f"{self}: in the OpenAPI document but no Flask rule serves it")


def operations() -> list[Operation]:
    return [Operation(method.upper(), path, op) for path, ops in sorted(_spec()["paths"].items())
            for method, op in ops.items() if method in METHODS]


OPERATIONS = operations()


def _protected(op: Operation) -> bool:
    """Not @public (an undeclared operation counts as protected: its tests then fail on it)."""
    return getattr(op.handler(), "permission", "undeclared") is not None


# public routes with ids (provider webhooks, static files) are not scoped by a principal
WITH_IDS = [op for op in OPERATIONS if op.params and _protected(op)]
DELETES = [op for op in OPERATIONS if op.method == "DELETE" and _protected(op)]


def permission_of(op: Operation):
    """The declared permission, ``None`` for @public; fails the test when neither is declared."""
    handler = op.handler()
    if not hasattr(handler, "permission"):
        pytest.fail(f"{op} declares no permission: decorate it with @requires(...) or @public")
    return handler.permission


# ----------------------------------------------------------------------------- the world


def make_org(session) -> Org:
    org = f.make_organization(session)
    world = Org(id=org.id, client_id=f.make_client(session, organization_id=org.id).id)
    for role in ROLES:
        world.users[role] = f.make_user(session, organization_id=org.id, role=role)
        world.key_headers[role] = api_key_with_headers(session, org.id, role, name=f"{role} key")[1]
    f.make_user_client(session, user_id=world.users["agent"].id, client_id=world.client_id)
    return world


def object_id(session, org: Org, op: Operation, index: int) -> str:
    """A real id for the ``index``-th path parameter of ``op``, made in ``org``."""
    segments = op.path.strip("/").split("/")
    position = [i for i, s in enumerate(segments) if re.fullmatch(r"\{\w+\}", s)][index]
    name = op.params[index]
    before = segments[position - 1] if position else ""
    key = before if before in ID_FACTORIES else name if name in ID_FACTORIES else None
    if key is None:
        if permission_of(op) is None:
            return "unknown"  # a public route's own identifier (a file name, a provider's id)
        pytest.fail(f"{op}: no factory for the path parameter {{{name}}} (after /{before}/): add a line "
                    f"to ID_FACTORIES in tests/security/test_permissions.py")
    if key not in org.objects:
        org.objects[key] = ID_FACTORIES[key](session, org)
    return org.objects[key]


def url_for(session, org: Org, op: Operation, query: dict | None = None) -> str:
    path = op.path
    for i, name in enumerate(op.params):
        path = path.replace("{" + name + "}", object_id(session, org, op, i), 1)
    if query:
        from urllib.parse import urlencode

        path += "?" + urlencode(query, doseq=True)
    return path


def call(client, op: Operation, url: str, headers: dict, body: dict | None = None) -> int:
    kwargs = {"headers": headers}
    if op.method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {} if body is None else body
    resp = client.open(url, method=op.method, **kwargs)
    status = resp.status_code
    resp.close()  # never read a streamed body
    return status


# ----------------------------------------------------------------------------- generated requests


def _resolve(schema: dict, spec: dict) -> dict:
    while "$ref" in schema:
        node = spec
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    if "allOf" in schema:
        merged: dict = {"type": "object", "properties": {}, "required": []}
        for part in schema["allOf"]:
            part = _resolve(part, spec)
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        return merged
    return schema


def sample_value(schema: dict, spec: dict):
    """A minimal value that validates against ``schema`` (required fields only)."""
    schema = _resolve(schema, spec)
    for key in ("example", "default"):
        if schema.get(key) is not None:
            return schema[key]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {name: sample_value(props.get(name, {}), spec) for name in schema.get("required", [])}
    if kind == "array":
        return [sample_value(schema.get("items", {}), spec) for _ in range(schema.get("minItems", 0))]
    if kind == "integer" or kind == "number":
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    fmt = schema.get("format")
    if fmt == "email":
        return "someone@example.test"
    if fmt == "date-time":
        return (utcnow() + timedelta(days=1)).isoformat()
    if fmt == "date":
        return (utcnow() + timedelta(days=1)).date().isoformat()
    if fmt in ("uri", "url"):
        return "https://example.test/hook"
    return "x" * max(1, schema.get("minLength", 1))


def sample_request(op: Operation, spec: dict) -> tuple[dict | None, dict]:
    """(body, query) that get past validation: SAMPLE_BODIES, else generated from the document."""
    query = {p["name"]: sample_value(p.get("schema", {}), spec) for p in op.spec.get("parameters", [])
             if p.get("in") == "query" and p.get("required")}
    if (op.method, op.path) in SAMPLE_BODIES:
        return SAMPLE_BODIES[(op.method, op.path)], query
    content = op.spec.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return (sample_value(schema, spec) if schema else None), query


# ----------------------------------------------------------------------------- (a) declarations


def test_the_document_has_operations():
    paths = {op.path for op in OPERATIONS}
    assert {"/api/auth/me", "/api/users/{user_id}", "/api/api-keys", "/api/audit-logs"} <= paths


def test_every_operation_declares_a_permission_of_the_matrix():
    undeclared, unknown = [], []
    for op in OPERATIONS:
        handler = op.handler()
        if not hasattr(handler, "permission"):
            undeclared.append(str(op))
        elif handler.permission is not None and handler.permission not in MATRIX:
            unknown.append(f"{op}: {handler.permission}")
    assert not undeclared, ("these endpoints declare no permission; decorate them with @requires(...) or "
                            f"@public (app/security/permissions.py): {undeclared}")
    assert not unknown, f"permissions missing from MATRIX: {unknown}"


# ----------------------------------------------------------------------------- (b) the matrix


@pytest.fixture
def perm_client(session):
    return the_app().test_client()


@pytest.mark.parametrize("op", OPERATIONS, ids=str)
def test_each_role_gets_exactly_what_the_matrix_says(perm_client, session, op):
    permission = permission_of(op)
    org = make_org(session)
    url = url_for(session, org, op)
    if permission is None:
        if op.path.startswith("/api/"):
            for role in ROLES:
                status = call(perm_client, op, url, bearer(org.users[role]))
                assert status != 403, f"{op} is public, yet {role} got 403"
        return
    status = call(perm_client, op, url, {})
    assert status == 401, f"{op} without credentials answered {status}, not 401"
    for role in ROLES:
        for kind, headers in (("user", bearer(org.users[role])), ("api key", org.key_headers[role])):
            status = call(perm_client, op, url, headers)
            if role in MATRIX[permission]:
                assert status != 403, f"{op} needs {permission}, which {role} holds, yet the {role} {kind} got 403"
                assert status != 401, f"{op}: the {role} {kind} got 401"
            else:
                assert status == 403, f"{op} needs {permission}, which {role} lacks, yet the {role} {kind} got {status}"


# ----------------------------------------------------------------------------- (c) tenant isolation


@pytest.mark.parametrize("op", WITH_IDS, ids=str)
def test_another_organisation_gets_404_for_every_id(perm_client, session, op):
    permission_of(op)
    spec = _spec()
    victim, intruder = make_org(session), make_org(session)
    body, query = sample_request(op, spec)
    url = url_for(session, victim, op, query)
    before = _audit_count(session, victim.id)
    for kind, headers in (("admin user", bearer(intruder.users["admin"])), ("admin API key", intruder.key_headers["admin"])):
        resp = perm_client.open(url, method=op.method, headers=headers,
                                **({"json": body if body is not None else {}} if op.method in ("POST", "PUT", "PATCH") else {}))
        status, detail = resp.status_code, (resp.get_json(silent=True) or {}).get("error")
        resp.close()
        if status == 422:
            pytest.fail(f"{op}: the generated request {body!r} did not pass validation ({detail}), so the "
                        "tenant check was not reached; add a valid body to SAMPLE_BODIES")
        assert status == 404, f"{op} with another organisation's id answered {status} to an {kind}, not 404"
    assert _audit_count(session, victim.id) == before, f"{op}: another organisation's call wrote to its audit log"


def _audit_count(session, org_id: str) -> int:
    return session.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.organization_id == org_id))


# ----------------------------------------------------------------------------- deletes are audited


@pytest.mark.parametrize("op", DELETES, ids=str)
def test_an_admin_deletes_a_fresh_object_and_it_is_audited(perm_client, session, op):
    permission_of(op)
    org = make_org(session)
    url = url_for(session, org, op)
    before = _audit_count(session, org.id)
    status = call(perm_client, op, url, bearer(org.users["admin"]))
    assert status < 300, f"{op}: an admin could not delete a freshly made object ({status}); adjust its ID_FACTORIES line"
    assert _audit_count(session, org.id) > before, f"{op} succeeded ({status}) without writing an audit row"
