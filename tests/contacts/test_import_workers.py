"""Contact imports through real ``default`` pool workers: a file of 100,000 rows (with a BOM, `;`
between fields, national numbers, invalid numbers, empty phones and repeated numbers) imported with
true counts and its first errors; and a worker killed (SIGKILL) mid-import whose import a new
worker finishes, with every count still true and no contact lost."""
from __future__ import annotations

import io
import os
import signal

import pytest
from sqlalchemy import func, select

from app.contacts import importer
from app.models import Contact, ContactImport
from tests import factories as f
from tests.procs import wait_for

pytestmark = pytest.mark.workers

ROWS = 100_000


def phone_of(i: int) -> str:
    return f"+1415{2000000 + i:07d}"


def make_file(rows: int) -> tuple[bytes, dict, list[dict]]:
    """The CSV (BOM, `;`), the counts it must give with the 1,000 contacts ``existing`` made, and
    its first 100 errors. Every 50 rows: an empty phone, a number too short, a text, and a repeat."""
    lines, errors = ["\ufeffPhone;Name;Tags;Plan"], []
    invalid = duplicates = 0
    for i in range(rows):
        line, kind = i + 2, i % 50
        if kind == 7:
            lines.append(f";Nobody {i};;"), errors.append({"line": line, "reason": "the phone is empty"})
        elif kind == 13:
            lines.append(f"+1415;Short {i};;"), errors.append(
                {"line": line, "reason": "the phone '+1415' has the wrong length for its country"})
        elif kind == 19:
            lines.append(f"call me;Text {i};;"), errors.append(
                {"line": line, "reason": "the phone 'call me' is not a phone number"})
        elif kind == 29:
            lines.append(f"{phone_of(i - 20)};Again {i};again;")  # row i - 20 is a valid one
            duplicates += 1
            continue
        else:
            p = phone_of(i)
            written = f"(415) {p[5:8]}-{p[8:]}" if i % 3 == 0 else p  # national: the default region
            lines.append(f'{written};"Person; {i}";t{i % 7}|all;plan{i % 4}')
            continue
        invalid += 1
    expected = {"total": rows, "invalid": invalid, "duplicates": duplicates, "updated": 1000,
                "created": rows - invalid - duplicates - 1000}
    return ("\r\n".join(lines) + "\r\n").encode(), expected, errors[:100]


def existing(session, org_id: str) -> None:
    """1,000 contacts the file updates (the first valid numbers); one of them opted out."""
    valid = [i for i in range(ROWS) if i % 50 not in (7, 13, 19, 29)][:1000]
    for n, i in enumerate(valid):
        f.make_contact(session, organization_id=org_id, phone=phone_of(i), name=f"Before {i}", tags=["before"],
                       opted_out=n == 0)
    session.commit()


def upload(client, headers, content: bytes) -> str:
    r = client.post("/api/contacts/import", data={"file": (io.BytesIO(content), "big.csv"), "default_region": "US"},
                    headers=headers, content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def shown(client, headers, import_id: str) -> dict:
    return client.get(f"/api/contacts/imports/{import_id}", headers=headers).get_json()


def counts(body: dict) -> dict:
    return {k: body[k] for k in ("total", "created", "updated", "duplicates", "invalid")}


def check_contacts(session, org_id: str, expected: dict) -> None:
    session.expire_all()
    live = session.scalar(select(func.count()).select_from(Contact).where(Contact.organization_id == org_id))
    assert live == expected["created"] + expected["updated"], "every valid number is one contact"
    first = session.scalars(select(Contact).where(Contact.phone == phone_of(0))).one()
    assert first.opted_out is True, "an import never opts a contact back in"
    assert (first.name, first.tags, first.attributes) == ("Person; 0", ["before", "t0", "all"], {"Plan": "plan0"})
    repeated = session.scalars(select(Contact).where(Contact.phone == phone_of(9))).one()  # repeated by row 29
    assert (repeated.name, repeated.tags) == ("Again 29", ["before", "t2", "all", "again"])
    national = session.scalars(select(Contact).where(Contact.phone == phone_of(ROWS - 1 - (ROWS - 1) % 3))).one()
    assert national.name.startswith("Person; ")


def test_a_100k_row_file_through_a_real_worker(committed, committed_client, committed_org, committed_headers,
                                               run_pool):
    content, expected, first_errors = make_file(ROWS)
    existing(committed, committed_org.id)
    run_pool("default")
    import_id = upload(committed_client, committed_headers, content)
    wait_for(lambda: shown(committed_client, committed_headers, import_id)["status"] in ("completed", "failed"),
             timeout=300, interval=0.5, message="the import to finish")
    body = shown(committed_client, committed_headers, import_id)
    assert body["status"] == "completed", body["error"]
    assert counts(body) == expected
    assert body["errors"] == first_errors and len(body["errors"]) == 100
    assert body["progress"] == 1.0 and body["processed_bytes"] == body["size_bytes"] == len(content)
    check_contacts(committed, committed_org.id, expected)
    r = committed_client.get(f"/api/contacts?q={phone_of(0)[1:]}", headers=committed_headers).get_json()
    assert [c["name"] for c in r["items"]] == ["Person; 0"]


def test_a_worker_killed_mid_import_is_replaced_and_the_counts_stay_true(committed, committed_client, committed_org,
                                                                         committed_headers, run_pool,
                                                                         override_settings):
    content, expected, first_errors = make_file(ROWS)
    existing(committed, committed_org.id)
    worker_env = {"CONTACT_IMPORT_BATCH_ROWS": "500", "CONTACT_IMPORT_LEASE": "2"}
    override_settings(**worker_env)
    first = run_pool("default", **worker_env)
    import_id = upload(committed_client, committed_headers, content)

    def under_way():
        committed.expire_all()
        row = committed.get(ContactImport, import_id)
        return row.status == "running" and row.total_rows >= 5000 and row

    wait_for(under_way, timeout=120, interval=0.02, message="the import to be under way")
    os.killpg(first.pid, signal.SIGKILL)  # the whole pool, mid-import
    first.wait(10)
    committed.expire_all()
    at_kill = committed.get(ContactImport, import_id)
    assert at_kill.status == "running" and at_kill.total_rows < ROWS, "it finished before the kill: raise ROWS"
    mid = shown(committed_client, committed_headers, import_id)
    assert 0 < mid["progress"] < 1
    assert mid["total"] == mid["created"] + mid["updated"] + mid["duplicates"] + mid["invalid"]

    def handed_on():  # the sweeper (the scheduler runs it every few seconds) once the lease ran out
        result = importer.sweep(committed)
        committed.commit()
        return result["handed_on"] == 1

    wait_for(handed_on, timeout=30, interval=0.5, message="the sweeper to hand the import on")
    run_pool("default", **worker_env)
    wait_for(lambda: shown(committed_client, committed_headers, import_id)["status"] in ("completed", "failed"),
             timeout=300, interval=0.5, message="the new worker to finish the import")
    body = shown(committed_client, committed_headers, import_id)
    assert body["status"] == "completed", body["error"]
    assert counts(body) == expected, "resuming counted nothing twice and lost nothing"
    assert body["errors"] == first_errors
    committed.expire_all()
    assert committed.get(ContactImport, import_id).attempts == 2
    check_contacts(committed, committed_org.id, expected)
