"""Reports applied in batches: one wake-up job per tick, the acks of a batch applied together and
in order whatever order they came in, a crash mid-batch that loses nothing and applies nothing
twice, and a report that breaks applying that does not hold up the others."""
from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from app.inbox import apply as inbox_apply
from app.inbox import service as inbox
from app.inbox.models import TransportEvent
from app.messages.models import Message, MessageStatusHistory
from app.transports.base import ClientInfo, InboundMessage
from app.webhooks.models import WebhookEvent
from tests import factories as f
from tests.reports import reported


def info(client) -> ClientInfo:
    return ClientInfo(id=client.id, organization_id=client.organization_id, transport="sim")


def wakeups(redis_conn) -> list[dict]:
    bodies = [json.loads(v) for q in ("default", "default.DQ") for v in redis_conn.hvals(f"dramatiq:{q}.msgs")]
    return [b for b in bodies if b["actor_name"] == inbox.APPLY_DUE_ACTOR]


def sent_message(session, client, external_id: str) -> Message:
    return f.make_message(session, client_id=client.id, status="sent", external_id=external_id,
                          sent_at=datetime.now(UTC) - timedelta(seconds=5))


def history(session, message_id: str) -> list[str]:
    return list(session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == message_id)
                                .order_by(MessageStatusHistory.id)))


def test_reports_due_within_one_tick_share_one_wakeup(session, redis_conn, monkeypatch):
    client = f.make_client(session, status="ready")
    now_ms = int(time.time()) * 1000 + 10  # the clock stands still at the start of a tick: the ticks are known
    monkeypatch.setattr(inbox, "_now_ms", lambda: now_ms)
    sink = inbox.InboxSink(session)
    for n in range(50):
        sink.ack(info(client), f"ext-{n}", "delivered", delay_ms=5000)
    session.commit()
    assert len(wakeups(redis_conn)) == 1, "fifty reports of one tick: one job"
    sink.ack(info(client), "ext-again", "delivered", delay_ms=5050)
    session.commit()
    assert len(wakeups(redis_conn)) == 1, "another transaction of the same tick adds none"
    inbox.forget_taken_wakes()  # as another process would: it asks Redis
    sink.ack(info(client), "ext-other-process", "delivered", delay_ms=5000)
    session.commit()
    assert len(wakeups(redis_conn)) == 1, "the tick's key in Redis tells another process"
    sink.ack(info(client), "ext-later", "read", delay_ms=60_000)
    session.commit()
    assert len(wakeups(redis_conn)) == 2, "a report of another tick has its own"


