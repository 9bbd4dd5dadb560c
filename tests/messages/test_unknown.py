"""A send that ends in doubt is ``unknown``, never sent again on its own, and told apart later:
by the transport (``lookup``: the sim knows by message id) or by the first ack. A failed
``interrupted`` message that an ack proves delivered is corrected. Recording an outcome outlives a
database blip."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from app.messages import dispatch, sweeper, tracking
from app.messages.models import Message, MessageStatusHistory
from app.transports.sim import SimNetwork, SimTransport
from app.webhooks.models import WebhookEvent
from tests import factories as f
from tests.messages.test_routes import FakeTransport, queue_one


def history(session, message_id):
    session.expire_all()
    return [h.status for h in session.query(MessageStatusHistory).filter_by(message_id=message_id)
            .order_by(MessageStatusHistory.id)]


class BrokenAfterSending(FakeTransport):
    """Accepts the message, then fails on something else (a reset connection while it reports)."""

    def send(self, message):
        self.sent.append(message)
        raise ConnectionResetError("reset by peer after the message went out")


def test_an_unexpected_error_makes_it_unknown_never_queued_again(session, unpaced, redis_conn):
    msg = queue_one(session, unpaced)
    transport = BrokenAfterSending()
    assert dispatch.perform_send(msg.id, lambda cid: transport) == "unknown"
    session.expire_all()
    row = session.get(Message, msg.id)
    assert (row.status, row.error_code) == ("unknown", "transport_error")
    assert dispatch.run_send_job(msg.id) == "skipped", "a redelivered job does not send it again"
    assert len(transport.sent) == 1
    assert history(session, msg.id) == ["queued", "sending", "unknown"]
    events = [e.type for e in session.query(WebhookEvent).filter_by(organization_id=unpaced.organization_id)]
    assert "message.unknown" in events


def test_the_first_ack_tells_the_truth_of_an_unknown_message(session, unpaced):
    msg = queue_one(session, unpaced)
    dispatch.perform_send(msg.id, lambda cid: BrokenAfterSending())
    found = tracking.apply_ack(session, unpaced.id, "ext-9", "read", message_id=msg.id)
    assert found is not None
    session.expire_all()
    row = session.get(Message, msg.id)
    assert (row.status, row.external_id, row.error_code) == ("read", "ext-9", None)
    assert history(session, msg.id)[-3:] == ["sent", "delivered", "read"]


def test_an_ack_corrects_a_failure_the_worker_only_presumed(session, unpaced):
    msg = f.make_message(session, client_id=unpaced.id, status="failed", error_code="interrupted",
                         failed_at=datetime.now(UTC))
    tracking.apply_ack(session, unpaced.id, "ext-x", "delivered", message_id=msg.id)
    session.expire_all()
    row = session.get(Message, msg.id)
    assert (row.status, row.error_code, row.failed_at) == ("delivered", None, None)
    real = f.make_message(session, client_id=unpaced.id, status="failed", error_code="invalid_recipient",
                          external_id="ext-real")
    tracking.apply_ack(session, unpaced.id, "ext-real", "delivered")
    assert session.get(Message, real.id).status == "failed", "a failure the transport reported stands"


def _sim_message(session, org, **config):
    client = f.make_client(session, organization_id=org.id, status="ready",
                           config={"deliver_after_ms": 0, "read_after_ms": 0, **config})
    return client, queue_one(session, client)


def test_reconcile_asks_the_sim_which_knows_by_message_id(session, org, redis_conn):
    client, msg = _sim_message(session, org)
    SimNetwork(client.id).record_send(msg.id)  # it arrived, and then its sender died
    session.execute(update(Message).where(Message.id == msg.id).values(
        status="sending", sending_at=datetime.now(UTC) - timedelta(minutes=5)))
    assert sweeper.interrupted(session, older_than_s=60) == 1
    assert session.get(Message, msg.id).status == "unknown"
    assert sweeper.reconcile(msg.id) == "read"
    session.expire_all()
    row = session.get(Message, msg.id)
    assert (row.status, row.external_id) == ("read", SimTransport(service_info(session, client), None).external_id(msg.id))
    assert SimNetwork(client.id).counts()["received"] == 1, "nothing was sent again"


def test_reconcile_sends_again_what_the_sim_never_received(session, org, redis_conn):
    client, msg = _sim_message(session, org)
    session.execute(update(Message).where(Message.id == msg.id).values(
        status="unknown", sending_at=datetime.now(UTC) - timedelta(minutes=5)))
    assert sweeper.reconcile(msg.id) == "requeued"
    session.expire_all()
    assert session.get(Message, msg.id).status == "queued"


def service_info(session, client):
    from app.clients.info import load_client_info

    return load_client_info(session, client.id)


def test_the_sim_says_not_sent_only_when_its_network_never_took_it(redis_conn):
    import redis as redis_lib

    from app.transports.sim import refused_before_running

    assert refused_before_running(redis_lib.exceptions.OutOfMemoryError("OOM"))
    refused = redis_lib.exceptions.ConnectionError("Error 111 connecting")
    refused.__context__ = ConnectionRefusedError(111, "Connection refused")
    assert refused_before_running(refused)
    assert not refused_before_running(redis_lib.exceptions.ConnectionError("Connection reset by peer"))
    assert not refused_before_running(redis_lib.exceptions.TimeoutError("Timeout reading from socket"))


def test_a_sent_message_whose_receipts_never_came_is_asked_about(session, org, redis_conn):
    client, msg = _sim_message(session, org)
    SimNetwork(client.id).record_send(msg.id)
    long_ago = datetime.now(UTC) - timedelta(minutes=30)
    session.execute(update(Message).where(Message.id == msg.id).values(
        status="sent", external_id="sim_x", sent_at=long_ago, updated_at=long_ago))
    assert sweeper.reconcile_unknown(session) == 1
    assert sweeper.reconcile_unknown(session) == 0, "asked again only after a while"
    assert sweeper.reconcile(msg.id) == "read"
    session.expire_all()
    assert session.get(Message, msg.id).status == "read"
