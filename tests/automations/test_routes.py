"""/api/automations: CRUD, the singular `action` and the `actions` list, validation (422 naming the
field), references of the organisation only, audit, tenant scoping, runs listing."""
import pytest
from sqlalchemy import select

from app.models import AuditLog
from tests import factories as f
from tests.auth_helpers import principal_headers

REPLY = {"type": "reply", "message": "Hi {{contact.name}}!"}
KEYWORD = {"type": "keyword", "keywords": ["price"]}


@pytest.fixture
def headers(session, org):
    return principal_headers(session, org, "manager")


def create(client, headers, **body):
    body = {"name": "Prices", "trigger": KEYWORD, "action": REPLY, **body}
    return client.post("/api/automations", json={k: v for k, v in body.items() if v is not None}, headers=headers)


def details(resp) -> dict:
    assert resp.status_code == 422, (resp.status_code, resp.get_json())
    error = resp.get_json()["error"]
    assert error["code"] == "validation_error"
    return error["details"]


def test_create_get_list_update_delete_with_audit(session, client, org, headers):
    r = create(client, headers)
    assert r.status_code == 201, r.get_json()
    a = r.get_json()
    assert a["trigger"] == {"type": "keyword", "keywords": ["price"], "match": "contains", "case_sensitive": False}
    assert a["action"] == REPLY and a["actions"] == [REPLY]
    assert (a["enabled"], a["priority"], a["cooldown_seconds"], a["stop_processing"], a["fire_count"]) == (
        True, 100, 60, False, 0)
    assert a["conditions"] == {} and a["client_id"] is None and a["last_fired_at"] is None
    assert client.get(f"/api/automations/{a['id']}", headers=headers).get_json() == a
    assert [x["id"] for x in client.get("/api/automations", headers=headers).get_json()["items"]] == [a["id"]]

    tag = {"type": "tag", "add": ["lead", "lead", "eu"]}
    r = client.patch(f"/api/automations/{a['id']}", json={"actions": [REPLY, tag], "priority": 5,
                                                          "enabled": False}, headers=headers)
    assert r.status_code == 200, r.get_json()
    b = r.get_json()
    assert b["actions"] == [REPLY, {"type": "tag", "add": ["lead", "eu"]}] and b["action"] == REPLY
    assert (b["priority"], b["enabled"]) == (5, False)
    assert [x["id"] for x in client.get("/api/automations?enabled=true", headers=headers).get_json()["items"]] == []
    assert client.delete(f"/api/automations/{a['id']}", headers=headers).status_code == 204
    assert client.get(f"/api/automations/{a['id']}", headers=headers).status_code == 404
    assert client.get(f"/api/automations/{a['id']}/runs", headers=headers).status_code == 404
    actions = session.scalars(select(AuditLog.action).where(AuditLog.target_id == a["id"])
                              .order_by(AuditLog.created_at, AuditLog.id)).all()
    assert actions == ["automation.create", "automation.update", "automation.delete"]
    changes = session.scalars(select(AuditLog.changes).where(AuditLog.action == "automation.update")).one()
    assert changes["priority"] == {"from": 100, "to": 5}


def test_every_trigger_and_action_type_is_accepted(session, client, org, headers):
    cli = f.make_client(session, organization_id=org.id)
    tpl = f.make_template(session, organization_id=org.id, body="Hello {{name}}, about {{topic}}")
    agent = f.make_user(session, organization_id=org.id, role="agent")
    hours = {"tz": "Europe/Paris", "days": {"mon": [["09:00", "12:00"], ["14:00", "18:00"]], "sat": [["10:00", "24:00"]]},
             "holidays": ["2026-12-25"]}
    triggers = [KEYWORD, {"type": "keyword", "keywords": ["^hi\\b", "hello"], "match": "regex", "case_sensitive": True},
                {"type": "keyword", "keywords": ["INFO"], "match": "exact"},
                {"type": "first_message"}, {"type": "first_message", "after_days": 30},
                {"type": "outside_hours", "hours": hours}]
    actions = [REPLY, {"type": "reply", "template_id": tpl.id, "variables": {"topic": "{{message.text}}"}},
               {"type": "tag", "add": ["lead"], "remove": ["cold"]}, {"type": "webhook"},
               {"type": "assign", "user_id": agent.id}]
    for trigger in triggers:
        r = create(client, headers, trigger=trigger, action=None, actions=actions, client_id=cli.id,
                   conditions={"client_ids": [cli.id], "tags_any": ["a"], "tags_all": ["b"], "tags_none": ["c"]},
                   stop_processing=True, cooldown_seconds=0, priority=0)
        assert r.status_code == 201, (trigger, r.get_json())
        assert r.get_json()["trigger"]["type"] == trigger["type"] and r.get_json()["actions"] == actions
    assert [x["trigger"]["type"] for x in client.get("/api/automations?trigger_type=first_message",
                                                     headers=headers).get_json()["items"]] == ["first_message"] * 2
    assert len(client.get(f"/api/automations?client_id={cli.id}", headers=headers).get_json()["items"]) == 6