def test_a_transaction_after_its_tick_started_sends_another_wakeup(redis_conn):
    tick = (int(datetime.now(UTC).timestamp() * 1000) // inbox.TICK_MS + 100) * inbox.TICK_MS
    assert inbox.send_wakes([tick]) == 1
    assert inbox.send_wakes([tick]) == 0, "the tick's job is on its way"
    inbox.woken(tick)  # the job started: what commits now might come after its query
    assert inbox.send_wakes([tick]) == 1


def test_nothing_is_woken_for_a_rolled_back_report(session, redis_conn):
    client = f.make_client(session, status="ready")
    nested = session.begin_nested()
    inbox.InboxSink(session).ack(info(client), "ext-1", "delivered")
    nested.rollback()
    session.commit()
    assert wakeups(redis_conn) == []


def test_a_batch_applies_acks_that_came_out_of_order_as_the_single_path_would(session, org):
    client = f.make_client(session, organization_id=org.id, status="ready")
    sink = inbox.InboxSink(session)
    a, b, c, d = (sent_message(session, client, f"ext-{n}") for n in "abcd")
    t0 = datetime.now(UTC)
    with sink.batch():
        sink.ack(info(client), "ext-a", "read", at=t0 + timedelta(seconds=2))       # overtook its delivery
        sink.ack(info(client), "ext-a", "delivered", at=t0 + timedelta(seconds=1))  # late: moves nothing
        sink.ack(info(client), "ext-b", "delivered", at=t0)
        sink.ack(info(client), "ext-b", "read", at=t0 + timedelta(seconds=3))       # both in one batch
        sink.ack(info(client), "ext-c", "delivered", at=t0)
        sink.ack(info(client), "ext-c", "failed", error={"code": "late"})           # does not undo a delivery
        sink.ack(info(client), "ext-d", "failed", error={"code": "undeliverable", "message": "no"})
        sink.ack(info(client), "ext-d", "read")                                     # a failure stands
        sink.ack(info(client), "ext-nobody", "delivered")                           # overtook its message
    assert inbox_apply.apply_due() == 9
    session.expire_all()
    got = {m.id: m for m in session.scalars(select(Message).where(Message.id.in_([a.id, b.id, c.id, d.id])))}
    assert (got[a.id].status, got[a.id].delivered_at, got[a.id].read_at) == ("read", t0 + timedelta(seconds=2),
                                                                              t0 + timedelta(seconds=2))
    assert (got[b.id].status, got[b.id].delivered_at, got[b.id].read_at) == ("read", t0, t0 + timedelta(seconds=3))
    assert (got[c.id].status, got[c.id].error_code) == ("delivered", None)
    assert (got[d.id].status, got[d.id].error_code, got[d.id].error_message) == ("failed", "undeliverable", "no")
    assert history(session, a.id) == ["delivered", "read"]
    assert history(session, b.id) == ["delivered", "read"]
    assert history(session, c.id) == ["delivered"]
    assert history(session, d.id) == ["failed"]
    events = session.execute(select(WebhookEvent.type, WebhookEvent.payload).where(
        WebhookEvent.organization_id == org.id).order_by(WebhookEvent.created_at, WebhookEvent.id)).all()
    of = {m: [t for t, p in events if p["id"] == m] for m in (a.id, b.id, c.id, d.id)}
    assert of[a.id] == of[b.id] == ["message.delivered", "message.read"], "each message's events in order"
    assert of[c.id] == ["message.delivered"] and of[d.id] == ["message.failed"]
    read_of_b = next(p for t, p in events if t == "message.read" and p["id"] == b.id)
    assert read_of_b["status"] == "read" and read_of_b["read_at"] == (t0 + timedelta(seconds=3)).isoformat()
    delivered_of_b = next(p for t, p in events if t == "message.delivered" and p["id"] == b.id)
    assert delivered_of_b["status"] == "delivered" and delivered_of_b["read_at"] is None, \
        "each event shows the message as it was at that step"
    outcomes = {r.payload["external_id"] + ":" + r.payload["status"]: r.outcome for r in reported(session, "ack")}
    assert outcomes.pop("ext-nobody:delivered") is None, "waits for its message"
    assert set(outcomes.values()) == {"applied"}
    [waiting] = [r for r in reported(session, "ack") if r.payload["external_id"] == "ext-nobody"]
    now = session.scalar(text("SELECT now()"))  # the transaction's clock, which the backoff counts from
    assert (waiting.attempts, waiting.due_at) == (1, now + timedelta(milliseconds=250)), \
        "the waiting ack is due again after its backoff, not at once"


def test_a_batch_finds_a_message_by_our_id_when_its_transport_id_is_not_recorded(session):
    client = f.make_client(session, status="ready")
    message = f.make_message(session, client_id=client.id, status="sending")
    inbox.InboxSink(session).ack(info(client), "ext-late", "delivered", message_id=message.id)
    assert inbox_apply.apply_due() == 1
    session.expire_all()
    got = session.get(Message, message.id)
    assert (got.status, got.external_id) == ("delivered", "ext-late")


class Crash(BaseException):
    """The worker dies (a SIGKILL, an OOM kill): nothing after this point runs."""


def test_a_crash_mid_batch_loses_nothing_and_applies_nothing_twice(session, monkeypatch):
    client = f.make_client(session, status="ready")
    sink = inbox.InboxSink(session)
    messages = [sent_message(session, client, f"ext-{n}") for n in range(20)]
    with sink.batch():
        for n in range(20):
            sink.ack(info(client), f"ext-{n}", "delivered")
        sink.inbound(info(client), InboundMessage(external_id="in-1", from_phone="+14155550123", text="hi"))

    def crash(*_):
        raise Crash()

    # every report of the batch is applied and marked, then the worker dies before the commit
    monkeypatch.setattr(inbox_apply, "_later", crash)
    with pytest.raises(Crash):
        inbox_apply.apply_due()
    monkeypatch.undo()
    session.expire_all()
    assert {m.status for m in session.scalars(select(Message).where(Message.client_id == client.id,
                                                                    Message.direction == "outbound"))} == {"sent"}
    assert all(r.applied_at is None for r in reported(session)), "nothing was applied: every report is still there"
    assert inbox_apply.apply_due() == 21, "the next job applies them all"
    session.expire_all()
    for m in messages:
        assert history(session, m.id) == ["delivered"], "once"
    assert session.query(Message).filter_by(client_id=client.id, direction="inbound").count() == 1
    assert session.query(WebhookEvent).filter_by(type="message.delivered").count() == 20
    assert inbox_apply.apply_due() == 0


def test_a_report_that_breaks_applying_does_not_hold_up_the_others(session, monkeypatch):
    client = f.make_client(session, status="ready")
    sink = inbox.InboxSink(session)
    message = sent_message(session, client, "ext-ok")
    with sink.batch():
        sink.inbound(info(client), InboundMessage(external_id="in-bad", from_phone="+14155550123", text="boom"))
        sink.ack(info(client), "ext-ok", "delivered")
        sink.inbound(info(client), InboundMessage(external_id="in-good", from_phone="+14155550124", text="hi"))
    real = inbox_apply.receive_inbound

    def receive(session_, client_id, payload):
        if payload["external_id"] == "in-bad":
            raise ValueError("a bug in applying this one")
        return real(session_, client_id, payload)

    monkeypatch.setattr(inbox_apply, "receive_inbound", receive)
    assert inbox_apply.apply_due() == 3
    session.expire_all()
    assert session.get(Message, message.id).status == "delivered"
    rows = {r.payload.get("external_id"): r for r in reported(session)}
    assert rows["in-good"].outcome == "applied" and rows["ext-ok"].outcome == "applied"
    bad = rows["in-bad"]
    backoff = timedelta(milliseconds=250)  # from the transaction's clock
    assert (bad.applied_at, bad.attempts, bad.due_at) == (None, 1, session.scalar(text("SELECT now()")) + backoff), \
        "tried again later"
    assert session.scalar(select(TransportEvent.id).where(TransportEvent.applied_at.is_(None))) == bad.id
