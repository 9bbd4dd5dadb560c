"""Sends in batches (``messages.send_due``) for clients that are not paced: one job per intake, a
claim and a record per batch, the same rows and events as one send at a time, and every fault
handled per message."""
from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from sqlalchemy import func, select

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.messages import batches, dispatch
from app.models import Contact, Message, MessageStatusHistory, WebhookEvent
from app.security.principal import SystemPrincipal
from app.transports.base import PermanentSendError, SendResult, TransientSendError
from app.webhooks.models import WebhookDelivery
from config import settings
from tests import factories as f


class Transport:
    """Takes every message, except those it is told to refuse (an error per message id)."""

    def __init__(self, errors: dict | None = None):
        self.sent: list[str] = []
        self.errors = errors or {}
        self.lock = threading.Lock()

    def send(self, message):
        if message.message_id in self.errors:
            raise self.errors[message.message_id]
        with self.lock:
            self.sent.append(message.message_id)
        return SendResult(f"ext-{message.message_id}")


def queued_jobs(redis_conn) -> list[dict]:
    """The jobs waiting on the messages queue, now or delayed, in order."""
    from dramatiq.common import dq_name

    out = []
    for queue in ("messages", dq_name("messages")):
        ids = redis_conn.lrange(f"dramatiq:{queue}", 0, -1)
        out += [json.loads(b) for b in (redis_conn.hmget(f"dramatiq:{queue}.msgs", ids) if ids else []) if b]
    return out


@pytest.fixture
def transport(monkeypatch):
    fake = Transport()
    monkeypatch.setattr(batches, "stateless_transport", lambda client_id: fake)
    monkeypatch.setattr(dispatch, "stateless_transport", lambda client_id: fake)
    return fake


def queue(session, client, n: int, *, campaign_id: str | None = None, **item) -> list[str]:
    """``n`` messages accepted from ``client`` (a campaign's with ``campaign_id``); their ids."""
    from app.messages import service

    items = [{"to": f"+1415555{1000 + i:04d}", "text": f"m{i}", **item} for i in range(n)]
    return [r["id"] for r in service.accept_messages(session, SystemPrincipal(client.organization_id), client, items,
                                                     campaign_id=campaign_id)]


def status_of(session, ids) -> Counter:
    session.expire_all()
    return Counter(session.scalars(select(Message.status).where(Message.id.in_(ids))))


def test_an_unpaced_clients_batch_gets_one_job_and_a_paced_ones_a_job_per_message(session, unpaced, org,
                                                                                   redis_conn):
    queue(session, unpaced, 30)
    session.commit()  # the intake's jobs reach the broker (a savepoint here)
    jobs_now = queued_jobs(redis_conn)
    assert [(j["actor_name"], j["args"]) for j in jobs_now] == [("messages.send_due", [unpaced.id])]

    paced = f.make_client(session, organization_id=org.id, status="ready", min_gap_ms=100, max_gap_ms=100)
    redis_conn.flushdb()
    ids = queue(session, paced, 3)
    session.commit()
    assert sorted(j["args"][0] for j in queued_jobs(redis_conn)) == sorted(ids)
    assert {j["actor_name"] for j in queued_jobs(redis_conn)} == {"messages.send"}


def test_a_campaigns_and_a_scheduled_message_keep_jobs_of_their_own(session, unpaced, org, redis_conn):
    from datetime import timedelta

    from app.db import utcnow

    later = queue(session, unpaced, 1, scheduled_at=utcnow() + timedelta(seconds=20))
    campaign = f.make_campaign(session, organization_id=org.id, status="running")
    own = queue(session, unpaced, 1, campaign_id=campaign.id, to="+14155559999")
    session.commit()
    assert sorted((j["actor_name"], j["args"][0]) for j in queued_jobs(redis_conn)) == sorted(
        [("messages.send", later[0]), ("messages.send", own[0])])


