"""Session hosts: leases on web clients (one host at a time, takeover after a host dies), routing
of session jobs to the owning host, and `workers status` — first at service level, then with real
``sessions`` pool processes driving real Chromium against the fixture WhatsApp Web."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from sqlalchemy import select, text

from app.clients.leases import claim_lease, host_queue, lease_owner, orphaned_clients, release_lease, renew_leases
from app.clients.models import Client, ClientSession, ClientStatusHistory
from app.db import utcnow
from app.kv import redis_client
from app.transports.web_browser import BrowserRuntime
from tests import factories as f
from tests.auth_helpers import api_key_headers
from tests.fixtures.wa_web.sink import RecordingSink
from tests.procs import ROOT, wait_for
from workers.session_host import SessionHost

#: Chromium is heavy: the browser tests run one at a time, on one xdist worker
pytestmark = pytest.mark.xdist_group("browser")

PHONE = "+15550300400"


def _expire(session, client_id: str) -> None:
    session.execute(text("UPDATE client_sessions SET lease_expires_at = now() - interval '1 second' "
                         "WHERE client_id = :c"), {"c": client_id})


def _queue_length(queue: str) -> int:
    return redis_client().llen(f"dramatiq:{queue}")


# ----------------------------------------------------------------------------- leases (service level)


def test_one_host_holds_a_lease_at_a_time(session):
    client = f.make_client(session, transport="web", status="starting")
    first = claim_lease(session, client.id, client.organization_id, "host-a")
    assert first is not None and first.previous_host is None
    assert claim_lease(session, client.id, client.organization_id, "host-b") is None
    assert lease_owner(session, client.id) == "host-a"
    assert host_queue(session, client.id) == "sessions.host-a"
    assert claim_lease(session, client.id, client.organization_id, "host-a") is not None, "re-claiming our own lease"

    assert renew_leases(session, "host-b", [client.id]) == set(), "a host cannot renew another's lease"
    assert renew_leases(session, "host-a", [client.id]) == {client.id}

    _expire(session, client.id)  # host-a died: its lease ran out
    assert lease_owner(session, client.id) is None and host_queue(session, client.id) is None
    taken = claim_lease(session, client.id, client.organization_id, "host-b")
    assert taken is not None and taken.previous_host == "host-a"
    assert renew_leases(session, "host-a", [client.id]) == set(), "the old host learns it lost the lease"
    assert release_lease(session, client.id, "host-a") is False
    assert release_lease(session, client.id, "host-b") is True
    assert lease_owner(session, client.id) is None


def test_by_default_a_dead_hosts_lease_runs_out_within_30_seconds(session):
    """Issue 4: a host that dies loses its leases within 30 s; a live one renews well before."""
    from config import Settings

    defaults = Settings.from_env({})
    assert 0 < defaults.SESSION_LEASE_TTL <= 30
    assert 0 < defaults.SESSION_HEARTBEAT_INTERVAL * 2 <= defaults.SESSION_LEASE_TTL, "two renewals per lease"
    client = f.make_client(session, transport="web", status="starting")
    claim_lease(session, client.id, client.organization_id, "host-a")  # this suite runs with the defaults
    lasts = session.scalar(text("SELECT extract(epoch FROM lease_expires_at - heartbeat_at) FROM client_sessions "
                                "WHERE client_id = :c"), {"c": client.id})
    assert 0 < float(lasts) <= 30


def test_the_claim_returns_the_saved_login(session):
    row = f.make_client_session(session, state_encrypted="sealed-state")
    claim = claim_lease(session, row.client_id, row.organization_id, "host-a")
    assert claim.state_encrypted == "sealed-state"


def test_orphans_are_web_clients_that_should_run_without_a_live_lease(session):
    org = f.make_organization(session)
    dead = f.make_client(session, organization_id=org.id, transport="web", status="ready")
    claim_lease(session, dead.id, org.id, "host-gone")
    _expire(session, dead.id)
    live = f.make_client(session, organization_id=org.id, transport="web", status="ready")
    claim_lease(session, live.id, org.id, "host-here")
    stopped = f.make_client(session, organization_id=org.id, transport="web", status="stopped")
    claim_lease(session, stopped.id, org.id, "host-gone")
    _expire(session, stopped.id)
    fresh = f.make_client(session, organization_id=org.id, transport="web", status="starting")  # its start is queued
    deleted = f.make_client(session, organization_id=org.id, transport="web", status="ready", deleted_at=utcnow())
    sim = f.make_client(session, organization_id=org.id, transport="sim", status="ready")
    session.flush()

    found = orphaned_clients(session)
    assert dead.id in found
    assert not {live.id, stopped.id, fresh.id, deleted.id, sim.id} & set(found)
    session.execute(text("UPDATE clients SET status_changed_at = now() - interval '1 hour' WHERE id = :c"),
                    {"c": fresh.id})
    assert fresh.id in orphaned_clients(session), "a start nobody picked up is adopted after the grace period"


# ----------------------------------------------------------------------------- routing (service level)


@pytest.fixture
def web_client(committed):
    client = f.make_client(committed, transport="web", status="ready")
    committed.commit()
    return client


def test_start_is_forwarded_to_the_live_owner(committed, web_client):
    claim_lease(committed, web_client.id, web_client.organization_id, "host-owner")
    committed.commit()
    host = SessionHost("host-other")
    assert host.start_session(web_client.id) == "forwarded"
    assert _queue_length("sessions.host-owner") == 1
    assert host.sessions == {}


def test_start_skips_clients_that_should_not_run(committed, web_client):
    host = SessionHost("host-x")
    stopped = f.make_client(committed, transport="web", status="stopped")
    committed.commit()
    assert host.start_session(stopped.id) == "skipped"
    assert host.start_session("cli_missing") == "skipped"
    committed.rollback()
    assert committed.get(ClientSession, stopped.id) is None, "no lease was taken"


def test_stop_of_a_client_started_again_since_is_skipped(committed, web_client):
    """The client is ready again (started since the stop was asked): its lease is left alone."""
    claim_lease(committed, web_client.id, web_client.organization_id, "host-x")
    committed.commit()
    assert SessionHost("host-x").stop_session(web_client.id) == "skipped"
    committed.rollback()
    assert lease_owner(committed, web_client.id) == "host-x"
    assert committed.get(Client, web_client.id).status == "ready"


def test_stop_and_logout_go_to_the_live_owner(committed, web_client):
    committed.execute(text("UPDATE clients SET status = 'stopped' WHERE id = :c"), {"c": web_client.id})
    claim_lease(committed, web_client.id, web_client.organization_id, "host-owner")
    committed.commit()
    host = SessionHost("host-other")
    assert host.stop_session(web_client.id) == "forwarded"
    assert host.logout_session(web_client.id) == "forwarded"
    assert _queue_length("sessions.host-owner") == 2


def test_logout_without_any_session_forgets_the_saved_login(committed, web_client):
    committed.execute(text("UPDATE clients SET status = 'stopped' WHERE id = :c"), {"c": web_client.id})
    f.make_client_session(committed, client_id=web_client.id, organization_id=web_client.organization_id,
                          state_encrypted=None)
    committed.commit()
    assert SessionHost("host-x").logout_session(web_client.id) == "logged_out"
    committed.rollback()
    row = committed.get(ClientSession, web_client.id)
    assert row.state_encrypted is None and row.host_id is None


def test_a_send_for_a_session_not_here_goes_back_to_the_pipeline(committed, web_client):
    message = f.make_message(committed, client_id=web_client.id, organization_id=web_client.organization_id)
    claim_lease(committed, web_client.id, web_client.organization_id, "host-x")  # a lease but no session
    committed.commit()
    host = SessionHost("host-x")
    assert host.send(message.id) == "rerouted"
    assert _queue_length("messages") == 1
    committed.rollback()
    assert lease_owner(committed, web_client.id) is None, "released, so messages.send does not route it back"
    assert host.send("msg_missing") == "missing"


def test_live_hosts_restart_orphaned_sessions_once(committed, web_client):
    claim_lease(committed, web_client.id, web_client.organization_id, "host-dead")
    _expire(committed, web_client.id)
    committed.commit()
    host = SessionHost("host-alive")
    assert host.adopt_orphans() == [web_client.id]
    assert _queue_length("sessions") == 1
    assert SessionHost("host-also-alive").adopt_orphans() == [], "one sessions.start per orphan and lease period"


# ----------------------------------------------------------------------------- a host in this process


@pytest.fixture
def in_process_host(committed, wa_web):
    """A session host in this process (its own Chromium) reporting to a recording sink."""
    sink = RecordingSink()
    host = SessionHost("host-here", runtime=BrowserRuntime(), sink=sink)
    yield host, sink
    host.shutdown()


def _run_session(committed, wa_web, host, sink) -> Client:
    client = f.make_client(committed, transport="web", status="starting")
    committed.commit()
    assert host.start_session(client.id) == "started"
    sink.wait(lambda: sink.qrs(), 60, "a QR code")
    wa_web.scan(sink.qrs()[-1], PHONE)
    sink.wait_status("ready", 60)
    committed.rollback()
    assert lease_owner(committed, client.id) == host.host_id
    return client


def test_a_host_runs_a_session_and_hands_it_over_at_shutdown(committed, wa_web, in_process_host):
    host, sink = in_process_host
    client = _run_session(committed, wa_web, host, sink)
    assert host.start_session(client.id) == "running"
    sink.wait(lambda: sink.statuses().count("ready") == 2, 20, "the status reported again")
    saved = len(sink.states())
    host.shutdown()
    assert len(sink.states()) > saved, "the login is saved at shutdown"
    committed.rollback()
    assert committed.get(ClientSession, client.id).host_id is None, "the lease is released for another host"
    assert host.sessions == {}


def test_a_host_that_lost_the_lease_closes_its_session(committed, wa_web, in_process_host):
    host, sink = in_process_host
    client = _run_session(committed, wa_web, host, sink)
    transport = host.sessions[client.id]
    # meanwhile another host took the client over (this one could not renew in time)
    committed.execute(text("UPDATE client_sessions SET host_id = 'host-else', lease_expires_at = now() + "
                           "interval '30 seconds' WHERE client_id = :c"), {"c": client.id})
    committed.commit()
    host.renew()
    assert host.sessions == {} and transport.state == "closed"
    assert "disconnected" not in sink.statuses(), "nothing is reported: the session lives on elsewhere"
    committed.rollback()
    assert lease_owner(committed, client.id) == "host-else"


# ----------------------------------------------------------------------------- real session hosts


def _hosts() -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "workers", "status", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["session_hosts"]


def _client(committed, client_id: str) -> Client:
    committed.rollback()
    return committed.get(Client, client_id)


def _message(client, headers, message_id: str) -> dict:
    return client.get(f"/api/messages/{message_id}", headers=headers).get_json()


@pytest.mark.workers
def test_two_hosts_one_lease_sends_through_the_owner_and_takeover_after_it_dies(
        committed, committed_client, run_pool, wa_web):
    org = f.make_organization(committed)
    committed.commit()
    headers = api_key_headers(committed, org, "admin")
    committed.commit()
    api = committed_client
    created = api.post("/api/clients", json={"name": "Web", "transport": "web",
                                             "limits": {"min_gap_ms": 100, "max_gap_ms": 200}}, headers=headers)
    assert created.status_code == 201, created.get_json()
    cid = created.get_json()["id"]
    early = api.post(f"/api/clients/{cid}/send-message", json={"to": "+15550777001", "message": "queued early"},
                     headers=headers)
    assert early.status_code == 202, early.get_json()
    early_id = early.get_json()["id"]

    fast = {"WEB_URL": wa_web.url, "SESSION_LEASE_TTL": "3", "SESSION_HEARTBEAT_INTERVAL": "1"}
    run_pool("default")
    run_pool("messages")
    hosts = [run_pool("sessions", **fast), run_pool("sessions", **fast)]
    wait_for(lambda: len(_hosts()) == 2, timeout=30, message="two live session hosts")

    assert api.post(f"/api/clients/{cid}/start", headers=headers).status_code == 202
    wait_for(lambda: _client(committed, cid).status == "qr", timeout=120, message="the QR code")
    qr = api.get(f"/api/clients/{cid}/qr", headers=headers).get_json()["qr"]
    wa_web.scan(qr, PHONE)
    wait_for(lambda: _client(committed, cid).status == "ready", timeout=120, message="the client to be ready")
    assert _client(committed, cid).phone == PHONE

    # exactly one host leases the client, and the other knows it
    committed.rollback()
    owner = lease_owner(committed, cid)
    live = {h["host_id"]: h for h in _hosts()}
    assert owner in live and len(live) == 2
    survivor = next(h for h in live if h != owner)
    assert [s["client_id"] for s in live[owner]["sessions"]] == [cid]
    assert live[survivor]["sessions"] == []
    assert live[owner]["rss_mb"] > live[survivor]["rss_mb"] > 0, "the owner runs Chromium"

    # the message accepted before the start was sent through the owner's session, typed
    wait_for(lambda: _message(api, headers, early_id)["status"] == "sent", timeout=120,
             message="the early message sent")
    sent = wa_web.wait_sent(PHONE, 1)
    assert [m.text for m in sent] == ["queued early"] and len(sent[0].typing) == len("queued early")
    assert _message(api, headers, early_id)["attempts"] == 1
    wa_web.ack(sent[0].id, "delivered")
    wait_for(lambda: _message(api, headers, early_id)["status"] == "delivered", timeout=60, message="the ack")
    wait_for(lambda: (committed.rollback() or committed.get(ClientSession, cid).state_encrypted) is not None,
             timeout=30, message="the login state saved (encrypted)")
    devices = wa_web.linked_devices(PHONE)

    # the owner dies without a goodbye: the survivor takes the session over from the saved login
    owner_pid = live[owner]["pid"]
    victim = next(p for p in hosts if owner_pid in [c.pid for c in psutil.Process(p.pid).children(recursive=True)])
    history_before = committed.scalar(select(ClientStatusHistory.id).where(ClientStatusHistory.client_id == cid)
                                      .order_by(ClientStatusHistory.id.desc()).limit(1))
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(10)
    wait_for(lambda: (committed.rollback() or lease_owner(committed, cid)) == survivor, timeout=30,
             message="the survivor to hold the lease")
    wait_for(lambda: any(s["client_id"] == cid and s["state"] == "ready"
                         for h in _hosts() if h["host_id"] == survivor for s in h["sessions"]),
             timeout=120, message="the session ready again on the survivor")
    committed.rollback()
    later = committed.scalars(select(ClientStatusHistory.status).where(
        ClientStatusHistory.client_id == cid, ClientStatusHistory.id > history_before)).all()
    assert "qr" not in later, "no new QR code was needed"
    assert _client(committed, cid).status == "ready"
    assert wa_web.linked_devices(PHONE) == devices

    # sends now go through the survivor
    r = api.post(f"/api/clients/{cid}/send-message", json={"to": "+15550777002", "message": "after takeover"},
                 headers=headers)
    assert r.status_code == 202
    wait_for(lambda: _message(api, headers, r.get_json()["id"])["status"] == "sent", timeout=120,
             message="the send through the new owner")
    assert wa_web.wait_sent(PHONE, 2)[-1].text == "after takeover"
    def survivor_alone() -> str | None:
        """`workers status`, once it lists one host: the dead one is listed until its heartbeat
        expires (WORKER_HEARTBEAT_TTL after its last beat)."""
        out = subprocess.run([sys.executable, "-m", "workers", "status"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120, env=dict(os.environ)).stdout
        return out if "session hosts: 1" in out else None

    shown = wait_for(survivor_alone, timeout=30, interval=1, message="`workers status` to list the survivor alone")
    assert survivor in shown and cid in shown and "MB RSS" in shown

    # stop: the owner closes the session and gives up the lease
    assert api.post(f"/api/clients/{cid}/stop", headers=headers).status_code == 202
    wait_for(lambda: (committed.rollback() or committed.get(ClientSession, cid).host_id) is None, timeout=30,
             message="the lease released")
    wait_for(lambda: all(h["sessions"] == [] for h in _hosts()), timeout=30, message="no session left")



def test_jobs_left_in_a_dead_hosts_queue_move_to_the_shared_queue(redis_conn):
    """A stop forwarded to a host that then died, and a send it had delayed, are not stranded: the
    periodic reaper hands them to the shared ``sessions`` queue (delay kept); a live host's queue
    and every dead letter stay where they are."""
    import time

    import dramatiq

    import jobs  # noqa: F401  (declares the queues and the periodic jobs)
    from app.clients.leases import HEARTBEAT_KIND, reap_dead_host_queues
    from app.system.heartbeats import heartbeat_key
    from jobs.periodic import PERIODIC

    broker = dramatiq.get_broker()
    live, dead = "hostlive-1-aaaa", "hostgone-2-bbbb"
    redis_conn.set(heartbeat_key(HEARTBEAT_KIND, live), json.dumps(
        {"kind": HEARTBEAT_KIND, "name": live, "host_id": live, "queue": f"sessions.{live}"}), ex=120)
    for host in (live, dead):
        broker.declare_queue(f"sessions.{host}")

    def job(queue, actor, arg, delay=None):
        return broker.enqueue(dramatiq.Message(queue_name=queue, actor_name=actor, args=(arg,), kwargs={},
                                               options={}), delay=delay)

    job(f"sessions.{dead}", "sessions.stop", "cli_stop")
    due = job(f"sessions.{dead}", "sessions.send", "msg_later", delay=60_000).options["eta"]
    job(f"sessions.{live}", "sessions.send", "msg_live")
    redis_conn.zadd(f"dramatiq:sessions.{dead}.XQ", {"dead-letter": time.time() * 1000})
    redis_conn.hset(f"dramatiq:sessions.{dead}.XQ.msgs", "dead-letter", b"{}")

    began = time.time()
    assert reap_dead_host_queues(redis_conn) == 2
    took_ms = (time.time() - began) * 1000
    assert reap_dead_host_queues(redis_conn) == 0, "nothing is moved twice"
    for key in (f"dramatiq:sessions.{dead}", f"dramatiq:sessions.{dead}.msgs",
                f"dramatiq:sessions.{dead}.DQ", f"dramatiq:sessions.{dead}.DQ.msgs"):
        assert not redis_conn.exists(key), key
    ready = [dramatiq.Message.decode(raw) for raw in redis_conn.hvals("dramatiq:sessions.msgs")]
    assert [(m.queue_name, m.actor_name, m.args) for m in ready] == [("sessions", "sessions.stop", ("cli_stop",))]
    (later,) = [dramatiq.Message.decode(raw) for raw in redis_conn.hvals("dramatiq:sessions.DQ.msgs")]
    assert (later.actor_name, later.args) == ("sessions.send", ("msg_later",))
    # its time is kept: re-enqueued with the delay left, computed during the move (ms rounding aside)
    assert due - 2 <= later.options["eta"] <= due + took_ms + 2, "its delay is kept"
    assert redis_conn.llen(f"dramatiq:sessions.{live}") == 1, "a live host's queue is its own"
    assert redis_conn.zcard(f"dramatiq:sessions.{dead}.XQ") == 1, "dead letters are for `workers dlq`"
    assert ("sessions.reap_dead_host_queues", 30) in [(p.actor_name, p.every_s) for p in PERIODIC]
