"""``/api/docs``: Swagger UI for the OpenAPI document, served from this package (works offline).

The Swagger UI files are a pinned, unmodified copy of the ``swagger-ui-dist`` npm package
(``static/swagger-ui/SOURCE.md`` says how to upgrade it); the page and its start-up script are
this project's own, with no inline script, so the page's policy is ``'self'`` only
(``protection.DOCS_CSP``). A plain Flask blueprint: like ``/api/openapi.json`` it is not part of
the API it documents, needs no credentials and is not rate limited.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, abort, send_from_directory

from app.security.protection import DOCS_PATH as PATH

SWAGGER_UI_VERSION = "5.35.0"
STATIC = Path(__file__).resolve().parent / "static"
VENDORED = STATIC / "swagger-ui"
#: what /api/docs/<name> serves: name -> (directory, Content-Type)
ASSETS = {
    "docs.js": (STATIC, "text/javascript"),
    "swagger-ui-bundle.js": (VENDORED, "text/javascript"),
    "swagger-ui.css": (VENDORED, "text/css"),
    "favicon-32x32.png": (VENDORED, "image/png"),
    "favicon-16x16.png": (VENDORED, "image/png"),
    "LICENSE": (VENDORED, "text/plain"),
    "NOTICE": (VENDORED, "text/plain"),
    "swagger-ui-bundle.js.LICENSE.txt": (VENDORED, "text/plain"),
}
ASSET_MAX_AGE = 24 * 3600  # revalidated with the ETag after a day; the page itself always is

blp = Blueprint("api_docs", __name__)


@blp.get(PATH, strict_slashes=False)
def page():
    resp = send_from_directory(STATIC, "docs.html", mimetype="text/html", max_age=0)
    resp.headers["Cache-Control"] = "no-cache"
    return resp


@blp.get(f"{PATH}/<name>")
def asset(name: str):
    if name not in ASSETS:
        abort(404)
    directory, mimetype = ASSETS[name]
    return send_from_directory(directory, name, mimetype=mimetype, max_age=ASSET_MAX_AGE)


def init_app(app) -> None:
    app.register_blueprint(blp)
