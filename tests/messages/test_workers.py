"""The message pipeline end to end: real worker processes, real Redis and Postgres, the sim transport.

Limits are shortened (a few hundred milliseconds of gap, 3 per minute) instead of waiting minutes;
what is checked comes from what the system recorded (sending_at, scheduled_for, the sim network).
"""
import os
import signal
from datetime import timedelta

import dramatiq
import pytest
from sqlalchemy import func, select, text

import jobs  # noqa: F401
from app.messages import pacing, sweeper
from app.models import Contact, Message, MessageStatusHistory, WebhookEvent
from config import settings
from tests import factories as f
from tests.procs import wait_for

pytestmark = pytest.mark.workers
TO = "+14155550123"
FAST_ACKS = {"deliver_after_ms": 150, "read_after_ms": 400}


def rows(committed, *where):
    committed.rollback()  # a fresh snapshot
    return committed.scalars(select(Message).where(*where).order_by(Message.id)).all()


def statuses(committed, client_id) -> dict:
    committed.rollback()
    return dict(committed.execute(select(Message.status, func.count()).where(Message.client_id == client_id)
                                  .group_by(Message.status)).all())


def sim_client(client, headers, name: str, gap_ms: tuple[int, int]) -> str:
    """A sim client created through the API, its phone scanning after 300 ms and acks fast; its id."""
    created = client.post("/api/clients", json={"name": name, "transport": "sim",
                                                "config": {"scan_after_ms": 300, **FAST_ACKS},
                                                "limits": {"min_gap_ms": gap_ms[0], "max_gap_ms": gap_ms[1]}},
                          headers=headers)
    assert created.status_code == 201, created.get_json()
    return created.get_json()["id"]


def network(client, headers, client_id) -> dict:
    r = client.get(f"/api/clients/{client_id}/sim/network", headers=headers)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_send_is_delivered_and_read_and_a_duplicated_job_sends_once(committed, committed_client, committed_headers,
                                                                    run_pool):
    client = committed_client
    cli = sim_client(client, committed_headers, "Sales", (100, 200))
    # accepted while the client is not connected: it waits, queued
    early = client.post(f"/api/clients/{cli}/send-message", json={"to": TO, "message": "before start"},
                        headers=committed_headers)
    assert early.status_code == 202
    run_pool("default")
    run_pool("messages")
    assert client.post(f"/api/clients/{cli}/start", headers=committed_headers).status_code == 202
    wait_for(lambda: client.get(f"/api/messages/{early.get_json()['id']}",
                                headers=committed_headers).get_json()["status"] == "read",
             timeout=40, message="the early message to be read once the client is ready")

    r = client.post(f"/api/clients/{cli}/send-message", json={"to": "+14155550124", "message": "hello"},
                    headers=committed_headers)
    assert r.status_code == 202
    mid = r.get_json()["messageId"]
    send = dramatiq.get_broker().get_actor("messages.send")
    for _ in range(3):  # the same job delivered three more times
        send.send(mid)
    wait_for(lambda: client.get(f"/api/messages/{mid}", headers=committed_headers).get_json()["status"] == "read",
             timeout=30, message="delivered and read")
    msg = client.get(f"/api/messages/{mid}", headers=committed_headers).get_json()
    assert msg["sending_at"] <= msg["sent_at"] <= msg["delivered_at"] <= msg["read_at"]
    assert msg["attempts"] == 1 and msg["error"] is None and msg["from"] is not None
    committed.rollback()
    history = committed.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == mid)
                                .order_by(MessageStatusHistory.id)).all()
    assert history == ["queued", "sending", "sent", "delivered", "read"]
    types = set(committed.scalars(select(WebhookEvent.type).where(text("payload->>'id' = :id")), {"id": mid}))
    assert types == {"message.queued", "message.sent", "message.delivered", "message.read"}
    net = network(client, committed_headers, cli)
    assert (net["received"], net["distinct"], net["duplicates"]) == (2, 2, 0)


