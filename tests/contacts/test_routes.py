"""/api/contacts: CRUD, filters, phone uniqueness, opt-out, audit, tenant scoping."""
import pytest
from sqlalchemy import select

from app.models import AuditLog, Contact, WebhookEvent
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers

PHONE = "+14155550123"


@pytest.fixture
def agent_headers(session, org):
    """Bearer headers of an agent user of ``org``."""
    return principal_headers(session, org, "agent")


def actions(session, target_id):
    return session.scalars(select(AuditLog.action).where(AuditLog.target_id == target_id)
                           .order_by(AuditLog.created_at, AuditLog.id)).all()


def test_create_get_update_delete(session, client, agent_headers):
    r = client.post("/api/contacts", json={"phone": PHONE, "name": "Ann", "tags": ["vip", "vip", "eu"],
                                           "attributes": {"plan": "pro"}}, headers=agent_headers)
    assert r.status_code == 201, r.get_json()
    c = r.get_json()
    assert (c["phone"], c["name"], c["tags"], c["attributes"], c["opted_out"]) == (PHONE, "Ann", ["vip", "eu"],
                                                                                   {"plan": "pro"}, False)
    assert client.get(f"/api/contacts/{c['id']}", headers=agent_headers).get_json() == c
    r = client.patch(f"/api/contacts/{c['id']}", json={"name": "Ann B", "tags": ["eu"]}, headers=agent_headers)
    assert r.status_code == 200 and r.get_json()["name"] == "Ann B" and r.get_json()["tags"] == ["eu"]
    assert client.delete(f"/api/contacts/{c['id']}", headers=agent_headers).status_code == 204
    assert client.get(f"/api/contacts/{c['id']}", headers=agent_headers).status_code == 404
    assert actions(session, c["id"]) == ["contact.create", "contact.update", "contact.delete"]
    changes = session.scalars(select(AuditLog.changes).where(AuditLog.action == "contact.update")).one()
    assert changes["name"] == {"from": "Ann", "to": "Ann B"}


@pytest.mark.parametrize("phone", ["4155550123", "+1 415 555 0123", "+123", "phone", ""])
def test_phone_must_be_e164(client, agent_headers, phone):
    r = client.post("/api/contacts", json={"phone": phone}, headers=agent_headers)
    assert r.status_code == 422 and "phone" in r.get_json()["error"]["details"]


def test_phone_is_unique_per_organisation_and_a_deleted_contact_is_revived(session, client, org, agent_headers):
    first = client.post("/api/contacts", json={"phone": PHONE, "name": "A"}, headers=agent_headers).get_json()
    r = client.post("/api/contacts", json={"phone": PHONE}, headers=agent_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "contact_exists"
    other = principal_headers(session, f.make_organization(session), "agent")
    assert client.post("/api/contacts", json={"phone": PHONE}, headers=other).status_code == 201
    second = client.post("/api/contacts", json={"phone": "+14155550124"}, headers=agent_headers).get_json()
    r = client.patch(f"/api/contacts/{second['id']}", json={"phone": PHONE}, headers=agent_headers)
    assert r.status_code == 409
    client.patch(f"/api/contacts/{first['id']}", json={"opted_out": True}, headers=agent_headers)
    client.delete(f"/api/contacts/{first['id']}", headers=agent_headers)
    revived = client.post("/api/contacts", json={"phone": PHONE, "name": "A again"}, headers=agent_headers)
    assert revived.status_code == 201
    body = revived.get_json()
    assert body["id"] == first["id"] and body["name"] == "A again"
    assert body["opted_out"] is True, "re-creating a contact must not silently opt it back in"


def test_list_filters(session, client, org, agent_headers):
    a = f.make_contact(session, organization_id=org.id, name="Alice Smith", tags=["vip", "eu"], phone="+14155550001")
    b = f.make_contact(session, organization_id=org.id, name="Bob", tags=["eu"], opted_out=True, phone="+14155550002")
    c = f.make_contact(session, organization_id=org.id, name="Carol", tags=[], phone="+447911123456")
    f.make_contact(session, organization_id=org.id, name="Gone", deleted_at=a.created_at, phone="+14155550003")
    f.make_contact(session, name="Other org", tags=["vip"])

    def ids(query):
        r = client.get(f"/api/contacts?{query}", headers=agent_headers)
        assert r.status_code == 200, r.get_json()
        return [x["id"] for x in r.get_json()["items"]]

    assert ids("") == [c.id, b.id, a.id]
    assert ids("tag=vip") == [a.id]
    assert ids("tag=eu") == [b.id, a.id]
    assert ids("opted_out=true") == [b.id]
    assert ids("opted_out=false") == [c.id, a.id]
    assert ids("q=smith") == [a.id]
    assert ids("q=7911") == [c.id]
    assert ids("q=%25") == []
    page = client.get("/api/contacts?limit=2", headers=agent_headers).get_json()
    assert len(page["items"]) == 2 and page["next_cursor"]


def test_opting_out_through_the_api_emits_the_event(session, client, agent_headers):
    c = client.post("/api/contacts", json={"phone": PHONE}, headers=agent_headers).get_json()
    r = client.patch(f"/api/contacts/{c['id']}", json={"opted_out": True}, headers=agent_headers)
    assert r.get_json()["opted_out"] is True and r.get_json()["opted_out_at"]
    event = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "contact.opted_out")).one()
    assert event.payload["id"] == c["id"] and event.payload["opted_out"] is True
    r = client.patch(f"/api/contacts/{c['id']}", json={"opted_out": False}, headers=agent_headers)
    assert r.get_json()["opted_out"] is False and r.get_json()["opted_in_at"]
    assert actions(session, c["id"]) == ["contact.create", "contact.opt_out", "contact.opt_in"]


def test_tenant_scoping_and_roles(session, client, org, agent_headers):
    mine = f.make_contact(session, organization_id=org.id)
    other = principal_headers(session, f.make_organization(session), "admin")
    assert client.get(f"/api/contacts/{mine.id}", headers=other).status_code == 404
    assert client.patch(f"/api/contacts/{mine.id}", json={"name": "x"}, headers=other).status_code == 404
    assert client.delete(f"/api/contacts/{mine.id}", headers=other).status_code == 404
    viewer = api_key_headers(session, org, "viewer")
    assert client.get(f"/api/contacts/{mine.id}", headers=viewer).status_code == 200
    assert client.post("/api/contacts", json={"phone": PHONE}, headers=viewer).status_code == 403
    assert client.get("/api/contacts").status_code == 401
    assert session.get(Contact, mine.id).deleted_at is None


def test_sizes_are_limited(client, agent_headers):
    assert client.post("/api/contacts", json={"phone": PHONE, "tags": ["t"] * 51},
                       headers=agent_headers).status_code == 422
    assert client.post("/api/contacts", json={"phone": PHONE, "tags": ["x" * 65]},
                       headers=agent_headers).status_code == 422
    big = {f"k{i}": "v" * 200 for i in range(99)}
    assert client.post("/api/contacts", json={"phone": PHONE, "attributes": big},
                       headers=agent_headers).status_code == 422
    assert client.post("/api/contacts", json={"phone": PHONE, "colour": "red"},
                       headers=agent_headers).status_code == 422
