import pytest


@pytest.fixture
def spec(client):
    """The OpenAPI document the app serves."""
    resp = client.get("/api/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()