def test_pacing_keeps_gaps_and_windows_uses_the_rate_and_spares_other_clients(committed, committed_client,
                                                                              committed_org, committed_headers, run_pool):
    client = committed_client
    busy = f.make_client(committed, organization_id=committed_org.id, status="ready", config=dict(FAST_ACKS),
                         per_minute=3, per_hour=50, per_day=100, min_gap_ms=200, max_gap_ms=300)
    other = f.make_client(committed, organization_id=committed_org.id, status="ready", config=dict(FAST_ACKS),
                          per_minute=3, min_gap_ms=200, max_gap_ms=300)
    committed.commit()
    run_pool("messages")
    batch = client.post("/api/messages/batch", json={"client_id": busy.id, "messages": [
        {"to": f"+1415555{2000 + i:04d}", "text": f"m{i}"} for i in range(6)]}, headers=committed_headers)
    assert batch.status_code == 202
    accepted = batch.get_json()["messages"]
    ids = [m["id"] for m in accepted]
    lone = client.post(f"/api/clients/{other.id}/send-message", json={"to": TO, "message": "me too"},
                       headers=committed_headers)
    lone_id = lone.get_json()["id"]

    # the plan uses the allowed rate fully: three back to back, the 4th exactly when the first
    # leaves the minute window (slots are spaced by the gap + PACING_SLACK_MS)
    from datetime import datetime

    plan = [datetime.fromisoformat(m["scheduled_for"]) for m in accepted]
    pad = timedelta(milliseconds=settings.PACING_SLACK_MS)
    step = max(timedelta(milliseconds=300), timedelta(milliseconds=200) + pad)
    assert plan[1] - plan[0] <= step and plan[2] - plan[1] <= step
    assert plan[3] == plan[0] + timedelta(minutes=1) + pad

    wait_for(lambda: statuses(committed, busy.id).get("queued", 0) == 3
             and len([m for m in rows(committed, Message.id.in_(ids)) if m.sent_at]) == 3,
             timeout=30, message="the first three sends of the busy client")
    wait_for(lambda: rows(committed, Message.id == lone_id)[0].sent_at is not None, timeout=20,
             message="the other client's send")
    msgs = rows(committed, Message.id.in_(ids))
    sent = [m for m in msgs if m.sending_at is not None]
    waiting = [m for m in msgs if m.status == "queued"]
    assert len(sent) == 3 and len(waiting) == 3
    # the gaps held, measured at the moments the transport was called
    sending = sorted(m.sending_at for m in sent)
    assert all(b - a >= timedelta(milliseconds=200) for a, b in zip(sending, sending[1:])), sending
    # the window held: the others wait for the next minute
    assert all(m.scheduled_for >= m.queued_at + timedelta(minutes=1) for m in waiting)
    # the other client's message did not wait behind the backlog: planned within its own first
    # minute, not after the busy client's, and sent before the busy client's next slot
    lone_row = rows(committed, Message.id == lone_id)[0]
    assert lone_row.scheduled_for < lone_row.queued_at + timedelta(minutes=1)
    assert lone_row.sent_at < min(m.scheduled_for for m in waiting)
    # nothing waits in a worker thread: the three are delayed or parked in Redis
    from app.kv import redis_client

    assert redis_client().llen("dramatiq:messages") == 0

    # a cancel before the slot: never sent, its reservation given back
    for m in waiting:
        r = client.post(f"/api/messages/{m.id}/cancel", headers=committed_headers)
        assert r.status_code == 200 and r.get_json()["status"] == "cancelled"
    assert pacing.reservations(busy.id) == []
    assert len(pacing.grants(busy.id)) == 3
    net = network(client, committed_headers, busy.id)
    assert (net["received"], net["duplicates"]) == (3, 0)