def test_a_batch_sends_each_message_once_in_order_with_the_rows_a_single_send_writes(session, unpaced,
                                                                                     transport, override_settings):
    override_settings(MESSAGE_SEND_BATCH=7)  # 20 messages: three batches
    ids = queue(session, unpaced, 20)
    outcomes = batches.run_send_due(unpaced.id)
    assert outcomes == Counter(sent=20)
    assert transport.sent == sorted(ids) == ids
    assert status_of(session, ids) == Counter(sent=20)
    for message_id in ids[:3] + ids[-2:]:
        msg = session.get(Message, message_id)
        assert (msg.external_id, msg.attempts) == (f"ext-{msg.id}", 1)
        assert msg.sending_at <= msg.sent_at
        assert session.get(Contact, msg.contact_id).last_outbound_at == msg.sent_at
        history = session.scalars(select(MessageStatusHistory.status).where(MessageStatusHistory.message_id == msg.id)
                                  .order_by(MessageStatusHistory.id)).all()
        assert history == ["queued", "sending", "sent"]
    events = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "message.sent")
                             .order_by(WebhookEvent.id)).all()
    assert [e.payload["id"] for e in events] == ids
    sent = session.get(Message, ids[0])
    assert events[0].payload["status"] == "sent" and events[0].payload["sent_at"] == sent.sent_at.isoformat()
    # a job that comes late finds nothing to send
    assert batches.run_send_due(unpaced.id) == Counter()
    assert dispatch.run_send_job(ids[0]) == "skipped"
    assert len(transport.sent) == 20


def test_an_endpoint_on_message_sent_gets_a_delivery_for_each_batched_send(session, unpaced, org, transport):
    hook = f.make_webhook(session, organization_id=org.id, events=["message.sent"])
    ids = queue(session, unpaced, 5)
    assert batches.run_send_due(unpaced.id) == Counter(sent=5)
    assert status_of(session, ids) == Counter(sent=5)
    deliveries = session.scalar(select(func.count()).select_from(WebhookDelivery)
                                .where(WebhookDelivery.webhook_id == hook.id))
    assert deliveries == 5


def test_a_transient_error_hands_that_message_to_its_own_retried_job_and_the_rest_go(session, unpaced, transport,
                                                                                     redis_conn):
    ids = queue(session, unpaced, 6)
    transport.errors = {ids[2]: TransientSendError("busy", code="sim_busy", retry_after_ms=1500),
                        ids[4]: PermanentSendError("no such number", code="sim_invalid")}
    session.commit()
    redis_conn.flushdb()
    outcomes = batches.run_send_due(unpaced.id)
    assert outcomes == Counter(sent=4, retrying=1, failed=1)
    session.expire_all()
    retried, failed = session.get(Message, ids[2]), session.get(Message, ids[4])
    assert (retried.status, retried.attempts) == ("queued", 1)
    assert (failed.status, failed.error_code, failed.attempts) == ("failed", "sim_invalid", 1)
    session.commit()
    # the retry is a job of its own, delayed (a batch takes only first attempts); the rest of the
    # client's backlog goes on a moment later
    jobs_now = sorted(queued_jobs(redis_conn), key=lambda j: j["actor_name"])
    assert [(j["actor_name"], j["args"]) for j in jobs_now] == [("messages.send", [ids[2]]),
                                                                ("messages.send_due", [unpaced.id])]
    assert all(j["options"]["eta"] > 0 for j in jobs_now)
    assert batches.run_send_due(unpaced.id) == Counter()
    transport.errors = {}
    assert dispatch.run_send_job(ids[2]) == "sent"
    session.expire_all()
    assert session.get(Message, ids[2]).attempts == 2
    assert sorted(transport.sent) == sorted(set(ids) - {ids[4]})


def test_a_message_on_its_last_attempt_fails_instead_of_being_retried(session, unpaced, transport,
                                                                       override_settings):
    override_settings(MESSAGE_MAX_ATTEMPTS=1)
    ids = queue(session, unpaced, 2)
    transport.errors = {ids[0]: TransientSendError("busy", code="sim_busy")}
    assert batches.run_send_due(unpaced.id) == Counter(sent=1, failed=1)
    session.expire_all()
    assert session.get(Message, ids[0]).status == "failed"


