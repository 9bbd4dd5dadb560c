"""Templates: the API and Meta's rules, previews, reviews (Meta's over the fake Graph API, the
simulator's), the approval gate on sends, and the cloud 24-hour rule. Rolled back; the review
through a real worker is test_template_reviewed_by_meta_through_a_worker_then_sent."""
import json
from datetime import timedelta

import pytest
from sqlalchemy import select

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.clients.meta_service import sign
from app.db import utcnow
from app.models import Message, TemplateApproval
from app.security.crypto import encrypt_json
from app.templates import reviews
from tests import factories as f
from tests.fake_graph import FakeGraph
from tests.procs import wait_for

APP_SECRET = "app-secret-templates"
TO = "+14155550123"

ORDER = {"name": "order_shipped", "language": "en_US", "category": "utility",
         "header": {"type": "text", "text": "Order {{order}}"},
         "body": "Hi {{name}}, your order {{order}} ships from {{attributes.city}} today.",
         "footer": "Reply STOP to opt out",
         "buttons": [{"type": "quick_reply", "text": "Thanks"},
                     {"type": "url", "text": "Track", "url": "https://shop.test/track/{{order}}"},
                     {"type": "phone", "text": "Call us", "phone_number": "+14155550199"}],
         "examples": {"name": "Ann", "order": "A-1", "attributes.city": "Lisbon"}}


@pytest.fixture
def graph(allow_loopback):
    with FakeGraph() as g:
        yield g


def cloud(session, org, graph, **config):
    return f.make_client(session, organization_id=org.id, transport="cloud", status="ready", phone="+15550783881",
                         config={"phone_number_id": graph.phone_number_id, "waba_id": graph.waba_id,
                                 "base_url": graph.url, **config},
                         secrets_encrypted=encrypt_json({"access_token": graph.access_token,
                                                         "app_secret": APP_SECRET, "verify_token": "v"}))


def post(client, headers, body, path="/api/templates"):
    return client.post(path, json=body, headers=headers)


# ----------------------------------------------------------------------------- the API and the rules

def test_create_lists_variables_of_header_body_and_buttons_and_reads_back(client, admin_key_headers):
    r = post(client, admin_key_headers, ORDER)
    assert r.status_code == 201, r.get_json()
    t = r.get_json()
    assert t["variables"] == ["order", "name", "attributes.city"]
    assert t["header"] == {"type": "text", "text": "Order {{order}}"} and len(t["buttons"]) == 3
    assert t["approvals"] == [] and t["meta_status"] is None  # no client needs a review
    got = client.get(f"/api/templates/{t['id']}", headers=admin_key_headers).get_json()
    assert got["body"] == ORDER["body"] and got["footer"] == ORDER["footer"]
    listed = client.get("/api/templates?q=ships", headers=admin_key_headers).get_json()["items"]
    assert [x["id"] for x in listed] == [t["id"]]
    assert client.get("/api/templates?category=marketing", headers=admin_key_headers).get_json()["items"] == []


@pytest.mark.parametrize("change, field", [
    ({"name": "Order Shipped"}, "name"),
    ({"language": "english"}, "language"),
    ({"category": "promo"}, "category"),
    ({"body": ""}, "body"),
    ({"body": "x" * 1025}, "body"),
    ({"body": "Hi {{name}} and {{1}}"}, "body"),
    ({"body": "Hi {{1}} and {{3}}"}, "body"),
    ({"body": "Hi {{First}}"}, "body"),
    ({"header": {"type": "text", "text": "{{a}} {{b}}"}}, "header"),
    ({"header": {"type": "image", "media_id": "med_nope"}}, "header"),
    ({"header": {"type": "gif"}}, "header"),
    ({"footer": "Footer {{name}}"}, "footer"),
    ({"buttons": [{"type": "url", "text": "Go", "url": "ftp://x"}]}, "buttons"),
    ({"buttons": [{"type": "url", "text": "Go", "url": "https://x.test/{{a}}/b"}]}, "buttons"),
    ({"buttons": [{"type": "phone", "text": "Call", "phone_number": "12345"}]}, "buttons"),
    ({"buttons": [{"type": "quick_reply", "text": "x" * 26}]}, "buttons"),
    ({"buttons": [{"type": "phone", "text": "A", "phone_number": "+14155550199"}] * 2}, "buttons"),
    ({"examples": {"nope": "1"}}, "examples"),
])
def test_bad_templates_are_422_naming_the_field(client, admin_key_headers, change, field):
    r = post(client, admin_key_headers, {**ORDER, **change})
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["error"]["details"]


