"""docs/api.md, the contract written for users, keeps in step with the OpenAPI document and the
code: every operation is there as `METHOD /path`, every path it names exists, and so do every
error code the document lists and every event type."""
import re

import pytest

from tests.procs import ROOT

DOC = ROOT / "docs" / "api.md"
MENTION = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")


@pytest.fixture(scope="module")
def text():
    return DOC.read_text()


def _documented(text) -> set[tuple[str, str]]:
    return {(method, path) for method, path in MENTION.findall(text)}


def test_every_operation_of_the_openapi_document_is_in_docs_api_md(spec, text):
    documented = _documented(text)
    missing = [f"{m.upper()} {p}" for p, item in spec["paths"].items() for m in item
               if m != "parameters" and (m.upper(), p) not in documented]
    assert not missing, f"docs/api.md does not describe: {missing}"


def test_every_path_docs_api_md_names_exists(app, text):
    rules = {(re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule), method)
             for rule in app.url_map.iter_rules() for method in rule.methods}
    unknown = [f"{m} {p}" for m, p in sorted(_documented(text)) if (p.rstrip("/") or "/", m) not in rules]
    assert not unknown, f"docs/api.md names paths the server does not have: {unknown}"
    assert len(_documented(text)) > 60


def test_every_error_code_of_the_openapi_document_is_in_docs_api_md(spec, text):
    codes = set()
    for item in spec["paths"].values():
        for method, op in item.items():
            if method == "parameters":
                continue
            for status, response in op["responses"].items():
                if status[0] in "45":
                    codes |= set(re.findall(r"`([a-z][a-z0-9_]+)`", response.get("description", "")))
                    codes.add(response["content"]["application/json"].get("example", {}).get("error", {}).get("code"))
    codes -= {None, "Retry-After"}
    missing = sorted(c for c in codes if f"`{c}`" not in text)
    assert not missing, f"docs/api.md does not list these error codes: {missing}"


def test_every_event_type_is_in_docs_api_md(text):
    from app.webhooks.events import EVENT_TYPES

    missing = [t for t in EVENT_TYPES if f"`{t}`" not in text]
    assert not missing, missing


def test_docs_api_md_is_written_for_users(text):
    for word in ("../shared", "API.md", "issue", "TODO"):
        assert word not in text, word
