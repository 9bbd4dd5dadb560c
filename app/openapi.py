"""The OpenAPI document (``/api/openapi.json``), completed from what the code already declares.

flask-smorest documents each route from its own decorators: ``@blp.arguments`` (parameters and
body), ``@blp.response`` (the success), ``@blp.alt_response`` (an error only that route answers,
such as a 409 and its code) and the docstring (summary line, then description). ``OperationDocs``,
an apispec plugin that sees every operation as it is registered, adds what routes share, from the
markers the code itself acts on — so the document cannot say something the code does not:

* ``operationId``: ``<path words>_<verb>`` (``clients_list``, ``clients_get``, ``clients_start``,
  ``auth_login``), unless the route sets one; a duplicate stops the app at start;
* the errors each operation can answer (``error_reasons``), each with the ``Error`` body and an
  example: 400 and 422 everywhere (``app/request_guard.py`` refuses a NUL in any header, query
  argument or path; malformed JSON), 401 and 403 where ``@requires`` (naming the permission and
  the roles holding it), 404 where the path holds an id, 409 where ``@idempotent`` (its key still
  in flight), 413 and 415 where a body is taken, 429 where rate limited (``protection.limit_scope``)
  and 503 everywhere, both with ``Retry-After``; a route's own ``alt_response`` comes first;
* request and response examples, by schema name, from ``app/openapi_examples.py``.
"""
from __future__ import annotations

import re

import flask_smorest
from apispec import BasePlugin
from apispec.exceptions import APISpecError

from app.http_errors import ErrorSchema
from app.request_guard import MAX_JSON_DEPTH

ERROR_REF = {"$ref": "#/components/schemas/Error"}
RETRY_AFTER = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
REPLAYED = {"Idempotent-Replayed": {"$ref": "#/components/headers/Idempotent-Replayed"}}
_CODE = re.compile(r"\(`([a-z][a-z0-9_]+)`")  # a reason names its code first in its parentheses
_VERBS = {"get": "get", "put": "replace", "patch": "update", "delete": "delete", "post": "post"}


class Api(flask_smorest.Api):
    """flask-smorest's Api, documenting errors as they really are (``app/errors.py``)."""

    ERROR_SCHEMA = ErrorSchema


def create_api(app) -> Api:
    api = Api(app, spec_kwargs={"extra_plugins": [OperationDocs(app)]})
    api.spec.components.header("Retry-After", {
        "description": "Seconds to wait before trying again.", "schema": {"type": "integer", "minimum": 1}})
    api.spec.components.header("Idempotent-Replayed", {
        "description": "`true` when this is the stored response of an earlier request with the same "
                       "Idempotency-Key (nothing ran twice).", "schema": {"type": "string", "enum": ["true"]}})
    return api