def test_name_and_language_are_unique_among_live_templates(client, admin_key_headers):
    first = post(client, admin_key_headers, ORDER).get_json()
    again = post(client, admin_key_headers, ORDER)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "template_exists"
    assert post(client, admin_key_headers, {**ORDER, "language": "pt_BR"}).status_code == 201
    assert client.delete(f"/api/templates/{first['id']}", headers=admin_key_headers).status_code == 204
    assert client.get(f"/api/templates/{first['id']}", headers=admin_key_headers).status_code == 404
    assert post(client, admin_key_headers, ORDER).status_code == 201


def test_patch_changes_content_but_not_name_or_language(client, admin_key_headers):
    t = post(client, admin_key_headers, ORDER).get_json()
    r = client.patch(f"/api/templates/{t['id']}", json={"body": "Hello {{name}}", "buttons": []},
                     headers=admin_key_headers)
    assert r.status_code == 200 and r.get_json()["variables"] == ["order", "name"]  # the header keeps {{order}}
    r = client.patch(f"/api/templates/{t['id']}", json={"name": "other_name"}, headers=admin_key_headers)
    assert r.status_code == 422 and "name" in r.get_json()["error"]["details"]


def test_another_organisations_template_is_404(client, session, admin_key_headers):
    other = f.make_template(session)
    for method in ("get", "patch", "delete"):
        r = getattr(client, method)(f"/api/templates/{other.id}", json={}, headers=admin_key_headers)
        assert r.status_code == 404
    assert post(client, admin_key_headers, {}, f"/api/templates/{other.id}/preview").status_code == 404


def test_viewers_read_but_do_not_write(client, session, org):
    from tests.auth_helpers import api_key_headers

    viewer = api_key_headers(session, org, role="viewer")
    assert client.get("/api/templates", headers=viewer).status_code == 200
    assert post(client, viewer, ORDER).status_code == 403


# ----------------------------------------------------------------------------- preview

def test_preview_with_variables_and_with_a_contacts_fields(client, session, org, admin_key_headers):
    t = post(client, admin_key_headers, ORDER).get_json()
    contact = f.make_contact(session, organization_id=org.id, name="Ann", attributes={"city": "Porto"})
    r = post(client, admin_key_headers, {"contact_id": contact.id, "variables": {"order": "A-7"}},
             f"/api/templates/{t['id']}/preview")
    assert r.status_code == 200, r.get_json()
    p = r.get_json()
    assert p["body"] == "Hi Ann, your order A-7 ships from Porto today."
    assert p["header"] == "Order A-7" and p["buttons"][1]["url"] == "https://shop.test/track/A-7"
    assert p["text"].startswith("*Order A-7*\n\nHi Ann") and "[Call us] +14155550199" in p["text"]
    missing = post(client, admin_key_headers, {"variables": {"name": "Bo"}}, f"/api/templates/{t['id']}/preview")
    assert missing.status_code == 422
    assert missing.get_json()["error"]["details"]["missing"] == ["order", "attributes.city"]
    stranger = f.make_contact(session)
    r = post(client, admin_key_headers, {"contact_id": stranger.id}, f"/api/templates/{t['id']}/preview")
    assert r.status_code == 422 and "contact_id" in r.get_json()["error"]["details"]


