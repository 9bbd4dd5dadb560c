"""Errors as HTTP responses, registered on the app by ``create_app``.

Every error body is ``{"error": {"code", "message", "details"}}`` (``app.errors.error_body``): the
handlers here turn domain exceptions (``app/errors.py``), werkzeug's HTTP errors, flask-smorest's
validation errors and anything unexpected into that shape.
"""
from __future__ import annotations

import logging

import marshmallow as ma
from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from app.db import OperationalErrors
from app.errors import AppError, error_body
from app.kv import unavailable

log = logging.getLogger(__name__)

# werkzeug status -> our code, for errors raised by Flask itself (routing, abort, body limits)
_HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "rate_limited", 500: "internal_error", 503: "service_unavailable",
}


class ErrorInfoSchema(ma.Schema):
    code = ma.fields.String(required=True, metadata={
        "description": "What went wrong, in snake_case; stable, for programs to test."})
    message = ma.fields.String(required=True, metadata={"description": "The same for people; may change."})
    details = ma.fields.Dict(required=True, metadata={
        "description": "More about it, e.g. for a validation error `{field: [messages]}`; `{}` when none."})


class ErrorSchema(ma.Schema):
    """Every error body (the ``Error`` of the OpenAPI document): what ``error_body`` builds."""

    error = ma.fields.Nested(ErrorInfoSchema, required=True)


def _response(status: int, code: str, message: str, details: dict | None = None,
              headers: dict | None = None) -> Response:
    resp = jsonify(error_body(code, message, details))
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = str(v)
    if status in (429, 503) and "Retry-After" not in resp.headers:
        resp.headers["Retry-After"] = "5"
    return resp


def _validation_details(messages) -> dict:
    """Flatten webargs' {location: {field: [msgs]}} into {field: [msgs]}."""
    if not isinstance(messages, dict):
        return {"_schema": messages}
    if set(messages) <= {"json", "query", "form", "files", "headers", "view_args", "path", "cookies"}:
        flat: dict = {}
        for loc in messages.values():
            if isinstance(loc, dict):
                flat.update(loc)
            else:
                flat.setdefault("_schema", loc)
        return flat
    return messages


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AppError)
    def _app_error(err: AppError):
        return _response(err.status, err.code, err.message, err.details, err.headers)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException):
        status = err.code or 500
        if status == 422:
            # flask-smorest/webargs validation failure: details name the fields
            data = getattr(err, "data", None) or {}
            details = _validation_details(data.get("messages", {}))
            return _response(422, "validation_error", "Validation failed", details)
        data = getattr(err, "data", None) or {}
        if status == 400 and ("JSON" in (err.description or "") or "json" in (data.get("messages") or {})):
            return _response(400, "malformed_json", "The request body is not valid JSON")
        code = _HTTP_CODES.get(status, "http_error")
        message = {
            404: "Not found", 405: "Method not allowed", 413: "Request body too large",
        }.get(status, err.name)
        headers = {}
        if status == 405 and (methods := getattr(err, "valid_methods", None)):
            headers["Allow"] = ", ".join(methods)
        return _response(status, code, message, headers=headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception):
        if isinstance(err, OperationalErrors):
            log.error("dependency unavailable: %s", err.__class__.__name__)
            return _response(503, "service_unavailable", "A dependency is unavailable, retry shortly")
        if unavailable(err):  # Redis down or full: nothing was accepted, the client should slow down
            log.error("Redis unavailable: %s: %s", err.__class__.__name__, str(err)[:200])
            return _response(503, "service_unavailable",
                             "The job queue cannot take more work right now; nothing was accepted, retry shortly",
                             headers={"Retry-After": "10"})
        log.exception("unhandled error")
        return _response(500, "internal_error", "Internal server error")
