"""The OpenAPI document is served, valid, and documents the error format."""
from openapi_spec_validator import validate


def test_openapi_document_validates(client):
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    spec = resp.get_json()
    validate(spec)
    assert spec["info"]["title"] == "WhatsApp Service API"
    assert "/health" in spec["paths"]
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}


def test_swagger_ui_is_served(client):
    resp = client.get("/api/docs")
    assert resp.status_code == 200
    assert b"swagger" in resp.data.lower()
