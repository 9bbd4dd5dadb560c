"""Swagger UI at /api/docs is served from this package and works offline; the dashboard, too,
loads nothing from another host."""
import re
import threading
from pathlib import Path

import pytest

from app.security.protection import DOCS_CSP
from app.system import docs

EXTERNAL = re.compile(rb"""(?:src|href|url)\s*[=(]\s*["']?(?:https?:)?//""", re.I)
TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png", ".json": "application/json"}


def _references(html: bytes) -> list[str]:
    return [u.decode() for u in re.findall(rb'(?:src|href|data-spec-url)="([^"]+)"', html)]


def test_the_docs_page_references_only_assets_of_this_server_and_each_is_served(client):
    resp = client.get("/api/docs")
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    assert resp.headers["Content-Security-Policy"] == DOCS_CSP
    assert client.get("/api/docs/").status_code == 200
    refs = _references(resp.data)
    assert {"/api/docs/swagger-ui-bundle.js", "/api/docs/docs.js", "/api/docs/swagger-ui.css",
            "/api/openapi.json"} <= set(refs)
    for ref in refs:
        assert ref.startswith("/api/") and "//" not in ref, ref
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        assert asset.mimetype == TYPES[Path(ref).suffix], ref
        if ref.startswith("/api/docs/"):
            assert asset.headers["Cache-Control"] == f"public, max-age={docs.ASSET_MAX_AGE}", ref
            assert asset.headers["ETag"], ref
            assert client.get(ref, headers={"If-None-Match": asset.headers["ETag"]}).status_code == 304


def test_swagger_ui_is_the_pinned_copy_with_its_licence(client):
    bundle = client.get("/api/docs/swagger-ui-bundle.js").data
    assert f'PACKAGE_VERSION:"{docs.SWAGGER_UI_VERSION}"'.encode() in bundle
    assert b"Apache License" in client.get("/api/docs/LICENSE").data
    assert client.get("/api/docs/NOTICE").status_code == 200
    assert client.get("/api/docs/index.html").status_code == 404  # only the files listed are served
    assert client.get("/api/docs/..%2F..%2Fdocs.py").status_code == 404
    assert b"validatorUrl: null" in client.get("/api/docs/docs.js").data  # no badge from validator.swagger.io


def test_no_page_or_script_of_ours_loads_anything_from_another_host():
    ours = [docs.STATIC / "docs.html", docs.STATIC / "docs.js"]
    ours += sorted((Path(docs.__file__).parents[1] / "dashboard" / "static").iterdir())
    for path in ours:
        text = path.read_bytes()
        assert not EXTERNAL.search(text), path
        assert not re.search(rb"https?://", text), path


@pytest.fixture
def live_server(app):
    """The app on a loopback port, in a thread (the docs need no database)."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


def test_swagger_ui_renders_every_operation_in_chromium_offline(live_server, client):
    """Every request of the page other than to this server is refused: the UI must still show
    every operation of the document, with no policy violation or script error."""
    from playwright.sync_api import sync_playwright

    spec = client.get("/api/openapi.json").get_json()
    expected = {f"operations-{op['tags'][0]}-{op['operationId']}"
                for item in spec["paths"].values() for m, op in item.items() if m != "parameters"}
    elsewhere, problems = [], []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            context = browser.new_context()
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_server + "/")
                          else (elsewhere.append(route.request.url), route.abort()))
            page = context.new_page()
            page.on("console", lambda m: m.type in ("error", "warning") and problems.append(m.text))
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(live_server + "/api/docs")
            page.locator(".opblock").nth(len(expected) - 1).wait_for(timeout=60_000)  # (no eval: the policy forbids it)
            shown = {page.locator(".opblock").nth(i).get_attribute("id") for i in range(page.locator(".opblock").count())}
            page.locator("#operations-clients-clients_create .opblock-summary").click()
            page.wait_for_selector("#operations-clients-clients_create .responses-table", timeout=30_000)
            example = page.locator("#operations-clients-clients_create .responses-table").inner_text()
        finally:
            browser.close()
    assert shown == expected
    assert '"transport": "sim"' in example and "idempotency_in_flight" in example
    assert elsewhere == [] and problems == []
