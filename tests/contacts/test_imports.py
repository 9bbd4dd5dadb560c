"""POST /api/contacts/import and the imports it makes: what the upload refuses (422/413, never a
500), the import object, its counts as the importer writes them (run here in the test's
transaction; tests/contacts/test_import_workers.py runs real workers), merging, opt-outs, the
contact cap, lists, resuming after a crash, tenant scoping, permissions and the audit log."""
from __future__ import annotations

import io
import json

import pytest
from sqlalchemy import select, text

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.contacts import importer
from app.models import AuditLog, Contact, ContactImport, ContactListMember
from app.storage import import_storage as storage
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers


@pytest.fixture
def agent_headers(session, org):
    return principal_headers(session, org, "agent")


def upload(client, headers, content: bytes | str, filename="contacts.csv", **form):
    data = {"file": (io.BytesIO(content.encode() if isinstance(content, str) else content), filename), **form}
    return client.post("/api/contacts/import", data=data, headers=headers, content_type="multipart/form-data")


def run_import(client, headers, content, **form) -> dict:
    """Upload, run the importer (in this test's transaction), and the import as the API shows it."""
    r = upload(client, headers, content, **form)
    assert r.status_code == 202, r.get_json()
    assert importer.run(r.get_json()["id"]) == "completed"
    return client.get(f"/api/contacts/imports/{r.get_json()['id']}", headers=headers).get_json()


def contacts_of(session, org_id) -> dict[str, Contact]:
    session.expire_all()
    return {c.phone: c for c in session.scalars(select(Contact).where(Contact.organization_id == org_id))}


def counts(body) -> tuple:
    return body["total"], body["created"], body["updated"], body["duplicates"], body["invalid"]


def test_upload_answers_202_with_the_queued_import_and_the_job_then_imports_it(session, client, org, agent_headers):
    r = upload(client, agent_headers, "phone,name,tags\n+14155550001,Ann,vip|eu\n", filename="../../people.csv")
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["id"].startswith("imp_") and body["status"] == "queued" and body["filename"] == "people.csv"
    assert counts(body) == (0, 0, 0, 0, 0) and body["errors"] == [] and body["started_at"] is None
    row = session.get(ContactImport, body["id"])
    assert row.column_plan == {"columns": 3, "phone": 0, "name": 1, "tags": 2, "attributes": []}
    outbox = session.execute(text("SELECT actor_name, args FROM job_outbox")).all()
    assert [(a, list(g)) for a, g in outbox] == [("contacts.import_csv", [body["id"]])]

    assert importer.run(body["id"]) == "completed"
    done = client.get(f"/api/contacts/imports/{body['id']}", headers=agent_headers).get_json()
    assert done["status"] == "completed" and counts(done) == (1, 1, 0, 0, 0) and done["progress"] == 1.0
    assert done["started_at"] and done["completed_at"]
    ann = contacts_of(session, org.id)["+14155550001"]
    assert (ann.name, ann.tags) == ("Ann", ["vip", "eu"])
    assert importer.run(body["id"]) == "skipped", "a second job for a finished import does nothing"
    listed = client.get("/api/contacts/imports", headers=agent_headers).get_json()
    assert [i["id"] for i in listed["items"]] == [body["id"]]
    assert client.get("/api/contacts/imports?status=running", headers=agent_headers).get_json()["items"] == []
    assert not storage().path(row.storage_key).exists(), "the stored file is removed once imported"
    actions = session.scalars(select(AuditLog.action).where(AuditLog.target_id == body["id"])
                              .order_by(AuditLog.id)).all()
    assert actions == ["contact.import", "contact.import_completed"]