def test_a_killed_worker_sends_nothing_twice_and_leaves_nothing_in_sending(committed, committed_client, committed_org,
                                                                           committed_headers, run_pool):
    client = committed_client
    cli = f.make_client(committed, organization_id=committed_org.id, status="ready",
                        config={"pacing": False, **FAST_ACKS})
    committed.commit()
    total = 400
    r = client.post("/api/messages/batch", json={"client_id": cli.id, "messages": [
        {"to": f"+1415555{3000 + i:04d}", "text": f"n{i}"} for i in range(total)]}, headers=committed_headers)
    assert r.status_code == 202
    # The client is not paced: one job sends its messages in batches of MESSAGE_SEND_BATCH. The
    # contact of a message in the second batch is locked, so that batch's transport calls are made
    # and its recording waits: the pool is killed mid-batch, with sends that went out unrecorded.
    batch = settings.MESSAGE_SEND_BATCH
    assert total > 2 * batch
    held = r.get_json()["messages"][batch + batch // 2]["id"]
    lock = committed.get_bind().connect()
    try:  # a failure must not leave the lock behind (the next test's TRUNCATE would wait on it)
        lock.begin()
        lock.execute(text("SELECT 1 FROM contacts WHERE id = (SELECT contact_id FROM messages WHERE id = :id) "
                          "FOR UPDATE"), {"id": held})
        worker = run_pool("messages", threads=8)
        wait_for(lambda: statuses(committed, cli.id) == {"sent": batch, "sending": batch, "queued": total - 2 * batch}
                 and network(client, committed_headers, cli.id)["received"] == 2 * batch, timeout=30,
                 message="the second batch claimed, its recording waiting")
        os.killpg(worker.pid, signal.SIGKILL)  # the whole pool, mid-batch
        worker.wait(10)
    finally:
        lock.rollback()
        lock.close()
    before = statuses(committed, cli.id)
    assert before == {"sent": batch, "sending": batch, "queued": total - 2 * batch}, before
    assert network(client, committed_headers, cli.id)["received"] == 2 * batch  # out, not recorded

    # the sweeper: interrupted sends are failed (never resent), lost jobs re-enqueued. A row the dead
    # worker still held locked is skipped until Postgres has ended that session: a later run gets it
    # (the extra jobs of the repeated runs are duplicates, which must not send twice either). A later run
    # re-enqueues nothing already waiting in the queue, so the re-enqueued jobs are counted over all runs.
    requeued = 0

    def swept():
        nonlocal requeued
        result = sweeper.sweep(committed, sending_timeout_s=0, lost_after_s=0)
        committed.commit()
        requeued += result["requeued"]
        now = statuses(committed, cli.id)
        return "sending" not in now and requeued >= now.get("queued", 0)

    wait_for(swept, timeout=30, interval=0.5, message="the sweeper to resolve every interrupted send")
    run_pool("messages", threads=8)
    wait_for(lambda: not ({"queued", "sending"} & set(statuses(committed, cli.id))), timeout=60,
             message="every message sent or failed")
    after = statuses(committed, cli.id)
    interrupted = committed.scalars(select(Message.id).where(
        Message.client_id == cli.id, Message.error_code == "interrupted", Message.status == "unknown")).all()
    assert len(interrupted) == batch and after == {"sent": total - batch, "unknown": batch}, after
    # asked (messages.reconcile, run here), the transport knows each interrupted send went out
    went_out = {"sent", "delivered", "read"}
    assert {sweeper.reconcile(message_id) for message_id in interrupted} <= went_out
    final = statuses(committed, cli.id)
    assert set(final) <= went_out and sum(final.values()) == total, final
    net = network(client, committed_headers, cli.id)
    assert net["duplicates"] == 0 and net["received"] == total, net


def test_batched_jobs_side_by_side_share_a_backlog_and_send_each_message_once(committed, committed_client,
                                                                             committed_org, committed_headers,
                                                                             run_pool):
    """An unpaced client's intakes each bring a ``messages.send_due`` job; in two processes of 8
    threads they run side by side on the same backlog, in batches smaller than it."""
    client = committed_client
    cli = f.make_client(committed, organization_id=committed_org.id, status="ready",
                        config={"pacing": False, **FAST_ACKS})
    committed.commit()
    env = {"MESSAGE_SEND_BATCH": "7"}
    run_pool("messages", threads=8, **env)
    run_pool("messages", threads=8, **env)
    ids = []
    for n in range(4):
        r = client.post("/api/messages/batch", json={"client_id": cli.id, "messages": [
            {"to": f"+1415556{n}{i:03d}", "text": f"b{n}-{i}"} for i in range(60)]}, headers=committed_headers)
        assert r.status_code == 202
        ids += [m["id"] for m in r.get_json()["messages"]]
        for i in range(5):
            r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": f"+1415557{n}{i:03d}", "message": "x"},
                            headers=committed_headers)
            ids.append(r.get_json()["id"])
    wait_for(lambda: statuses(committed, cli.id).get("sent", 0) == len(ids), timeout=60, message="every send")
    net = network(client, committed_headers, cli.id)
    assert net["duplicates"] == 0 and net["received"] == len(ids) == 260, net
    assert committed.scalar(select(func.count()).select_from(MessageStatusHistory).where(
        MessageStatusHistory.message_id.in_(ids), MessageStatusHistory.status == "sending")) == len(ids)