def test_a_transport_error_of_unknown_kind_makes_that_message_unknown_never_resent(session, unpaced, transport):
    ids = queue(session, unpaced, 3)
    transport.errors = {ids[1]: RuntimeError("connection reset after the request was written")}
    assert batches.run_send_due(unpaced.id) == Counter(sent=2, unknown=1)
    assert status_of(session, ids) == Counter(sent=2, unknown=1)
    assert batches.run_send_due(unpaced.id) == Counter()


def test_a_contact_who_opted_out_after_queueing_is_failed_by_its_own_job(session, unpaced, transport, redis_conn):
    ids = queue(session, unpaced, 3)
    out = session.get(Message, ids[1])
    session.get(Contact, out.contact_id).opted_out = True
    session.commit()
    redis_conn.flushdb()
    assert batches.run_send_due(unpaced.id) == Counter(sent=2, refused=1)
    session.commit()
    assert [(j["actor_name"], j["args"]) for j in queued_jobs(redis_conn)] == [("messages.send", [ids[1]])]
    assert dispatch.run_send_job(ids[1]) == "failed"
    session.expire_all()
    assert session.get(Message, ids[1]).error_code == "contact_opted_out"
    assert ids[1] not in transport.sent


def test_a_client_that_cannot_send_keeps_its_messages_and_one_paced_since_gets_a_job_each(session, unpaced,
                                                                                         transport, redis_conn):
    ids = queue(session, unpaced, 3)
    unpaced.paused = True
    session.flush()
    assert batches.run_send_due(unpaced.id) == Counter(held=1)
    assert status_of(session, ids) == Counter(queued=3)
    unpaced.paused = False
    unpaced.config = {}  # paced again: every waiting message gets its slot and job
    unpaced.min_gap_ms = unpaced.max_gap_ms = 100
    session.commit()
    redis_conn.flushdb()
    assert batches.run_send_due(unpaced.id) == Counter(replanned=3)
    session.commit()
    assert sorted(j["args"][0] for j in queued_jobs(redis_conn)) == ids
    session.expire_all()
    assert all(session.get(Message, i).scheduled_for is not None for i in ids)
    assert transport.sent == []


def test_a_long_backlog_is_handed_on_to_a_new_job_when_the_budget_is_spent(session, unpaced, transport,
                                                                            override_settings, monkeypatch,
                                                                            redis_conn):
    override_settings(MESSAGE_SEND_BATCH=2)
    monkeypatch.setattr(batches, "SEND_DUE_BUDGET_S", 0.0)  # spent after the first batch
    ids = queue(session, unpaced, 5)
    session.commit()
    redis_conn.flushdb()
    assert batches.run_send_due(unpaced.id) == Counter(sent=2)
    session.commit()
    assert [(j["actor_name"], j["args"]) for j in queued_jobs(redis_conn)] == [("messages.send_due", [unpaced.id])]
    assert status_of(session, ids) == Counter(sent=2, queued=3)


def test_a_batch_size_out_of_range_stops_the_process_naming_the_setting():
    from config import Settings, check_production_settings

    for bad in ("0", "5000"):
        with pytest.raises(SystemExit, match="MESSAGE_SEND_BATCH"):
            check_production_settings(Settings.from_env({**dict(vars(settings)), "MESSAGE_SEND_BATCH": bad}))


def test_a_client_ready_again_gets_one_batched_job_and_its_campaign_messages_a_job_each(session, unpaced, org,
                                                                                      redis_conn):
    from app.messages import planning

    unpaced.status = "disconnected"
    session.flush()
    ids = queue(session, unpaced, 4)
    campaign = f.make_campaign(session, organization_id=org.id, status="running")
    (own,) = queue(session, unpaced, 1, campaign_id=campaign.id, to="+14155559999")
    unpaced.status = "ready"
    session.commit()
    redis_conn.flushdb()
    assert planning.resume_client(session, unpaced.id) == 5
    session.commit()
    assert sorted((j["actor_name"], j["args"][0]) for j in queued_jobs(redis_conn)) == sorted(
        [("messages.send", own), ("messages.send_due", unpaced.id)])
    assert status_of(session, ids) == Counter(queued=4)
