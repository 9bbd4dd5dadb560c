"""Campaigns with real processes: two schedulers, the default and messages pools, the sim network.

What is checked is what the system recorded: each contact's messages, the campaign's progress and
events, the simulated network's counts (a message id that arrived twice is a duplicate).
"""
import os
import signal
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

import jobs  # noqa: F401
from app.db import utcnow
from app.models import Campaign, CampaignRecipient, Message, WebhookEvent
from tests import factories as f
from tests.procs import spawn, stop, wait_for

pytestmark = pytest.mark.workers
FAST = {"deliver_after_ms": 100, "read_after_ms": 200}
#: every process of these tests: ticks, sweeps and stalls in seconds, not minutes
ENV = {"CAMPAIGN_TICK_EVERY": "1", "CAMPAIGN_FANOUT_STALLED_AFTER": "2", "MESSAGE_SWEEP_EVERY": "1",
       "MESSAGE_SENDING_TIMEOUT": "2", "MESSAGE_LOST_AFTER": "2", "CAMPAIGN_FANOUT_CHUNK": "25"}


@pytest.fixture
def schedulers():
    procs = []

    def start(n: int = 1):
        for _ in range(n):
            procs.append(spawn(["-m", "workers", "scheduler"], **ENV))

    yield start
    for p in procs:
        stop(p)


def contacts(committed, org, n: int, **kw) -> list:
    out = [f.make_contact(committed, organization_id=org.id, phone=f"+1415557{i:04d}", name=f"C{i}", tags=["vip"],
                          **kw) for i in range(n)]
    committed.commit()
    return out


def sim_clients(committed, org, n: int, gap_ms=(30, 60)) -> list:
    out = [f.make_client(committed, organization_id=org.id, status="ready", phone=f"+1415558{i:04d}",
                         min_gap_ms=gap_ms[0], max_gap_ms=gap_ms[1], per_minute=10_000, per_hour=100_000,
                         per_day=1_000_000, config=dict(FAST)) for i in range(n)]
    committed.commit()
    return out


def campaign(client, headers, client_ids, **extra) -> str:
    r = client.post("/api/campaigns", headers=headers, json={
        "name": "Promo", "client_ids": client_ids, "message": "Hello from the campaign",
        "audience": {"tags": ["vip"]}, **extra})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"]


def state(committed, campaign_id: str) -> Campaign:
    committed.rollback()
    return committed.get(Campaign, campaign_id, populate_existing=True)


def per_contact(committed, campaign_id: str) -> dict[str, int]:
    committed.rollback()
    return dict(committed.execute(select(Message.contact_id, func.count()).where(Message.campaign_id == campaign_id)
                                  .group_by(Message.contact_id)).all())


def network(client, headers, client_id) -> dict:
    return client.get(f"/api/clients/{client_id}/sim/network", headers=headers).get_json()


def assert_each_contact_once(client, headers, committed, campaign_id, people, clients):
    counts = per_contact(committed, campaign_id)
    assert set(counts) == {p.id for p in people} and set(counts.values()) == {1}, counts
    nets = [network(client, headers, c.id) for c in clients]
    assert sum(n["duplicates"] for n in nets) == 0, nets
    assert sum(n["received"] for n in nets) == len(people), nets


def test_a_scheduled_campaign_starts_on_time_once_with_two_schedulers_and_completes(
        committed, committed_client, committed_org, committed_headers, run_pool, schedulers):
    people = contacts(committed, committed_org, 30)
    clients = sim_clients(committed, committed_org, 2)
    at = utcnow() + timedelta(seconds=4)
    cid = campaign(committed_client, committed_headers, [c.id for c in clients], scheduled_at=at.isoformat())
    r = committed_client.post(f"/api/campaigns/{cid}/start", headers=committed_headers)
    assert r.get_json()["status"] == "scheduled"
    run_pool("default", **ENV)
    run_pool("messages", **ENV)
    schedulers(2)
    wait_for(lambda: state(committed, cid).status == "completed", timeout=90, message="the campaign to complete")
    c = state(committed, cid)
    assert c.started_at >= at  # not before its time
    assert c.read_count == 30 and c.total_count == 30
    started = committed.scalar(select(func.count()).select_from(WebhookEvent).where(
        WebhookEvent.type == "campaign.started", WebhookEvent.payload["id"].astext == cid))
    assert started == 1
    assert_each_contact_once(committed_client, committed_headers, committed, cid, people, clients)
    got = committed_client.get(f"/api/campaigns/{cid}", headers=committed_headers).get_json()
    assert got["progress"]["read"] == 30 and got["progress"]["queued"] == 0