def test_positional_placeholders_as_meta_numbers_them(client, admin_key_headers):
    t = post(client, admin_key_headers, {"name": "code", "category": "authentication",
                                         "body": "Your code is {{1}}, valid {{2}} minutes."}).get_json()
    assert t["variables"] == ["1", "2"]
    r = post(client, admin_key_headers, {"variables": {"1": "4242", "2": 10}}, f"/api/templates/{t['id']}/preview")
    assert r.get_json()["text"] == "Your code is 4242, valid 10 minutes."


# ----------------------------------------------------------------------------- Meta's review (cloud)

def test_cloud_review_submits_to_meta_and_gates_sends_until_approved(client, session, org, admin_key_headers,
                                                                   graph):
    cli = cloud(session, org, graph)
    t = post(client, admin_key_headers, ORDER).get_json()
    assert [(a["client_id"], a["status"]) for a in t["approvals"]] == [(cli.id, "pending")]
    assert t["meta_status"] == "pending"
    send = {"client_id": cli.id, "to": TO, "type": "template", "template_id": t["id"],
            "variables": {"name": "Ann", "order": "A-1", "attributes.city": "Lisbon"}}
    r = client.post("/api/messages", json=send, headers=admin_key_headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "template_not_approved"
    assert "submitted" in r.get_json()["error"]["message"] or "pending" in r.get_json()["error"]["message"]

    assert reviews.run_submit(t["id"], cli.id, ORDER["examples"]) == "pending"
    created = [r for r in graph.requests if r.path.endswith("/message_templates")][-1].json
    assert created["name"] == "order_shipped" and created["category"] == "UTILITY"
    assert created["parameter_format"] == "NAMED"
    body = next(c for c in created["components"] if c["type"] == "BODY")
    assert body["text"] == "Hi {{name}}, your order {{order}} ships from {{attributes_city}} today."
    assert {"param_name": "attributes_city", "example": "Lisbon"} in body["example"]["body_text_named_params"]
    buttons = next(c for c in created["components"] if c["type"] == "BUTTONS")["buttons"]
    assert [b["type"] for b in buttons] == ["QUICK_REPLY", "URL", "PHONE_NUMBER"]
    assert buttons[1]["url"] == "https://shop.test/track/{{1}}"

    # Meta's verdict arrives by its webhook
    meta_id = graph.set_template_status("order_shipped", "APPROVED")
    payload = {"object": "whatsapp_business_account", "entry": [{"id": graph.waba_id, "changes": [{
        "field": "message_template_status_update", "value": {
            "event": "APPROVED", "message_template_id": int(meta_id), "message_template_name": "order_shipped",
            "message_template_language": "en_US", "reason": "NONE"}}]}]}
    raw = json.dumps(payload).encode()
    r = client.post(f"/webhooks/meta/{cli.id}", data=raw, content_type="application/json",
                    headers={"X-Hub-Signature-256": sign(APP_SECRET, raw)})
    assert r.status_code == 200, r.get_json()
    got = client.get(f"/api/templates/{t['id']}", headers=admin_key_headers).get_json()
    assert got["meta_status"] == "approved" and got["approvals"][0]["meta_template_id"] == meta_id

    r = client.post("/api/messages", json=send, headers=admin_key_headers)
    assert r.status_code == 202, r.get_json()
    message = session.get(Message, r.get_json()["id"])
    from app.messages.outbound import build_outbound
    from app.transports.cloud import CloudTransport

    outbound = build_outbound(session, message)
    payload = CloudTransport(_info(session, cli), None).build_payload(outbound)
    comps = payload["template"]["components"]
    assert comps[0] == {"type": "header", "parameters": [{"type": "text", "parameter_name": "order", "text": "A-1"}]}
    assert {"type": "text", "parameter_name": "attributes_city", "text": "Lisbon"} in comps[1]["parameters"]
    assert comps[2] == {"type": "button", "sub_type": "url", "index": "1",
                        "parameters": [{"type": "text", "text": "A-1"}]}


def _info(session, cli):
    from app.clients.info import client_info

    return client_info(session, cli)


def test_a_rejection_shows_its_reason_and_refuses_sends(client, session, org, admin_key_headers, graph):
    cli = cloud(session, org, graph)
    t = post(client, admin_key_headers, ORDER).get_json()
    reviews.run_submit(t["id"], cli.id)
    graph.set_template_status("order_shipped", "REJECTED", "INVALID_FORMAT")
    assert reviews.run_sync() == 1  # the periodic sync, when no webhook came
    got = client.get(f"/api/templates/{t['id']}", headers=admin_key_headers).get_json()
    assert got["meta_status"] == "rejected" and got["approvals"][0]["reason"] == "INVALID_FORMAT"
    r = client.post("/api/messages", headers=admin_key_headers, json={
        "client_id": cli.id, "to": TO, "type": "template", "template_id": t["id"],
        "variables": {"name": "A", "order": "1", "attributes.city": "X"}})
    assert r.status_code == 422 and "INVALID_FORMAT" in r.get_json()["error"]["message"]
    assert reviews.run_sync() == 0  # nothing new


def test_a_submission_meta_refuses_is_an_error_and_can_be_submitted_again(client, session, org, admin_key_headers,
                                                                        graph):
    cli = cloud(session, org, graph)
    t = post(client, admin_key_headers, ORDER).get_json()
    graph.fail_next(400, 100, "Invalid parameter")
    assert reviews.run_submit(t["id"], cli.id) == "error"
    got = client.get(f"/api/templates/{t['id']}", headers=admin_key_headers).get_json()
    assert got["meta_status"] == "error" and "Invalid parameter" in got["approvals"][0]["reason"]
    r = post(client, admin_key_headers, {"client_ids": [cli.id]}, f"/api/templates/{t['id']}/submit")
    assert r.status_code == 202 and r.get_json()["approvals"][0]["status"] == "pending"
    assert reviews.run_submit(t["id"], cli.id) == "pending"


def test_editing_an_approved_template_sends_it_for_review_again(client, session, org, admin_key_headers, graph):
    cli = cloud(session, org, graph)
    t = post(client, admin_key_headers, ORDER).get_json()
    reviews.run_submit(t["id"], cli.id)
    graph.set_template_status("order_shipped", "APPROVED")
    reviews.run_sync()
    r = client.patch(f"/api/templates/{t['id']}", json={"footer": "Thanks"}, headers=admin_key_headers)
    assert r.get_json()["approvals"][0]["status"] == "pending"
    assert reviews.run_submit(t["id"], cli.id) == "pending"
    edit = graph.requests[-1]
    assert edit.method == "POST" and edit.path.endswith(r.get_json()["approvals"][0]["meta_template_id"])


def test_deleting_a_template_deletes_it_at_meta(client, session, org, admin_key_headers, graph):
    cli = cloud(session, org, graph)
    t = post(client, admin_key_headers, ORDER).get_json()
    reviews.run_submit(t["id"], cli.id)
    assert client.delete(f"/api/templates/{t['id']}", headers=admin_key_headers).status_code == 204
    reviews.run_delete_at_meta(cli.id, "order_shipped")
    assert graph.templates == {}


def test_a_template_used_by_a_running_campaign_cannot_change_or_go(client, session, org, admin_key_headers):
    t = post(client, admin_key_headers, ORDER).get_json()
    f.make_campaign(session, organization_id=org.id, template_id=t["id"], status="running")
    r = client.patch(f"/api/templates/{t['id']}", json={"body": "New {{name}}"}, headers=admin_key_headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "template_in_use"
    assert client.delete(f"/api/templates/{t['id']}", headers=admin_key_headers).status_code == 409


# ----------------------------------------------------------------------------- the simulator's review

def test_sim_review_approves_or_rejects_as_configured(client, session, org, admin_key_headers):
    ok = f.make_client(session, organization_id=org.id, transport="sim", status="ready",
                       config={"template_review": {"delay_s": 0}})
    picky = f.make_client(session, organization_id=org.id, transport="sim", status="ready",
                          config={"template_review": {"reject": "TAG_CONTENT_MISMATCH"}})
    plain = f.make_client(session, organization_id=org.id, transport="sim", status="ready")
    t = post(client, admin_key_headers, ORDER).get_json()
    assert sorted(a["client_id"] for a in t["approvals"]) == sorted([ok.id, picky.id])
    for cli in (ok, picky):
        reviews.run_submit(t["id"], cli.id)
        reviews.run_sim_review(t["id"], cli.id)
    status = {a.client_id: (a.status, a.reason) for a in session.scalars(select(TemplateApproval))}
    assert status == {ok.id: ("approved", None), picky.id: ("rejected", "TAG_CONTENT_MISMATCH")}
    send = {"to": TO, "type": "template", "template_id": t["id"],
            "variables": {"name": "A", "order": "1", "attributes.city": "X"}}
    for cli, code in ((ok, 202), (picky, 422), (plain, 202)):
        r = client.post("/api/messages", json={**send, "client_id": cli.id}, headers=admin_key_headers)
        assert r.status_code == code, (cli.config, r.get_json())
    sent = session.scalars(select(Message).where(Message.client_id == plain.id)).one()
    assert sent.text.startswith("*Order 1*\n\nHi A, your order 1 ships from X today.")


# ----------------------------------------------------------------------------- the 24-hour rule

def test_cloud_free_text_only_within_24_hours_of_the_contacts_last_message(client, session, org,
                                                                         admin_key_headers, graph):
    cli = cloud(session, org, graph)
    text = {"client_id": cli.id, "to": TO, "text": "Hello"}
    r = client.post("/api/messages", json=text, headers=admin_key_headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "outside_customer_window"
    assert r.get_json()["error"]["details"]["window_ends_at"] is None  # never wrote
    contact = f.make_contact(session, organization_id=org.id, phone=TO)
    wrote = utcnow() - timedelta(hours=23)
    f.make_message(session, organization_id=org.id, client_id=cli.id, contact_id=contact.id, direction="inbound",
                   status="received", created_at=wrote, from_phone=TO, to_phone=cli.phone)
    assert client.post("/api/messages", json=text, headers=admin_key_headers).status_code == 202
    later = {**text, "scheduled_at": (wrote + timedelta(hours=25)).isoformat()}
    r = client.post("/api/messages", json=later, headers=admin_key_headers)
    assert r.status_code == 422
    assert r.get_json()["error"]["details"]["window_ends_at"] == (wrote + timedelta(hours=24)).isoformat()
    # a batch refuses only the items outside the window
    other = "+14155550124"
    r = client.post("/api/messages/batch", headers=admin_key_headers, json={"client_id": cli.id, "messages": [
        {"to": TO, "text": "in"}, {"to": other, "text": "out"}]})
    results = r.get_json()["messages"]
    codes = [x.get("error", {}).get("code") for x in results]
    assert codes == [None, "outside_customer_window"]


def test_a_sim_client_has_no_window(client, session, org, admin_key_headers):
    cli = f.make_client(session, organization_id=org.id, transport="sim", status="ready")
    r = client.post("/api/messages", json={"client_id": cli.id, "to": TO, "text": "Hello"}, headers=admin_key_headers)
    assert r.status_code == 202


# ----------------------------------------------------------------------------- through a real worker

def test_template_reviewed_by_meta_through_a_worker_then_sent(committed, committed_client, committed_org,
                                                            committed_headers, run_pool, graph):
    cloud(committed, committed_org, graph)
    committed.commit()
    run_pool("default", WEBHOOK_ALLOW_PRIVATE="loopback")
    t = post(committed_client, committed_headers, ORDER).get_json()
    wait_for(lambda: graph.templates, timeout=60, message="the template submitted to Meta by the worker")
    graph.set_template_status("order_shipped", "APPROVED")
    reviews.run_sync()
    got = committed_client.get(f"/api/templates/{t['id']}", headers=committed_headers).get_json()
    assert got["meta_status"] == "approved"