def test_counts_errors_normalising_bom_and_semicolons(session, client, org, agent_headers, override_settings):
    existing = f.make_contact(session, organization_id=org.id, phone="+14155550002", name="Old", tags=["old"],
                              attributes={"plan": "free", "city": "Paris"})
    lines = ["\ufeffPhone;Name;Tags;Plan",  # a BOM, `;` and headers in another case
             "+1 415 555 0001;Ann;vip,eu;pro",  # spaces: normalised
             "+14155550002;;new;pro",  # existing: tags and attributes merged, the name kept
             ";No phone;;",
             "not a number;Bob;;",
             "(415) 555-0003;Local;;",  # no + : read in the default region
             "+1 (415) 555-0001;Ann again;later;",  # the same number again: a duplicate, merged
             "",  # blank lines are no rows
             '"+14155550004";"Semi; colon";"a|b";"x"',
             "+14155550005;Too;many;fields;here"]
    body = run_import(client, agent_headers, "\r\n".join(lines) + "\r\n", default_region="us")
    assert counts(body) == (8, 3, 1, 1, 3)
    assert body["errors"] == [
        {"line": 4, "reason": "the phone is empty"},
        {"line": 5, "reason": "the phone 'not a number' is not a phone number"},
        {"line": 10, "reason": "the row has 5 fields, the header 4"}]
    got = contacts_of(session, org.id)
    ann = got["+14155550001"]
    assert (ann.name, ann.tags, ann.attributes) == ("Ann again", ["vip", "eu", "later"], {"Plan": "pro"})
    old = got["+14155550002"]
    assert old.id == existing.id and old.name == "Old" and old.tags == ["old", "new"]
    assert old.attributes == {"plan": "free", "city": "Paris", "Plan": "pro"}, "attribute names are kept as written"
    assert got["+14155550003"].name == "Local"
    assert (got["+14155550004"].name, got["+14155550004"].tags) == ("Semi; colon", ["a", "b"])


def test_without_a_default_region_national_numbers_are_invalid(client, agent_headers):
    body = run_import(client, agent_headers, "phone\n4155550001\n0049301234567\n")
    assert counts(body) == (2, 1, 0, 0, 1)
    assert "no default region" in body["errors"][0]["reason"] and body["errors"][0]["line"] == 2


def test_a_mapping_names_the_columns(session, client, org, agent_headers):
    csv_text = "Mobile,Full name,Labels,Customer no,Notes\n+14155550001,Ann,a|b,42,skip me\n"
    mapping = {"Mobile": "phone", "full name": "name", "Labels": "tags", "Customer no": "attributes.customer_id",
               "Notes": None}
    body = run_import(client, agent_headers, csv_text, mapping=json.dumps(mapping))
    assert counts(body) == (1, 1, 0, 0, 0)
    ann = contacts_of(session, org.id)["+14155550001"]
    assert (ann.name, ann.tags, ann.attributes) == ("Ann", ["a", "b"], {"customer_id": "42"})


def test_an_opt_out_is_never_undone_and_a_deleted_contact_is_revived(session, client, org, agent_headers):
    out = f.make_contact(session, organization_id=org.id, phone="+14155550001", opted_out=True)
    gone = f.make_contact(session, organization_id=org.id, phone="+14155550002", tags=["old"],
                          deleted_at=out.created_at)
    body = run_import(client, agent_headers, "phone,name,tags,opted_out\n+14155550001,A,x,false\n"
                                             "+14155550002,B,new,\n")
    assert counts(body) == (2, 1, 1, 0, 0)
    got = contacts_of(session, org.id)
    assert got["+14155550001"].opted_out is True
    assert got["+14155550001"].attributes == {"opted_out": "false"}, "an opted_out column is only an attribute"
    assert (got["+14155550002"].id, got["+14155550002"].deleted_at, got["+14155550002"].tags) == (gone.id, None,
                                                                                                 ["new"])


def test_the_contact_cap_refuses_new_contacts_beyond_it(session, client, org, agent_headers, override_settings):
    f.make_contact(session, organization_id=org.id, phone="+14155550001")
    override_settings(MAX_CONTACTS_PER_ORG=3)
    body = run_import(client, agent_headers, "phone\n+14155550001\n+14155550002\n+14155550003\n+14155550004\n")
    assert counts(body) == (4, 2, 1, 0, 1)
    assert body["errors"] == [{"line": 5, "reason": "the organisation has as many contacts as it may have "
                                                    "(3, MAX_CONTACTS_PER_ORG)"}]
    assert "+14155550004" not in contacts_of(session, org.id)


