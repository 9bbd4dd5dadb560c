"""Exports made by a worker: the file has the rows the streamed export gives, downloads with
credentials or through its signed link, a job delivered twice runs once, a run that died is run
again by the sweep (and a late run never overwrites the one that took over), files expire, bad
input is a clear error and an organisation has at most three exports running."""
from __future__ import annotations

import csv
import io
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import select, text

from app.analytics import export_jobs, exports
from app.analytics.models import AnalyticsExport
from app.analytics.rollup import run_rollup
from app.db import utcnow
from app.outbox import JobOutbox
from app.storage import media_storage
from tests import factories as f
from tests.analytics.test_rollup import BASE, history
from tests.auth_helpers import principal_headers
from tests.procs import wait_for

FROM = (BASE - timedelta(days=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
TO = (BASE + timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def data(session):
    org, _ = history(session)
    run_rollup(session)
    return org


def _rows(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode())))


def _exported(session, export_id: str) -> AnalyticsExport:
    session.expire_all()
    return session.get(AnalyticsExport, export_id)


def _jobs(session, export_id: str) -> int:
    return len([r for r in session.scalars(select(JobOutbox).where(JobOutbox.actor_name == export_jobs.EXPORT_ACTOR))
                if r.args == [export_id]])


@pytest.mark.parametrize("what", ["messages", "rollups"])
def test_an_export_made_by_a_worker_has_the_rows_of_the_streamed_one(client, session, data, what):
    headers = principal_headers(session, data, "viewer")
    r = client.post("/api/analytics/exports", json={"what": what, "from": FROM, "to": TO}, headers=headers)
    assert r.status_code == 202, r.json
    body = r.json
    assert body["status"] == "queued" and body["download_url"] is None and body["what"] == what
    assert _jobs(session, body["id"]) == 1

    assert export_jobs.run_export(body["id"]) == "ready"
    assert export_jobs.run_export(body["id"]) == "skipped"  # delivered twice: run once
    shown = client.get(f"/api/analytics/exports/{body['id']}", headers=headers).json
    streamed = client.get(f"/api/analytics/export?what={what}&from={FROM}&to={TO}", headers=headers).data
    assert shown["status"] == "ready" and shown["attempts"] == 1
    assert shown["rows"] == len(_rows(streamed)) - 1 > 0 and shown["size_bytes"] == len(streamed)

    r = client.get(f"/api/analytics/exports/{body['id']}/download", headers=headers)
    assert r.status_code == 200 and r.data == streamed
    assert r.headers["Content-Type"].startswith("text/csv") and "attachment" in r.headers["Content-Disposition"]
    link = urlsplit(shown["download_url"])
    r = client.get(f"{link.path}?{link.query}")  # no credentials
    assert r.status_code == 200 and r.data == streamed
    r = client.get(f"{link.path}?{link.query[:-3]}abc")
    assert r.status_code == 403 and r.json["error"]["code"] == "invalid_link"
    listed = client.get("/api/analytics/exports", headers=headers).json["items"]
    assert [x["id"] for x in listed] == [body["id"]]


def test_a_media_link_does_not_open_an_export(client, session, data):
    headers = principal_headers(session, data, "admin")
    export_id = client.post("/api/analytics/exports", json={"from": FROM, "to": TO}, headers=headers).json["id"]
    export_jobs.run_export(export_id)
    medium = f.make_media(session, organization_id=data.id)
    from app.media.service import signed_link

    token = urlsplit(signed_link(medium)["url"]).query.split("token=")[1]
    r = client.get(f"/api/analytics/exports/{export_id}/signed-download?token={token}")
    assert r.status_code == 403


def test_an_export_not_ready_is_a_409_and_another_tenants_is_a_404(client, session, data):
    headers = principal_headers(session, data, "manager")
    export_id = client.post("/api/analytics/exports", json={"from": FROM, "to": TO}, headers=headers).json["id"]
    r = client.get(f"/api/analytics/exports/{export_id}/download", headers=headers)
    assert r.status_code == 409 and r.json["error"]["code"] == "export_not_ready"
    stranger = principal_headers(session, f.make_organization(session), "admin")
    assert client.get(f"/api/analytics/exports/{export_id}", headers=stranger).status_code == 404
    assert client.get(f"/api/analytics/exports/{export_id}/download", headers=stranger).status_code == 404
    assert client.delete(f"/api/analytics/exports/{export_id}", headers=stranger).status_code == 404
    assert client.get("/api/analytics/exports", headers=stranger).json["items"] == []


@pytest.mark.parametrize("payload, status, field", [
    ({"format": "xlsx"}, 422, "format"),
    ({"what": "contacts"}, 422, "what"),
    ({"from": TO, "to": FROM}, 422, "from"),
    ({"from": "2020-01-01T00:00:00Z", "to": "2022-01-01T00:00:00Z"}, 422, "to"),
    ({"from": "yesterday"}, 422, "from"),
])
def test_bad_export_requests_are_clear_errors(client, session, data, payload, status, field):
    headers = principal_headers(session, data, "admin")
    r = client.post("/api/analytics/exports", json=payload, headers=headers)
    assert r.status_code == status and field in r.json["error"]["details"], r.json
    assert session.scalar(select(AnalyticsExport.id).where(AnalyticsExport.organization_id == data.id)) is None


def test_another_tenants_client_is_a_404_and_agents_may_not_export(client, session, data):
    headers = principal_headers(session, data, "admin")
    other = f.make_client(session)
    r = client.post("/api/analytics/exports", json={"client_id": other.id}, headers=headers)
    assert r.status_code == 404
    agent = principal_headers(session, data, "agent")
    assert client.post("/api/analytics/exports", json={}, headers=agent).status_code == 403
    assert client.get("/api/analytics/exports", headers=agent).status_code == 403


def test_at_most_three_exports_of_an_organisation_are_open(client, session, data):
    headers = principal_headers(session, data, "admin")
    ids = [client.post("/api/analytics/exports", json={}, headers=headers).json["id"] for _ in range(3)]
    r = client.post("/api/analytics/exports", json={}, headers=headers)
    assert r.status_code == 429 and r.json["error"]["code"] == "too_many_exports"
    assert r.json["error"]["details"] == {"open": 3, "limit": 3}
    export_jobs.run_export(ids[0])
    assert client.post("/api/analytics/exports", json={}, headers=headers).status_code == 202


def test_at_most_twenty_kept_exports_of_an_organisation(client, session, data):
    headers = principal_headers(session, data, "admin")
    for _ in range(export_jobs.MAX_KEPT_EXPORTS):
        f.make_analytics_export(session, organization_id=data.id, status="ready", storage_key="exports/x.csv",
                                expires_at=utcnow() + timedelta(days=1))
    r = client.post("/api/analytics/exports", json={}, headers=headers)
    assert r.status_code == 429 and r.json["error"]["details"] == {"kept": 20, "limit": 20}, r.json
    oldest = session.scalars(select(AnalyticsExport.id).where(AnalyticsExport.organization_id == data.id)).first()
    assert client.delete(f"/api/analytics/exports/{oldest}", headers=headers).status_code == 204
    assert client.post("/api/analytics/exports", json={}, headers=headers).status_code == 202


def test_a_run_that_died_is_run_again_by_the_sweep_and_fails_after_three(client, session, data):
    headers = principal_headers(session, data, "admin")
    export_id = client.post("/api/analytics/exports", json={"what": "messages"}, headers=headers).json["id"]
    session.execute(text("DELETE FROM job_outbox"))

    def die_while_running():  # a worker that claimed it and was killed: the lease runs out
        session.execute(export_jobs._CLAIM, {"id": export_id, "lease": 600, "max_attempts": 3})
        session.execute(text("UPDATE analytics_exports SET lease_until = now() - interval '1 second' WHERE id = :i"),
                        {"i": export_id})

    die_while_running()
    assert export_jobs.sweep()["requeued"] == 1 and _jobs(session, export_id) == 1
    assert export_jobs.run_export(export_id) == "ready"
    assert _exported(session, export_id).attempts == 2

    again = client.post("/api/analytics/exports", json={"what": "messages"}, headers=headers).json["id"]
    export_id = again
    for _ in range(3):
        die_while_running()
    assert export_jobs.sweep()["failed"] == 1
    row = _exported(session, again)
    assert row.status == "failed" and row.error == "the export was interrupted 3 times"
    assert export_jobs.run_export(again) == "skipped"


def test_a_late_run_never_overwrites_the_run_that_took_over(client, session, data, monkeypatch):
    headers = principal_headers(session, data, "admin")
    export_id = client.post("/api/analytics/exports", json={"what": "messages"}, headers=headers).json["id"]
    real_export = exports.export
    took_over: list = []

    def slow_export(*args, **kwargs):
        lines = real_export(*args, **kwargs)
        yield next(lines)
        if not took_over:  # the first run stalls here; its lease runs out and a second run does it all
            took_over.append(True)
            session.execute(text("UPDATE analytics_exports SET lease_until = now() - interval '1 second'"
                                 " WHERE id = :i"), {"i": export_id})
            took_over.append(export_jobs.run_export(export_id))
        yield from lines

    monkeypatch.setattr(exports, "export", slow_export)
    assert export_jobs.run_export(export_id) == "lost"
    assert took_over == [True, "ready"]
    row = _exported(session, export_id)
    assert row.status == "ready" and row.attempts == 2 and row.storage_key.endswith("-2.csv")
    assert media_storage().size(row.storage_key.replace("-2.csv", "-1.csv")) is None  # the late file thrown away
    r = client.get(f"/api/analytics/exports/{export_id}/download", headers=headers)
    assert len(_rows(r.data)) - 1 == row.rows


def test_an_export_whose_client_is_gone_fails_with_the_reason(client, session, data):
    headers = principal_headers(session, data, "admin")
    victim = f.make_client(session, organization_id=data.id)
    export_id = client.post("/api/analytics/exports", json={"client_id": victim.id}, headers=headers).json["id"]
    session.execute(text("DELETE FROM clients WHERE id = :c"), {"c": victim.id})
    assert export_jobs.run_export(export_id) == "failed"
    shown = client.get(f"/api/analytics/exports/{export_id}", headers=headers).json
    assert shown["status"] == "failed" and "not found" in shown["error"] and shown["download_url"] is None


def test_expired_exports_lose_their_file_and_deleted_ones_vanish(client, session, data):
    headers = principal_headers(session, data, "admin")
    old, gone = (client.post("/api/analytics/exports", json={}, headers=headers).json["id"] for _ in range(2))
    for export_id in (old, gone):
        export_jobs.run_export(export_id)
    key = _exported(session, old).storage_key
    assert media_storage().size(key) > 0
    # before both clocks: the database's (the test's transaction began earlier) and this process's
    session.execute(text("UPDATE analytics_exports SET expires_at = now() - interval '1 hour' WHERE id = :i"),
                    {"i": old})
    assert client.get(f"/api/analytics/exports/{old}/download", headers=headers).status_code == 404
    assert export_jobs.sweep()["expired"] == 1
    assert media_storage().size(key) is None
    shown = client.get(f"/api/analytics/exports/{old}", headers=headers).json
    assert shown["status"] == "expired" and shown["download_url"] is None

    gone_key = _exported(session, gone).storage_key
    assert client.delete(f"/api/analytics/exports/{gone}", headers=headers).status_code == 204
    assert media_storage().size(gone_key) is None
    assert client.get(f"/api/analytics/exports/{gone}", headers=headers).status_code == 404


@pytest.mark.workers
def test_a_worker_writes_the_export_and_the_link_downloads_it(committed, committed_client, committed_org,
                                                              committed_headers, run_pool):
    history_org, _ = history(committed)
    run_rollup(committed)
    committed.commit()
    headers = principal_headers(committed, history_org, "viewer")
    committed.commit()
    run_pool("default")
    r = committed_client.post("/api/analytics/exports", json={"what": "messages", "from": FROM, "to": TO},
                              headers=headers)
    assert r.status_code == 202, r.json
    export_id = r.json["id"]
    shown = wait_for(lambda: (b := committed_client.get(f"/api/analytics/exports/{export_id}", headers=headers).json)
                     ["status"] in ("ready", "failed") and b, timeout=60, message="the export written")
    assert shown["status"] == "ready", shown
    link = urlsplit(shown["download_url"])
    body = committed_client.get(f"{link.path}?{link.query}").data
    streamed = committed_client.get(f"/api/analytics/export?what=messages&from={FROM}&to={TO}", headers=headers).data
    assert body == streamed and len(_rows(body)) - 1 == shown["rows"] > 0