@pytest.mark.parametrize("body, where", [
    ({"trigger": {"type": "keyword", "keywords": ["(unclosed"], "match": "regex"}}, ("trigger", "keywords", "0")),
    ({"trigger": {"type": "keyword", "keywords": ["ok", "a{2,1}"], "match": "regex"}}, ("trigger", "keywords", "1")),
    ({"trigger": {"type": "keyword", "keywords": ["x" * 501], "match": "regex"}}, ("trigger", "keywords")),
    ({"trigger": {"type": "keyword", "keywords": ["(?:a{65535}){65535}"], "match": "regex"}},
     ("trigger", "keywords", "0")),  # would never finish compiling
    ({"trigger": {"type": "keyword", "keywords": []}}, ("trigger", "keywords")),
    ({"trigger": {"type": "keyword"}}, ("trigger", "keywords")),
    ({"trigger": {"type": "keyword", "keywords": ["a"], "match": "fuzzy"}}, ("trigger", "match")),
    ({"trigger": {"type": "keyword", "keywords": ["a"], "after_days": 3}}, ("trigger", "after_days")),
    ({"trigger": {"type": "nope"}}, ("trigger", "type")),
    ({"trigger": {"type": "first_message", "after_days": 0}}, ("trigger", "after_days")),
    ({"trigger": {"type": "outside_hours"}}, ("trigger", "hours")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "Mars/Olympus", "days": {}}}}, ("trigger", "hours", "tz")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "../../etc/passwd", "days": {}}}},
     ("trigger", "hours", "tz")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "UTC", "days": {"monday": [["09:00", "10:00"]]}}}},
     ("trigger", "hours", "days")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "UTC", "days": {"mon": [["18:00", "09:00"]]}}}},
     ("trigger", "hours", "days", "mon", "0")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "UTC", "days": {"mon": [["9am", "10:00"]]}}}},
     ("trigger", "hours", "days", "mon", "0")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "UTC", "days": {"mon": [["09:00"]]}}}},
     ("trigger", "hours", "days")),
    ({"trigger": {"type": "outside_hours", "hours": {"tz": "UTC", "days": {}, "holidays": ["25/12/2026"]}}},
     ("trigger", "hours", "holidays", "0")),
    ({"action": {"type": "reply"}}, ("action", "message")),
    ({"action": {"type": "reply", "message": "a", "template_id": "tpl_x"}}, ("action", "message")),
    ({"action": {"type": "reply", "message": "a", "variables": {"a": "b"}}}, ("action", "variables")),
    ({"action": {"type": "reply", "message": "x" * 4097}}, ("action", "message")),
    ({"action": {"type": "reply", "message": "a", "user_id": "usr_x"}}, ("action", "user_id")),
    ({"action": {"type": "tag"}}, ("action", "add")),
    ({"action": {"type": "tag", "add": ["x" * 65]}}, ("action", "add")),
    ({"action": {"type": "assign"}}, ("action", "user_id")),
    ({"action": {"type": "launch"}}, ("action", "type")),
    ({"action": None, "actions": []}, ("actions",)),
    ({"action": None}, ("actions",)),
    ({"actions": [REPLY]}, ("actions",)),  # both action and actions
    ({"action": None, "actions": [REPLY] * 11}, ("actions",)),
    ({"cooldown_seconds": -1}, ("cooldown_seconds",)),
    ({"priority": 10_001}, ("priority",)),
    ({"name": ""}, ("name",)),
    ({"surprise": 1}, ("surprise",)),
])
def test_bad_bodies_are_422_naming_the_field(client, headers, body, where):
    body = {"name": "A", "trigger": KEYWORD, "action": REPLY, **body}
    found = details(client.post("/api/automations", json={k: v for k, v in body.items() if v is not None},
                                headers=headers))
    for key in where:
        assert key in found, (where, found)
        found = found[key]