def test_an_import_can_fill_a_list(session, client, org, agent_headers):
    lst = f.make_contact_list(session, organization_id=org.id)
    body = run_import(client, agent_headers, "phone\n+14155550001\n+14155550002\n+14155550001\n", list_id=lst.id)
    assert counts(body) == (3, 2, 0, 1, 0) and body["list_id"] == lst.id
    members = session.scalars(select(ContactListMember.contact_id).where(ContactListMember.list_id == lst.id)).all()
    assert sorted(members) == sorted(c.id for c in contacts_of(session, org.id).values())
    other = f.make_contact_list(session)
    r = upload(client, agent_headers, "phone\n+14155550001\n", list_id=other.id)
    assert r.status_code == 422 and r.get_json()["error"]["details"] == {"list_id": ["No such contact list."]}


def test_batches_commit_progress_and_a_crashed_import_resumes_counting_nothing_twice(
        session, client, org, agent_headers, override_settings, monkeypatch):
    override_settings(CONTACT_IMPORT_BATCH_ROWS=3)
    lines = ["phone"] + [f"+1415555{i:04d}" for i in range(10)] + ["+14155550000", "bad"]
    r = upload(client, agent_headers, "\n".join(lines) + "\n")
    import_id = r.get_json()["id"]
    real = importer.write_batch
    calls = []

    def crash_on_third(session_, claim, rows):
        calls.append(len(rows))
        result = real(session_, claim, rows)
        if len(calls) == 3:
            raise RuntimeError("the worker died mid-batch")
        return result

    monkeypatch.setattr(importer, "write_batch", crash_on_third)
    with pytest.raises(RuntimeError):
        importer.run(import_id)
    mid = client.get(f"/api/contacts/imports/{import_id}", headers=agent_headers).get_json()
    assert mid["status"] == "queued", "released for the job's retry"
    assert counts(mid) == (6, 6, 0, 0, 0) and 0 < mid["progress"] < 1
    assert len(contacts_of(session, org.id)) == 6, "the crashed batch left nothing behind"
    monkeypatch.setattr(importer, "write_batch", real)
    assert importer.run(import_id) == "completed"
    done = client.get(f"/api/contacts/imports/{import_id}", headers=agent_headers).get_json()
    assert counts(done) == (12, 10, 0, 1, 1) and done["errors"] == [{"line": 13, "reason": (
        "the phone 'bad' is not a phone number")}]
    assert len(contacts_of(session, org.id)) == 10


def test_a_stale_worker_cannot_write_over_its_successor(session, client, agent_headers):
    import_id = upload(client, agent_headers, "phone\n+14155550001\n").get_json()["id"]
    claim = importer._claim(import_id)
    session.execute(text("UPDATE contact_imports SET lease_until = now() - interval '1 second' WHERE id = :id"),
                    {"id": import_id})
    assert importer.sweep(session) == {"handed_on": 1, "resent": 0, "failed": 0}
    with pytest.raises(importer.Superseded):
        importer._commit(claim, [], 0, 0, final=True)
    assert importer.run(import_id) == "completed"
    row = session.get(ContactImport, import_id)
    session.refresh(row)
    assert (row.status, row.attempts, row.created_count) == ("completed", 2, 1)


def test_an_import_interrupted_too_often_fails_with_a_clear_error(session, client, agent_headers):
    import_id = upload(client, agent_headers, "phone\n+14155550001\n").get_json()["id"]
    for _ in range(importer.MAX_ATTEMPTS):
        assert importer._claim(import_id) is not None
        session.execute(text("UPDATE contact_imports SET lease_until = now() - interval '1 second'"))
        importer.sweep(session)
    body = client.get(f"/api/contacts/imports/{import_id}", headers=agent_headers).get_json()
    assert body["status"] == "failed" and "interrupted 5 times" in body["error"] and body["completed_at"]


