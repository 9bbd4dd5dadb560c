"""The transport inbox: a report is a row before anything else happens; applying it is once and
idempotent; an ack that overtakes its message waits (then is given up); what the broker lost is
sent again; applied rows are purged."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from app.inbox import apply as inbox_apply
from app.inbox import service as inbox
from app.inbox.models import TransportEvent
from app.messages.models import Message
from app.transports.base import ClientInfo, InboundMessage
from tests import factories as f
from tests.reports import reported


def info(client) -> ClientInfo:
    return ClientInfo(id=client.id, organization_id=client.organization_id, transport="sim")


def test_a_report_is_a_row_with_its_due_time_and_its_job_goes_after_commit(session, redis_conn):
    client = f.make_client(session, status="ready")
    sink = inbox.InboxSink(session)
    sink.ack(info(client), "ext-1", "delivered", delay_ms=5000, message_id="msg_X")
    [row] = reported(session, "ack")
    assert row.payload["external_id"] == "ext-1" and row.payload["message_id"] == "msg_X"
    assert timedelta(seconds=4) < row.due_at - row.created_at <= timedelta(seconds=5)
    assert redis_conn.hlen("dramatiq:default.DQ.msgs") == 0, "nothing is sent before the commit"
    session.commit()  # (a savepoint here)
    assert redis_conn.hlen("dramatiq:default.DQ.msgs") == 1


def test_a_batch_writes_its_reports_in_one_go(session):
    client = f.make_client(session, status="ready")
    sink = inbox.InboxSink(session)
    with sink.batch() as collected:
        sink.status(info(client), "qr", {"qr": "2@x"})
        sink.status(info(client), "ready", {}, delay_ms=100)
        assert reported(session) == [] and len(collected) == 2
    assert [r.payload["status"] for r in reported(session)] == ["qr", "ready"]


def test_applying_is_once_whatever_the_broker_delivers(session):
    client = f.make_client(session, status="ready")
    inbox.InboxSink(session).inbound(info(client), InboundMessage(external_id="in-1", from_phone="+14155550123",
                                                                  text="hello"))
    [row] = reported(session, "inbound")
    assert inbox_apply.apply(row.id) == "applied"
    assert inbox_apply.apply(row.id) == "done", "a duplicate job finds it applied"
    session.expire_all()
    assert session.get(TransportEvent, row.id).outcome == "applied"
    assert session.query(Message).filter_by(client_id=client.id, direction="inbound").count() == 1


def test_an_ack_that_overtakes_its_message_waits_then_is_given_up(session, redis_conn):
    client = f.make_client(session, status="ready")
    inbox.InboxSink(session).ack(info(client), "ext-nobody", "read")
    [row] = reported(session, "ack")
    assert inbox_apply.apply(row.id) == "waiting"
    session.expire_all()
    waiting = session.get(TransportEvent, row.id)
    assert waiting.applied_at is None and waiting.attempts == 1
    session.execute(update(TransportEvent).where(TransportEvent.id == row.id)
                    .values(created_at=datetime.now(UTC) - inbox.ACK_PATIENCE - timedelta(seconds=1)))
    assert inbox_apply.apply(row.id) == "orphaned"
    session.expire_all()
    given_up = session.get(TransportEvent, row.id)
    assert given_up.applied_at is not None and given_up.outcome == "orphaned", "not tried again"


def test_an_ack_applies_once_its_message_is_recorded(session):
    client = f.make_client(session, status="ready")
    message = f.make_message(session, client_id=client.id, status="sending")
    inbox.InboxSink(session).ack(info(client), "ext-late", "delivered", message_id=message.id)
    [row] = reported(session, "ack")
    assert inbox_apply.apply(row.id) == "applied", "found by our message id though its transport id is not recorded"
    session.expire_all()
    got = session.get(Message, message.id)
    assert (got.status, got.external_id) == ("delivered", "ext-late")


def test_what_the_broker_lost_is_sent_again_and_applied_rows_are_purged(session, redis_conn):
    client = f.make_client(session, status="ready")
    old = datetime.now(UTC) - timedelta(minutes=5)
    lost = f.make_transport_event(session, client_id=client.id, organization_id=client.organization_id,
                                  due_at=old, dispatched_at=old)
    future = f.make_transport_event(session, client_id=client.id, organization_id=client.organization_id,
                                    due_at=datetime.now(UTC) + timedelta(minutes=5), dispatched_at=old)
    done = f.make_transport_event(session, client_id=client.id, organization_id=client.organization_id,
                                  applied_at=datetime.now(UTC) - timedelta(days=2), outcome="applied")
    assert inbox.redispatch(session, overdue=timedelta(seconds=30)) == 1
    assert inbox.redispatch(session, overdue=timedelta(seconds=30)) == 0, "not again before it is overdue again"
    session.commit()
    queued = [j for j in redis_conn.lrange("dramatiq:default", 0, -1)]
    assert len(queued) == 1
    assert inbox.purge(session) == 1
    session.expire_all()
    assert session.get(TransportEvent, done.id) is None and session.get(TransportEvent, future.id) is not None
    assert session.get(TransportEvent, lost.id).dispatched_at > old


def test_a_backlog_is_not_taken_for_a_loss(session, redis_conn):
    """Reports whose jobs still wait behind older ones are not sent again (that storm once slowed
    a backlogged pool further); once the queue has moved past them, they are."""
    import time

    import dramatiq

    from workers.broker import get_broker

    client = f.make_client(session, status="ready")
    five_minutes_ago = datetime.now(UTC) - timedelta(minutes=5)
    f.make_transport_event(session, client_id=client.id, organization_id=client.organization_id,
                           due_at=five_minutes_ago, dispatched_at=five_minutes_ago)
    older = int((time.time() - 600) * 1000)
    get_broker().enqueue(dramatiq.Message(queue_name="default", actor_name="system.noop", args=(), kwargs={},
                                          options={}, message_timestamp=older))
    assert inbox.redispatch(session, overdue=timedelta(seconds=30)) == 0, "its job is still behind the head"
    redis_conn.delete("dramatiq:default")  # the queue moved on: the job, had it been there, would have run
    assert inbox.redispatch(session, overdue=timedelta(seconds=30)) == 1