def operation_id(path: str, method: str, *, paginated: bool, creates: bool) -> str:
    """``POST /api/clients/{client_id}/start`` -> ``clients_start``. A collection answers
    ``<name>_list`` (a paginated GET) and ``<name>_create`` (a creating POST), an item
    ``<name>_get``/``_update``/``_replace``/``_delete``; any other path is its words alone."""
    parts = [p for p in path.strip("/").split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[1:]
    words = [p.replace("-", "_") for p in parts if not p.startswith("{")]
    if parts and parts[-1].startswith("{"):
        words.append(_VERBS[method])
    elif method == "get" and paginated:
        words.append("list")
    elif method == "post" and creates and len(words) == 1:
        words.append("create")
    elif method in ("put", "patch", "delete"):
        words.append(_VERBS[method])
    return "_".join(words)


def error_reasons(rule, handler, op: dict) -> dict[int, list[str]]:
    """status -> why the operation of ``handler`` (answering ``rule``) can answer it, each reason
    naming its error code in backticks."""
    from app.security.permissions import MATRIX, ROLES
    from app.security.protection import limit_scope
    from config import settings

    permission = getattr(handler, "permission", None)
    idempotent = getattr(handler, "idempotent", False)
    body = "requestBody" in op
    reasons: dict[int, list[str]] = {400: ["A header holds a NUL character (`invalid_header`)."]}
    if body:
        reasons[400].insert(0, f"The body is not valid JSON, or is nested deeper than {MAX_JSON_DEPTH} levels "
                               "(`malformed_json`).")
    if permission:
        reasons[401] = ["No credentials, or bad ones (`unauthorized`; also `invalid_api_key`, `api_key_revoked`, "
                        "`api_key_expired`, `api_key_creator_inactive`, `invalid_token`, `token_expired`, "
                        "`token_revoked`, `organization_suspended`)."]
        roles = ", ".join(r for r in ROLES if r in MATRIX[permission])
        reasons[403] = [f"Your role may not do this (`forbidden`): it takes the `{permission}` permission "
                        f"(roles: {roles})."]
    if rule.rule == "/metrics":
        reasons[401] = ["`METRICS_TOKEN` is set and the request does not carry it as `Authorization: Bearer` "
                        "(`metrics_unauthorized`)."]
        reasons[403] = ["The client address is not in `METRICS_ALLOW` (`metrics_forbidden`)."]
    for name in sorted(rule.arguments):
        what = f"No such {name[:-3].replace('_', ' ')}" if name.endswith("_id") else "Nothing at this path"
        reasons.setdefault(404, []).append(
            f"{what} (`not_found`)" + (": an id of another organisation is not found either." if permission else "."))
    if idempotent:
        reasons[409] = ["A request with this Idempotency-Key is still in flight (`idempotency_in_flight`): "
                        "retry after `Retry-After` seconds."]
    if body:
        reasons[413] = [f"The body is larger than {settings.MAX_REQUEST_BYTES} bytes (`payload_too_large`)."]
        reasons[415] = ["The body is not JSON: send it with `Content-Type: application/json` "
                        "(`unsupported_media_type`)."]
    reasons[422] = ["A path parameter, query argument or body field is invalid (`validation_error`): "
                    "`details` names each one with its messages."]
    if idempotent:
        reasons[422].append("This Idempotency-Key was used for a different request (`idempotency_key_reused`).")
    if limit_scope(rule.rule, handler):
        reasons[429] = ["Rate limited (`rate_limited`): retry after `Retry-After` seconds."]
    reasons[503] = ["A dependency (PostgreSQL or Redis) is unavailable or full (`service_unavailable`): "
                    "retry after `Retry-After` seconds."]
    return reasons


def error_example(status: int, reasons: list[str], field: str) -> dict:
    """The error body of the first reason: its code (in backticks) and its words."""
    text = reasons[0]
    code = (_CODE.search(text) or [None, "error"])[1]
    message = re.sub(r"\s*\(`[^)]*\)", "", text).split(":")[0].strip().rstrip(".").replace("`", "") + "."
    details: dict = {}
    if code == "validation_error":
        message, details = "Validation failed", {field: ["Not a valid value."]}
    elif status == 429:
        details = {"scope": "organization", "limit": 6000, "window_seconds": 60, "retry_after": 12}
    return {"error": {"code": code, "message": message, "details": details}}


class OperationDocs(BasePlugin):
    """Completes each operation as flask-smorest registers it (see the module docstring)."""

    def __init__(self, app):
        self.app = app
        self.ids: dict[str, str] = {}

    def init_spec(self, spec):
        self.spec = spec

    def operation_helper(self, path=None, operations=None, **kwargs):
        rule = kwargs.get("rule")
        if rule is None or not operations:
            return
        view_class = getattr(self.app.view_functions.get(rule.endpoint), "view_class", None)
        for method, op in operations.items():
            self._complete(path, rule, method, op, getattr(view_class, method, None))

    def _complete(self, path: str, rule, method: str, op: dict, handler) -> None:
        responses = {str(status): response for status, response in op.get("responses", {}).items()}
        params = [p for p in op.get("parameters", []) if isinstance(p, dict)]
        idempotent = getattr(handler, "idempotent", False)
        op.setdefault("operationId", operation_id(
            path, method, paginated=any(p.get("name") == "cursor" for p in params),
            creates=idempotent or "201" in responses))
        where = f"{method.upper()} {path}"
        if self.ids.setdefault(op["operationId"], where) != where:
            raise APISpecError(f"operationId {op['operationId']!r} of {where} is also that of "
                               f"{self.ids[op['operationId']]}: give one of them @blp.doc(operationId=...)")

        reasons = error_reasons(rule, handler, op)
        for status in responses:
            if status[0] in "45":  # the route's own (alt_response): completed like the others
                reasons.setdefault(int(status), [])
        field = next((p["name"] for p in params if p.get("in") == "query" and p["name"] not in ("limit", "cursor")),
                     self._body_field(op) or "limit")
        for error_status, why in reasons.items():
            retry = error_status in (429, 503) or (error_status == 409 and idempotent)
            responses[str(error_status)] = self._error_response(responses.get(str(error_status)), why, error_status,
                                                                field, retry)
        if idempotent:
            for status, response in responses.items():
                if status[0] == "2":
                    response.setdefault("headers", {}).update(REPLAYED)
        if getattr(handler, "permission", None):
            op["x-permission"] = handler.permission
        op["responses"] = dict(sorted(responses.items(), key=lambda item: (item[0] == "default", item[0])))
        self._examples(op)

    def _body_field(self, op: dict) -> str | None:
        """The first required field of the operation's JSON body (for the example of its 422)."""
        ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
        schema = self.spec.components.schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        return next(iter(schema.get("required") or schema.get("properties") or []), None)

    @staticmethod
    def _error_response(declared, reasons: list[str], status: int, field: str, retry: bool) -> dict:
        """The response for ``status``: the route's own description first, then ``reasons``; a
        declared body other than ``Error`` (``/health``'s 503) is kept as it is."""
        declared = declared if isinstance(declared, dict) else {}  # flask-smorest's refs are replaced
        content = declared.get("content", {}).get("application/json", {})
        if content.get("schema") not in (None, ERROR_REF):
            if retry:
                declared.setdefault("headers", {}).update(RETRY_AFTER)
            return declared
        if declared.get("description"):
            reasons = [declared["description"].rstrip(".") + "."] + reasons
        example = content.get("example") or error_example(status, reasons, field)
        response = {
            "description": reasons[0] if len(reasons) == 1 else "\n".join(f"- {r}" for r in reasons),
            "content": {"application/json": {"schema": ERROR_REF, "example": example}},
        }
        headers = {**declared.get("headers", {}), **(RETRY_AFTER if retry else {})}
        if headers:
            response["headers"] = headers
        return response

    @staticmethod
    def _examples(op: dict) -> None:
        """Examples of the JSON request body and of the JSON success responses, by schema name."""
        from app.openapi_examples import example_for

        media = [op.get("requestBody", {}).get("content", {}).get("application/json")]
        media += [r.get("content", {}).get("application/json") for status, r in op["responses"].items()
                  if status[0] == "2" and isinstance(r, dict)]
        for item in media:
            if item and "example" not in item and "examples" not in item:
                ref = item.get("schema", {}).get("$ref", "")
                found = example_for(ref.rsplit("/", 1)[-1]) if ref else None
                if found is not None:
                    item["example"] = found