@pytest.mark.parametrize("content, field, message", [
    (b"", "file", "empty"),
    (b"\xef\xbb\xbf\r\n", "file", "empty"),
    ("phone,name\n+14155550001,Jos\xe9\n".encode("latin-1"), "file", "Not UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "file", "Not"),
    (b"name,tags\nAnn,vip\n", "file", "No phone column"),
    ("!\u0430\x1c".encode(), "file", "No phone column"),  # no line end at all
    (b"phone,Phone\n+1,+2\n", "file", "twice"),
    (b"phone,name\n+14155550001,A\x00B\n", "file", "NUL"),
    (b"phone,name\n+14155550001," + b"x" * (1 << 20) + b"\n", "file", "longer than"),
])
def test_bad_files_are_422_naming_the_file(client, agent_headers, content, field, message):
    r = upload(client, agent_headers, content)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "validation_error" and message in " ".join(error["details"][field])


@pytest.mark.parametrize("mapping, message", [
    ("{not json", "Not valid JSON"),
    ('["phone"]', "JSON object"),
    ('{"Mobile": "telephone"}', "must be phone"),
    ('{"Nope": "phone"}', "No column 'Nope'"),
    ('{"Mobile": "name", "phone": null}', "No column is the phone"),
    ('{"Mobile": "phone", "phone": "phone"}', "Two columns are the phone"),
    ('{"Mobile": "attributes.' + "k" * 65 + '"}', "must be phone"),
])
def test_bad_mappings_are_422_naming_the_mapping(client, agent_headers, mapping, message):
    r = upload(client, agent_headers, "Mobile,phone\n+14155550001,+14155550002\n", mapping=mapping)
    assert r.status_code == 422, r.get_json()
    assert message in " ".join(r.get_json()["error"]["details"]["mapping"])


def test_a_file_of_only_a_header_imports_nothing(client, agent_headers):
    body = run_import(client, agent_headers, "phone")
    assert body["status"] == "completed" and counts(body) == (0, 0, 0, 0, 0)


def test_other_bad_input_is_422(client, agent_headers):
    r = client.post("/api/contacts/import", data={"mapping": "{}"}, headers=agent_headers,
                    content_type="multipart/form-data")
    assert r.status_code == 422 and "file" in r.get_json()["error"]["details"]
    r = upload(client, agent_headers, "phone\n+14155550001\n", default_region="Atlantis")
    assert r.status_code == 422 and "default_region" in r.get_json()["error"]["details"]
    r = upload(client, agent_headers, "phone\n+14155550001\n", colour="red")
    assert r.status_code == 422 and "colour" in r.get_json()["error"]["details"]
    r = client.post("/api/contacts/import", json={"file": "phone\n"}, headers=agent_headers)
    assert r.status_code == 422 and "file" in r.get_json()["error"]["details"]
    assert client.get("/api/contacts/imports?status=done", headers=agent_headers).status_code == 422


def test_size_and_row_limits(client, agent_headers, override_settings):
    override_settings(CONTACT_IMPORT_MAX_ROWS=3)
    assert upload(client, agent_headers, "phone\n+14155550001\n+14155550002\n+14155550003").status_code == 202
    r = upload(client, agent_headers, "phone\n+14155550001\n+14155550002\n+14155550003\n+14155550004\n")
    assert r.status_code == 422 and "More than 3 rows" in r.get_json()["error"]["details"]["file"][0]
    override_settings(CONTACT_IMPORT_MAX_ROWS=1000, CONTACT_IMPORT_MAX_BYTES=1000)
    r = upload(client, agent_headers, "phone\n" + "+14155550001\n" * 50)
    assert r.status_code == 202
    r = upload(client, agent_headers, "phone\n" + "+14155550001\n" * 200_000)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "payload_too_large"
    assert r.get_json()["error"]["details"] == {"limit_bytes": 1000}


def test_a_file_above_the_limit_but_within_the_overhead_is_413_too(client, agent_headers, override_settings):
    override_settings(CONTACT_IMPORT_MAX_BYTES=100)
    r = upload(client, agent_headers, "phone\n" + "+14155550001\n" * 20)
    assert r.status_code == 413 and r.get_json()["error"]["details"] == {"limit_bytes": 100}


def test_tenant_scoping_and_roles(session, client, org, agent_headers):
    import_id = upload(client, agent_headers, "phone\n+14155550001\n").get_json()["id"]
    other = principal_headers(session, f.make_organization(session), "admin")
    assert client.get(f"/api/contacts/imports/{import_id}", headers=other).status_code == 404
    assert client.get("/api/contacts/imports", headers=other).get_json()["items"] == []
    viewer = api_key_headers(session, org, "viewer")
    assert client.get(f"/api/contacts/imports/{import_id}", headers=viewer).status_code == 200
    r = upload(client, viewer, "phone\n+14155550001\n")
    assert r.status_code == 403 and r.get_json()["error"]["details"]["required_permission"] == "contacts:write"
    assert upload(client, {}, "phone\n+14155550001\n").status_code == 401
    assert client.get("/api/contacts/imports/imp_nope", headers=agent_headers).status_code == 404
