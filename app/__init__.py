"""The application factory: extensions, blueprints, request lifecycle, error handlers."""
from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, g, request

from app.version import API_VERSION
from config import settings

log = logging.getLogger("app.request")

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_BODY_METHODS = {"POST", "PUT", "PATCH"}


def create_app(**overrides) -> Flask:
    from app import models as _registry  # noqa: F401  (an entry point: registers every table)
    from app.http_errors import register_error_handlers
    from app.logs import configure_logging
    from app.system import tracing
    from config import check_production_settings

    check_production_settings()
    configure_logging("api")
    tracing.configure_tracing("whatsapp-service-api")
    app = Flask(__name__, static_folder=None, template_folder=None)
    app.config.update(
        API_TITLE="WhatsApp Service API",
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",  # Swagger UI at /api/docs: app/system/docs.py (no CDN)
        MAX_CONTENT_LENGTH=max(settings.MAX_UPLOAD_BYTES, settings.MAX_REQUEST_BYTES),
        JSON_SORT_KEYS=False,
        PROPAGATE_EXCEPTIONS=False,
        API_SPEC_OPTIONS={
            "info": {"description": "One REST API for WhatsApp accounts, messages, campaigns and webhooks."},
            "components": {"securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }},
            "security": [{"bearerAuth": []}, {"apiKey": []}],
        },
    )
    app.config.update(overrides)
    tracing.instrument_app(app)  # first: its before_request must run before any that may refuse
    from app.openapi import create_api

    api = create_api(app)
    _register_lifecycle(app)
    from app.security import protection

    protection.init_app(app)
    from app.security import guard

    guard.init_app(app)  # permission check before the view; writes that outlive a refused request
    from app import request_guard

    app.before_request(request_guard.check_json_body)  # after the permission check: 401/403 come first
    register_error_handlers(app)
    for blp in _blueprints():
        api.register_blueprint(blp)
    from app.system import docs

    docs.init_app(app)
    app.extensions["smorest_api"] = api
    return app


def _blueprints() -> list:
    """Every domain's blueprints, found by convention: the ``blp`` of each ``app/<domain>/*routes.py``
    module (``routes.py``, and e.g. ``meta_routes.py`` for a domain's second blueprint)."""
    import importlib
    import pkgutil

    import app as package

    found = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: (i.name != "system", i.name)):
        if not info.ispkg:
            continue
        domain = importlib.import_module(f"app.{info.name}")
        for sub in sorted(pkgutil.iter_modules(domain.__path__), key=lambda i: (i.name != "routes", i.name)):
            if sub.name.endswith("routes"):
                found.append(importlib.import_module(f"app.{info.name}.{sub.name}").blp)
    return found


def _chunked_body_too_large() -> bool:
    """A body without Content-Length (chunked) is read here, up to one byte past the limit.

    werkzeug's limited stream returns a chunked body cut at ``max_content_length`` instead of
    failing (``get_data`` stops exactly at the limit), so a too-large JSON body became a 400, or
    was accepted truncated. Reading it here gives the 413; a body within the limit is put back.
    Only when the server terminates the stream (gunicorn and werkzeug do for chunked requests);
    otherwise werkzeug reads no body at all.
    """
    import io

    env = request.environ
    if request.content_length is not None or "wsgi.input_terminated" not in env:
        return False
    limit = settings.MAX_REQUEST_BYTES
    stream, body = env["wsgi.input"], bytearray()
    while len(body) <= limit:
        chunk = stream.read(min(64 * 1024, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    if len(body) > limit:
        return True
    env["wsgi.input"] = io.BytesIO(bytes(body))
    return False


def _register_lifecycle(app: Flask) -> None:
    from app import request_guard
    from app.errors import PayloadTooLarge, UnsupportedMediaType
    from app.logs import current_request_id

    @app.before_request
    def _begin():
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if _REQUEST_ID_OK.match(incoming) else secrets.token_hex(12)
        current_request_id.set(g.request_id)
        request_guard.check_request_line()
        if request.method in _BODY_METHODS:
            ctype = request.mimetype or ""
            if ctype != "multipart/form-data":
                request.max_content_length = settings.MAX_REQUEST_BYTES
                if (request.content_length or 0) > settings.MAX_REQUEST_BYTES or _chunked_body_too_large():
                    raise PayloadTooLarge(f"JSON bodies are limited to {settings.MAX_REQUEST_BYTES} bytes",
                                          details={"limit_bytes": settings.MAX_REQUEST_BYTES})
            has_body = (request.content_length or 0) > 0 or request.headers.get("Transfer-Encoding")
            if has_body and ctype not in ("application/json", "multipart/form-data") and not ctype.endswith("+json"):
                raise UnsupportedMediaType("Send JSON with Content-Type: application/json",
                                           details={"content_type": ctype or None})

    @app.after_request
    def _finish(response):
        """The one commit of the request: only when the response is a success."""
        from app.db import end_request_session

        try:
            end_request_session(commit=response.status_code < 400)
        except Exception as exc:
            from flask import jsonify

            from app.db import OperationalErrors
            from app.errors import error_body

            log.exception("commit failed")
            unavailable = isinstance(exc, OperationalErrors)
            response = jsonify(error_body("service_unavailable" if unavailable else "internal_error",
                                          "A dependency is unavailable, retry shortly" if unavailable
                                          else "Internal server error"))
            response.status_code = 503 if unavailable else 500
            if unavailable:
                response.headers["Retry-After"] = "5"
        response.headers["X-Request-ID"] = g.get("request_id", "")
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        from app.system.metrics import observe

        observe(request.method, request.url_rule.rule if request.url_rule else None, response.status_code,
                elapsed_ms / 1000)
        log.info("%s %s %s", request.method, request.path, response.status_code,
                 extra={"status": response.status_code, "duration_ms": round(elapsed_ms, 1),
                        "method": request.method, "path": request.path})
        return response

    @app.teardown_request
    def _teardown(exc):
        from app.db import end_request_session

        end_request_session(commit=False)
        current_request_id.set(None)