def test_references_must_be_of_the_organisation(session, client, org, headers):
    other = f.make_organization(session)
    foreign_client = f.make_client(session, organization_id=other.id)
    foreign_tpl = f.make_template(session, organization_id=other.id)
    foreign_user = f.make_user(session, organization_id=other.id)
    disabled = f.make_user(session, organization_id=org.id, status="disabled")
    assert "client_id" in details(create(client, headers, client_id=foreign_client.id))
    assert details(create(client, headers, conditions={"client_ids": [foreign_client.id]}))["conditions"] == {
        "client_ids": {"0": ["No such client in this organisation."]}}
    assert "template_id" in details(create(client, headers, action={"type": "reply", "template_id": foreign_tpl.id}))[
        "action"]
    found = details(create(client, headers, action=None, actions=[REPLY, {"type": "assign", "user_id": foreign_user.id}]))
    assert found == {"actions": {"1": {"user_id": ["No such user in this organisation."]}}}
    found = details(create(client, headers, action={"type": "assign", "user_id": disabled.id}))
    assert found == {"action": {"user_id": ["This user is disabled."]}}


def test_patch_validates_like_create_and_changes_the_trigger_type(session, client, headers):
    a = create(client, headers).get_json()
    assert "actions" in details(client.patch(f"/api/automations/{a['id']}", json={"action": REPLY, "actions": [REPLY]},
                                             headers=headers))
    assert "trigger" in details(client.patch(f"/api/automations/{a['id']}",
                                             json={"trigger": {"type": "outside_hours"}}, headers=headers))
    r = client.patch(f"/api/automations/{a['id']}", json={"trigger": {"type": "first_message", "after_days": 7}},
                     headers=headers)
    assert r.status_code == 200 and r.get_json()["trigger"] == {"type": "first_message", "after_days": 7}
    assert client.get("/api/automations?trigger_type=keyword", headers=headers).get_json()["items"] == []


def test_viewers_read_agents_do_not_write_and_other_organisations_see_nothing(session, client, org, headers):
    a = create(client, headers).get_json()
    viewer = principal_headers(session, org, "viewer")
    agent = principal_headers(session, org, "agent")
    assert client.get(f"/api/automations/{a['id']}", headers=viewer).status_code == 200
    assert create(client, agent).status_code == 403
    assert client.patch(f"/api/automations/{a['id']}", json={"enabled": False}, headers=agent).status_code == 403
    stranger = principal_headers(session, f.make_organization(session), "admin")
    assert client.get(f"/api/automations/{a['id']}", headers=stranger).status_code == 404
    assert client.patch(f"/api/automations/{a['id']}", json={"enabled": False}, headers=stranger).status_code == 404
    assert client.delete(f"/api/automations/{a['id']}", headers=stranger).status_code == 404
    assert client.get("/api/automations", headers=stranger).get_json()["items"] == []
    assert client.get(f"/api/automations/{a['id']}", headers=headers).get_json()["enabled"] is True


def test_runs_are_listed_newest_first_with_a_cursor_and_a_status_filter(session, client, org, headers):
    a = f.make_automation(session, organization_id=org.id)
    msgs = [f.make_message(session, organization_id=org.id, direction="inbound") for _ in range(3)]
    runs = [f.make_automation_run(session, automation_id=a.id, trigger_message_id=m.id, status=s)
            for m, s in zip(msgs, ("fired", "skipped", "fired"), strict=True)]
    f.make_automation_run(session, automation_id=f.make_automation(session, organization_id=org.id).id)
    page = client.get(f"/api/automations/{a.id}/runs?limit=2", headers=headers).get_json()
    assert [r["id"] for r in page["items"]] == [runs[2].id, runs[1].id] and page["next_cursor"]
    rest = client.get(f"/api/automations/{a.id}/runs?limit=2&cursor={page['next_cursor']}", headers=headers).get_json()
    assert [r["id"] for r in rest["items"]] == [runs[0].id] and rest["next_cursor"] is None
    fired = client.get(f"/api/automations/{a.id}/runs?status=fired", headers=headers).get_json()["items"]
    assert [r["id"] for r in fired] == [runs[2].id, runs[0].id]
    assert fired[0]["trigger_message_id"] == msgs[2].id and fired[0]["automation_id"] == a.id
    assert "cursor" in details(client.get(f"/api/automations/{a.id}/runs?cursor=bm9wZQ", headers=headers))