def test_pause_holds_everything_and_resume_goes_on_with_nobody_sent_twice_or_lost(
        committed, committed_client, committed_org, committed_headers, run_pool, schedulers):
    people = contacts(committed, committed_org, 60)
    f.make_contact(committed, organization_id=committed_org.id, phone="+14155579999", tags=["vip"], opted_out=True)
    committed.commit()
    clients = sim_clients(committed, committed_org, 1, gap_ms=(100, 150))
    cid = campaign(committed_client, committed_headers, [clients[0].id])
    run_pool("default", **ENV)
    run_pool("messages", **ENV)
    schedulers(1)
    assert committed_client.post(f"/api/campaigns/{cid}/start", headers=committed_headers).status_code == 200
    wait_for(lambda: state(committed, cid).sent_count + state(committed, cid).delivered_count
             + state(committed, cid).read_count >= 5, timeout=60, message="some sent")
    paused = committed_client.post(f"/api/campaigns/{cid}/pause", headers=committed_headers)
    assert paused.status_code == 200
    paused_at = state(committed, cid).paused_at

    def settled():  # the sends in flight at the pause have ended, and every queued one gave back its slot
        committed.rollback()
        return committed.scalar(select(func.count()).select_from(Message).where(
            Message.campaign_id == cid, (Message.status == "sending") | (
                (Message.status == "queued") & Message.scheduled_for.is_not(None)))) == 0

    wait_for(settled, timeout=30, message="the pause to hold every queued message")
    received = network(committed_client, committed_headers, clients[0].id)["received"]
    import time

    time.sleep(3)  # what a paused campaign must not do, given time to happen
    assert network(committed_client, committed_headers, clients[0].id)["received"] == received
    committed.rollback()
    late = committed.scalar(select(func.count()).select_from(Message).where(
        Message.campaign_id == cid, Message.sending_at > paused_at + timedelta(seconds=1)))
    assert late == 0
    assert 0 < received < 60  # the pause came mid-way
    assert committed_client.post(f"/api/campaigns/{cid}/resume", headers=committed_headers).status_code == 200
    wait_for(lambda: state(committed, cid).status == "completed", timeout=120, message="the campaign to complete")
    assert_each_contact_once(committed_client, committed_headers, committed, cid, people, clients)
    assert state(committed, cid).skipped_count == 1


def test_workers_killed_during_fan_out_lose_nobody_and_send_nobody_twice(
        committed, committed_client, committed_org, committed_headers, run_pool, schedulers, engine):
    people = contacts(committed, committed_org, 150)
    clients = sim_clients(committed, committed_org, 2, gap_ms=(20, 40))
    cid = campaign(committed_client, committed_headers, [c.id for c in clients])
    blocker = sorted(people, key=lambda p: p.id)[110]  # in the fifth chunk of 25
    # that contact's row locked: the fan-out's insert of its chunk (the foreign key's check) waits on it
    hold = engine.connect()
    try:  # a failure must not leave the lock behind (the next test's TRUNCATE would wait on it)
        hold.begin()
        hold.execute(text("SELECT 1 FROM contacts WHERE id = :id FOR UPDATE"), {"id": blocker.id})
        default = run_pool("default", **ENV)
        messages = run_pool("messages", **ENV)
        schedulers(1)
        assert committed_client.post(f"/api/campaigns/{cid}/start", headers=committed_headers).status_code == 200

        def blocked():
            committed.rollback()
            return committed.scalar(select(func.count()).select_from(CampaignRecipient)
                                    .where(CampaignRecipient.campaign_id == cid)) == 100

        wait_for(blocked, timeout=60, message="four chunks written, the fifth waiting")
        os.killpg(default.pid, signal.SIGKILL)
        os.killpg(messages.pid, signal.SIGKILL)
        default.wait(10)
        messages.wait(10)
    finally:
        hold.rollback()
        hold.close()
    assert state(committed, cid).fanout_done_at is None
    run_pool("default", **ENV)
    run_pool("messages", **ENV)
    wait_for(lambda: state(committed, cid).status == "completed", timeout=120, message="the campaign to complete")
    counts = per_contact(committed, cid)
    assert set(counts) == {p.id for p in people} and set(counts.values()) == {1}
    nets = [network(committed_client, committed_headers, c.id) for c in clients]
    assert sum(n["duplicates"] for n in nets) == 0, nets
    c = state(committed, cid)
    # a send cut off by the kill is never resent (its outcome is asked of the transport): at most one each
    left = c.sent_count + c.delivered_count + c.read_count + c.failed_count
    assert c.total_count == 150 and left == 150 and c.pending_count + c.queued_count == 0


