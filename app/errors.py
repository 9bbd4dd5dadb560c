"""Domain exceptions: what services raise, each with its HTTP status and error code.

Pure (no Flask): jobs and services raise them; ``app/http_errors.py`` renders them, werkzeug's
HTTP errors, validation errors and anything unexpected as ``{"error": {"code", "message",
"details"}}``.
"""
from __future__ import annotations


class AppError(Exception):
    status = 400
    code = "bad_request"
    message = "Bad request"

    def __init__(self, message: str | None = None, *, code: str | None = None, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message or self.message)
        self.message = message or self.message
        self.code = code or self.code
        self.details = details or {}
        self.headers = headers or {}


class BadRequest(AppError):
    status, code, message = 400, "bad_request", "Bad request"


class Unauthorized(AppError):
    status, code, message = 401, "unauthorized", "Missing or invalid credentials"


class Forbidden(AppError):
    status, code, message = 403, "forbidden", "Not allowed"


class NotFound(AppError):
    status, code, message = 404, "not_found", "Not found"


class Conflict(AppError):
    status, code, message = 409, "conflict", "Conflict"


class PayloadTooLarge(AppError):
    status, code, message = 413, "payload_too_large", "Request body too large"


class UnsupportedMediaType(AppError):
    status, code, message = 415, "unsupported_media_type", "Unsupported media type"


class ValidationError(AppError):
    status, code, message = 422, "validation_error", "Validation failed"


class RateLimited(AppError):
    status, code, message = 429, "rate_limited", "Too many requests"


class ServiceUnavailable(AppError):
    status, code, message = 503, "service_unavailable", "A dependency is unavailable"


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    """The one error format of the API."""
    return {"error": {"code": code, "message": message, "details": details or {}}}