def test_opt_out_and_back_in_over_sim(committed, committed_client, committed_org, committed_headers, run_pool):
    client = committed_client
    cli = f.make_client(committed, organization_id=committed_org.id, status="ready", phone="+14155550100",
                        config={"pacing": False, **FAST_ACKS})
    committed.commit()
    run_pool("default")
    run_pool("messages")
    assert client.post(f"/api/clients/{cli.id}/sim/inbound", json={"from": TO, "text": "STOP"},
                       headers=committed_headers).status_code == 202

    def contact():
        committed.rollback()
        return committed.scalars(select(Contact).where(Contact.organization_id == committed_org.id,
                                                       Contact.phone == TO)).first()

    wait_for(lambda: contact() is not None and contact().opted_out, timeout=20, message="the opt-out")
    wait_for(lambda: [m.status for m in rows(committed, Message.client_id == cli.id, Message.direction == "outbound")]
             in (["sent"], ["delivered"], ["read"]), timeout=20, message="one confirmation sent")
    confirmation = rows(committed, Message.client_id == cli.id, Message.direction == "outbound")[0]
    assert confirmation.text == settings.OPT_OUT_CONFIRMATION and confirmation.to_phone == TO
    committed.rollback()
    assert committed.scalar(select(func.count()).select_from(WebhookEvent).where(
        WebhookEvent.type == "contact.opted_out")) == 1
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "offer"},
                    headers=committed_headers)
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "contact_opted_out"

    client.post(f"/api/clients/{cli.id}/sim/inbound", json={"from": TO, "text": "start"}, headers=committed_headers)
    wait_for(lambda: not contact().opted_out, timeout=20, message="the opt-in")
    r = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "welcome back"},
                    headers=committed_headers)
    assert r.status_code == 202
    wait_for(lambda: client.get(f"/api/messages/{r.get_json()['id']}", headers=committed_headers).get_json()["sent_at"],
             timeout=20, message="the send after opting back in")
    assert len(rows(committed, Message.client_id == cli.id, Message.direction == "outbound")) == 2


