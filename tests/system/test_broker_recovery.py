"""A broker error must not strand jobs: a delay queue's consumer that (re)starts puts back the
delayed jobs Dramatiq dropped from its memory; a Redis that comes back empty is noticed and what
Postgres says should be in it is sent again at once."""
from __future__ import annotations

import json

import dramatiq

from app.messages.models import Message
from tests import factories as f


def test_a_restarting_delay_queue_consumer_puts_back_what_it_held(redis_conn):
    from config import settings
    from workers.broker import RecoveringRedisBroker

    broker = RecoveringRedisBroker(url=settings.REDIS_URL)
    broker.declare_queue("chores")
    for n in range(3):
        broker.enqueue(dramatiq.Message(queue_name="chores", actor_name="system.noop", args=(n,), kwargs={},
                                        options={}), delay=60_000)
    consumer = broker.consume("chores.DQ", prefetch=10, timeout=100)
    held = [next(consumer) for _ in range(3)]  # a worker holds them in memory until their time
    assert all(m is not None for m in held) and redis_conn.llen("dramatiq:chores.DQ") == 0
    acks = f"dramatiq:__acks__.{broker.broker_id}.chores.DQ"
    assert redis_conn.scard(acks) == 3
    # a connection error: Dramatiq drops its in-memory delayed jobs and starts a new consumer
    broker.consume("chores.DQ", prefetch=10, timeout=100)
    assert redis_conn.scard(acks) == 0 and redis_conn.llen("dramatiq:chores.DQ") == 3, "back on the delay queue"


def test_a_wiped_redis_is_noticed_and_everything_due_is_sent_again(session, redis_conn):
    from app.system import recovery

    client = f.make_client(session, status="ready", config={"pacing": False})
    queued = f.make_message(session, client_id=client.id, status="queued")
    f.make_transport_event(session, client_id=client.id, organization_id=client.organization_id)
    assert recovery.mark_epoch() is True
    assert recovery.recover_if_wiped() is None, "nothing lost: nothing to do"
    redis_conn.flushdb()  # Redis came back without its data
    done = recovery.recover_if_wiped()
    assert done["messages"] == 1 and done["transport_reports"] == 1
    session.commit()  # the jobs leave after commit (savepoints here)
    bodies = [json.loads(v) for v in redis_conn.hvals("dramatiq:messages.msgs")]
    assert [b["args"] for b in bodies if b["actor_name"] == "messages.send"] == [[queued.id]]
    assert recovery.recover_if_wiped() is None, "once"
    assert session.get(Message, queued.id).status == "queued"