def test_a_banned_clients_share_moves_to_the_other_client(committed, committed_client, committed_org,
                                                          committed_headers, run_pool, schedulers):
    people = contacts(committed, committed_org, 40)
    slow, fast = sim_clients(committed, committed_org, 1, gap_ms=(1500, 1500)) + \
        [f.make_client(committed, organization_id=committed_org.id, status="ready", phone="+14155589999",
                       min_gap_ms=20, max_gap_ms=40, per_minute=10_000, per_hour=100_000, per_day=1_000_000,
                       config=dict(FAST))]
    committed.commit()
    cid = campaign(committed_client, committed_headers, [slow.id, fast.id])
    run_pool("default", **ENV)
    run_pool("messages", **ENV)
    schedulers(1)
    assert committed_client.post(f"/api/campaigns/{cid}/start", headers=committed_headers).status_code == 200
    wait_for(lambda: state(committed, cid).fanout_done_at is not None, timeout=60, message="the fan-out")
    r = committed_client.post(f"/api/clients/{slow.id}/sim/fault", json={"type": "ban"}, headers=committed_headers)
    assert r.status_code == 202, r.get_json()
    wait_for(lambda: state(committed, cid).status == "completed", timeout=120, message="the campaign to complete")
    committed.rollback()
    by_client = dict(committed.execute(select(Message.client_id, func.count()).where(Message.campaign_id == cid)
                                       .group_by(Message.client_id)).all())
    assert by_client.get(slow.id, 0) < 20 < by_client[fast.id]  # its unsent share moved
    assert sum(by_client.values()) == 40
    c = state(committed, cid)
    assert c.sent_count + c.delivered_count + c.read_count + c.failed_count == 40
    assert set(per_contact(committed, cid).values()) == {1}
    assert people


def test_frequency_cap_and_send_window_hold_with_real_workers(committed, committed_client, committed_org,
                                                              committed_headers, run_pool, schedulers):
    from app.campaigns.windows import DAYS

    people = contacts(committed, committed_org, 5)
    (sender,) = sim_clients(committed, committed_org, 1)
    first = campaign(committed_client, committed_headers, [sender.id])
    run_pool("default", **ENV)
    run_pool("messages", **ENV)
    schedulers(1)
    assert committed_client.post(f"/api/campaigns/{first}/start", headers=committed_headers).status_code == 200
    wait_for(lambda: state(committed, first).status == "completed", timeout=60, message="the first campaign")
    newcomers = [f.make_contact(committed, organization_id=committed_org.id, phone=f"+1415559{i:04d}",
                                tags=["vip"], attributes={"timezone": "Asia/Tokyo"}) for i in range(3)]
    committed.commit()
    # a cap of one campaign message a day, and a window open only on the weekday three days ahead
    day = (utcnow() + timedelta(days=3)).date()
    second = campaign(committed_client, committed_headers, [sender.id], frequency_cap={"max": 1, "hours": 24},
                      send_window={"start": "10:00", "end": "11:00", "days": [DAYS[day.weekday()]]})
    assert committed_client.post(f"/api/campaigns/{second}/start", headers=committed_headers).status_code == 200
    wait_for(lambda: state(committed, second).fanout_done_at is not None, timeout=60, message="the fan-out")
    c = state(committed, second)
    assert (c.total_count, c.skipped_count, c.pending_count + c.queued_count) == (8, 5, 3)
    committed.rollback()
    reasons = dict(committed.execute(select(CampaignRecipient.contact_id, CampaignRecipient.reason)
                                     .where(CampaignRecipient.campaign_id == second)).all())
    assert {reasons[p.id] for p in people} == {"frequency_cap"}
    waiting = committed.scalars(select(Message).where(Message.campaign_id == second)).all()
    assert sorted(m.contact_id for m in waiting) == sorted(n.id for n in newcomers)
    assert all(m.status == "queued" and m.scheduled_at > utcnow() + timedelta(days=1) for m in waiting)
    import time

    time.sleep(3)  # what a closed window must not let through, given time to happen
    assert network(committed_client, committed_headers, sender.id)["received"] == 5  # the first campaign's only
    committed.rollback()
    assert {m.status for m in committed.scalars(select(Message).where(Message.campaign_id == second))} == {"queued"}