def test_transient_faults_retry_and_permanent_ones_fail_with_the_transports_code(committed, committed_client,
                                                                                 committed_org,
                                                                                 committed_headers, run_pool):
    client = committed_client
    cli = f.make_client(committed, organization_id=committed_org.id, status="ready",
                        config={"pacing": False, **FAST_ACKS})
    committed.commit()
    run_pool("messages")
    client.post(f"/api/clients/{cli.id}/sim/fault", json={"type": "fail_next", "count": 1}, headers=committed_headers)
    first = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "a"},
                        headers=committed_headers)
    wait_for(lambda: client.get(f"/api/messages/{first.get_json()['id']}",
                                headers=committed_headers).get_json()["sent_at"],
             timeout=30, message="the retried send")
    assert client.get(f"/api/messages/{first.get_json()['id']}", headers=committed_headers).get_json()["attempts"] == 2
    client.post(f"/api/clients/{cli.id}/sim/fault", json={"type": "fail_next", "count": 1, "permanent": True},
                headers=committed_headers)
    second = client.post(f"/api/clients/{cli.id}/send-message", json={"to": TO, "message": "b"},
                         headers=committed_headers)
    wait_for(lambda: client.get(f"/api/messages/{second.get_json()['id']}",
                                headers=committed_headers).get_json()["status"]
             == "failed", timeout=20, message="the permanent failure")
    body = client.get(f"/api/messages/{second.get_json()['id']}", headers=committed_headers).get_json()
    assert body["error"]["code"] == "sim_fault" and body["attempts"] == 1
    assert network(client, committed_headers, cli.id)["received"] == 1


def test_a_banned_clients_waiting_messages_are_held_then_sent_once_when_it_is_ready_again(committed, committed_client,
                                                                                          committed_headers, run_pool):
    client = committed_client
    cli = sim_client(client, committed_headers, "Banned", (1500, 1500))
    run_pool("default")
    run_pool("messages")

    def client_status():
        return client.get(f"/api/clients/{cli}", headers=committed_headers).get_json()["status"]

    assert client.post(f"/api/clients/{cli}/start", headers=committed_headers).status_code == 202
    wait_for(lambda: client_status() == "ready", timeout=30, message="the client to be ready")
    batch = client.post("/api/messages/batch", json={"client_id": cli, "messages": [
        {"to": f"+1415555{4000 + i:04d}", "text": f"b{i}"} for i in range(4)]}, headers=committed_headers)
    ids = [m["id"] for m in batch.get_json()["messages"]]
    wait_for(lambda: rows(committed, Message.id == ids[0])[0].sent_at is not None, timeout=20,
             message="the first send")
    assert client.post(f"/api/clients/{cli}/sim/fault", json={"type": "ban"},
                       headers=committed_headers).status_code == 202
    wait_for(lambda: client_status() == "banned", timeout=20, message="the ban")

    # the others' jobs come at their slots and hold them: queued, without a slot, nothing failed
    def held():
        waiting = [m for m in rows(committed, Message.id.in_(ids)) if m.sent_at is None]
        return waiting and all(m.status == "queued" and m.scheduled_for is None for m in waiting) and waiting

    waiting = wait_for(held, timeout=30, message="the waiting messages to be held")
    assert pacing.reservations(cli) == []
    sent_before = len(ids) - len(waiting)
    assert network(client, committed_headers, cli)["received"] == sent_before

    assert client.post(f"/api/clients/{cli}/sim/fault", json={"type": "clear"},
                       headers=committed_headers).status_code == 202
    assert client.post(f"/api/clients/{cli}/start", headers=committed_headers).status_code == 202
    wait_for(lambda: all(m.sent_at for m in rows(committed, Message.id.in_(ids))), timeout=40,
             message="the held messages to be sent once the client is ready again")
    msgs = rows(committed, Message.id.in_(ids))
    assert all(m.error_code is None for m in msgs)
    sending = sorted(m.sending_at for m in msgs if m.id in {w.id for w in waiting})
    assert all(b - a >= timedelta(milliseconds=1500) for a, b in zip(sending, sending[1:])), sending
    net = network(client, committed_headers, cli)
    assert (net["received"], net["duplicates"]) == (len(ids), 0)
