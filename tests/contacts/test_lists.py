"""/api/contact-lists: CRUD, unique names, members added and removed idempotently, member counts,
the ?list_id= filter of /api/contacts, validation, tenant scoping, roles and the audit log."""
import pytest
from sqlalchemy import select

from app.models import AuditLog
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers


@pytest.fixture
def agent_headers(session, org):
    return principal_headers(session, org, "agent")


def test_create_get_update_delete(session, client, agent_headers):
    r = client.post("/api/contact-lists", json={"name": " Newsletter ", "description": "checkout"},
                    headers=agent_headers)
    assert r.status_code == 201, r.get_json()
    lst = r.get_json()
    assert (lst["name"], lst["description"], lst["member_count"]) == ("Newsletter", "checkout", 0)
    assert lst["id"].startswith("lst_")
    assert client.get(f"/api/contact-lists/{lst['id']}", headers=agent_headers).get_json() == lst
    r = client.post("/api/contact-lists", json={"name": "Newsletter"}, headers=agent_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "contact_list_exists"
    assert r.get_json()["error"]["details"]["list_id"] == lst["id"]
    other = client.post("/api/contact-lists", json={"name": "VIP"}, headers=agent_headers).get_json()
    assert client.patch(f"/api/contact-lists/{other['id']}", json={"name": "Newsletter"},
                        headers=agent_headers).status_code == 409
    r = client.patch(f"/api/contact-lists/{lst['id']}", json={"name": "News", "description": None},
                     headers=agent_headers)
    assert r.status_code == 200 and (r.get_json()["name"], r.get_json()["description"]) == ("News", None)
    page = client.get("/api/contact-lists", headers=agent_headers).get_json()
    assert [x["id"] for x in page["items"]] == [other["id"], lst["id"]] and page["next_cursor"] is None
    assert client.delete(f"/api/contact-lists/{lst['id']}", headers=agent_headers).status_code == 204
    assert client.get(f"/api/contact-lists/{lst['id']}", headers=agent_headers).status_code == 404
    assert client.post("/api/contact-lists", json={"name": "News"}, headers=agent_headers).status_code == 201, \
        "a deleted list's name can be used again"
    actions = session.scalars(select(AuditLog.action).where(AuditLog.target_id == lst["id"])
                              .order_by(AuditLog.id)).all()
    assert actions == ["contact_list.create", "contact_list.update", "contact_list.delete"]


def test_members_are_added_and_removed_idempotently(session, client, org, agent_headers):
    lst = client.post("/api/contact-lists", json={"name": "L"}, headers=agent_headers).get_json()
    a, b, c = (f.make_contact(session, organization_id=org.id) for _ in range(3))
    path = f"/api/contact-lists/{lst['id']}/members"
    r = client.post(path, json={"contact_ids": [a.id, b.id, a.id]}, headers=agent_headers)
    assert r.status_code == 200 and r.get_json() == {"added": 2, "removed": 0, "member_count": 2}
    r = client.post(path, json={"contact_ids": [b.id, c.id]}, headers=agent_headers)
    assert r.get_json() == {"added": 1, "removed": 0, "member_count": 3}
    assert client.get(f"/api/contact-lists/{lst['id']}", headers=agent_headers).get_json()["member_count"] == 3
    members = client.get(f"{path}?limit=2", headers=agent_headers).get_json()
    assert [m["id"] for m in members["items"]] == [c.id, b.id] and members["next_cursor"]
    rest = client.get(f"{path}?cursor={members['next_cursor']}", headers=agent_headers).get_json()
    assert [m["id"] for m in rest["items"]] == [a.id] and rest["next_cursor"] is None

    r = client.post(f"{path}/remove", json={"contact_ids": [a.id]}, headers=agent_headers)
    assert r.status_code == 200 and r.get_json() == {"added": 0, "removed": 1, "member_count": 2}
    r = client.post(f"{path}/remove", json={"contact_ids": [a.id, b.id]}, headers=agent_headers)
    assert r.get_json() == {"added": 0, "removed": 1, "member_count": 1}
    client.delete(f"/api/contacts/{c.id}", headers=agent_headers)
    assert client.get(f"/api/contact-lists/{lst['id']}", headers=agent_headers).get_json()["member_count"] == 0
    assert client.get(path, headers=agent_headers).get_json()["items"] == []
    assert client.post(f"{path}/remove", json={"contact_ids": [c.id]}, headers=agent_headers).get_json()["removed"] == 1, \
        "a deleted contact can still be taken off a list"


def test_unknown_and_foreign_contact_ids_are_422_naming_them_and_change_nothing(session, client, org,
                                                                                  agent_headers):
    lst = f.make_contact_list(session, organization_id=org.id)
    mine = f.make_contact(session, organization_id=org.id)
    foreign = f.make_contact(session)
    r = client.post(f"/api/contact-lists/{lst.id}/members", json={"contact_ids": [mine.id, foreign.id, "ctc_nope"]},
                    headers=agent_headers)
    assert r.status_code == 422
    assert r.get_json()["error"]["details"] == {"contact_ids": {"1": ["No such contact."], "2": ["No such contact."]}}
    assert client.get(f"/api/contact-lists/{lst.id}", headers=agent_headers).get_json()["member_count"] == 0
    for body in ({"contact_ids": []}, {"contact_ids": ["x"] * 1001}, {"contact_ids": "ctc_1"}, {}, {"ids": []}):
        r = client.post(f"/api/contact-lists/{lst.id}/members", json=body, headers=agent_headers)
        assert r.status_code == 422, body
    for body in ({"name": ""}, {"name": "x" * 201}, {}, {"name": "ok", "colour": "red"}):
        assert client.post("/api/contact-lists", json=body, headers=agent_headers).status_code == 422, body


def test_contacts_can_be_filtered_by_list_and_searched(session, client, org, agent_headers):
    lst = f.make_contact_list(session, organization_id=org.id)
    ann = f.make_contact(session, organization_id=org.id, name="Ann Smith", phone="+14155550001", tags=["vip"])
    bob = f.make_contact(session, organization_id=org.id, name="Bob", phone="+14155550002", tags=["vip"])
    out = f.make_contact(session, organization_id=org.id, name="Ann Out", phone="+14155550003")
    for c in (ann, bob):
        f.make_contact_list_member(session, list_id=lst.id, contact_id=c.id, organization_id=org.id)

    def ids(query):
        r = client.get(f"/api/contacts?{query}", headers=agent_headers)
        assert r.status_code == 200, r.get_json()
        return [x["id"] for x in r.get_json()["items"]]

    assert ids(f"list_id={lst.id}") == [bob.id, ann.id]
    assert ids(f"list_id={lst.id}&q=ann") == [ann.id]
    assert ids(f"list_id={lst.id}&q=0002") == [bob.id]
    assert ids(f"list_id={lst.id}&tag=vip&q=smith") == [ann.id]
    assert ids("q=ann") == [out.id, ann.id], "q matches the name (any case) or the number"
    foreign = f.make_contact_list(session)
    for bad in (foreign.id, "lst_nope"):
        r = client.get(f"/api/contacts?list_id={bad}", headers=agent_headers)
        assert r.status_code == 422 and r.get_json()["error"]["details"] == {"list_id": ["No such contact list."]}


def test_tenant_scoping_and_roles(session, client, org, agent_headers):
    lst = f.make_contact_list(session, organization_id=org.id)
    other = principal_headers(session, f.make_organization(session), "admin")
    for method, path, body in (("get", f"/api/contact-lists/{lst.id}", None),
                               ("patch", f"/api/contact-lists/{lst.id}", {"name": "x"}),
                               ("delete", f"/api/contact-lists/{lst.id}", None),
                               ("get", f"/api/contact-lists/{lst.id}/members", None),
                               ("post", f"/api/contact-lists/{lst.id}/members", {"contact_ids": ["ctc_1"]})):
        assert getattr(client, method)(path, json=body, headers=other).status_code == 404, (method, path)
    assert client.get("/api/contact-lists", headers=other).get_json()["items"] == []
    viewer = api_key_headers(session, org, "viewer")
    assert client.get(f"/api/contact-lists/{lst.id}", headers=viewer).status_code == 200
    r = client.post("/api/contact-lists", json={"name": "x"}, headers=viewer)
    assert r.status_code == 403 and r.get_json()["error"]["details"]["required_permission"] == "contacts:write"
    assert client.get("/api/contact-lists").status_code == 401
