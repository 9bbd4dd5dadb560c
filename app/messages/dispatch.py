"""From a queued message to the transport: paced, claimed once, never lost, never sent twice.

The path of one outbound message:

1. Accepted (app/messages/service.py, app/messages/intake.py): the row commits, then its
   ``messages.send`` job goes to the broker, delayed until the message's pacing slot or parked
   (app/messages/planning.py); the sweeper sends a lost one again.
2. ``messages.send`` (``run_send_job``): skips a message that is no longer queued; holds one whose
   client is not ready, paused or deleted (it stays ``queued``; ``resume_client`` sends it on when
   the client is ready again); asks pacing for its slot (app/messages/pacing.py). Not due yet: the job is
   enqueued again with ``delay = slot - now`` (a new broker message: deferrals use no retries and
   no thread). Due: the send is granted if the client's recent sends allow one now (else the job
   waits just until they do, keeping its place), and the message is sent here (sim, cloud) or
   handed to the session host that owns the client (web, ``sessions.send``), which calls
   ``perform_send``.
3. ``perform_send`` claims the row (``UPDATE ... SET status='sending' WHERE status='queued'``) and
   commits before calling the transport, so a redelivered or duplicated job finds nothing to claim,
   and a cancel that committed first wins. Then ``sent`` (with the transport's id, for the acks;
   app/messages/recording.py), or ``failed`` at once on a permanent error, or back to ``queued`` and
   a retry with backoff on a transient one (``TransientSendError`` is raised to the actor; the
   attempts are counted in the row, so at most ``MESSAGE_MAX_ATTEMPTS`` transport calls whatever
   the broker does).
4. A send whose outcome is in doubt (an error after the transport took it, a worker killed
   mid-send) is ``unknown``, never resent; app/messages/sweeper.py reconciles it.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from sqlalchemy import Row, select, text, update
from sqlalchemy.orm import Session

from app import outbox
from app.campaigns import windows
from app.campaigns.models import Campaign
from app.clients.info import load_client_info
from app.clients.leases import host_queue
from app.clients.models import Client
from app.contacts.models import Contact
from app.db import job_session, utcnow
from app.inbox.service import InboxSink, record
from app.messages import pacing
from app.messages.models import Message, MessageStatusHistory
from app.messages.outbound import build_outbound
from app.messages.pacing import Limits
from app.messages.planning import from_ms, schedule, to_ms
from app.messages.recording import durably, mark_unknown, record_sent, record_sent_alone
from app.messages.statuses import SendOutcome
from app.messages.tracking import OPT_OUT_KEY_PREFIX, SEND_ACTOR, record_status, sendable
from app.system import counters
from app.transports import STATEFUL, transport_class
from app.transports.base import OutboundMessage, PermanentSendError, TransientSendError
from config import settings

log = logging.getLogger(__name__)

SESSIONS_SEND = "sessions.send"


# ----------------------------------------------------------------------------- the messages.send job

def _load(session: Session, message_id: str) -> Row | None:
    """(message, client, contact opted out?, campaign status, campaign send window, contact's
    time zone) of a message, or None."""
    return session.execute(select(Message, Client, Contact.opted_out, Campaign.status, Campaign.send_window,
                                  Contact.attributes["timezone"].astext)
                           .join(Client, Client.id == Message.client_id)
                           .outerjoin(Contact, Contact.id == Message.contact_id)
                           .outerjoin(Campaign, Campaign.id == Message.campaign_id)
                           .where(Message.id == message_id)).first()


def _hold(session: Session, message: Message, *granted: str) -> None:
    """The client cannot send: the message stays queued, without a slot, until resume_client."""
    pacing.release(message.client_id, pacing.token_for(message.id, message.attempts), *granted)
    if message.scheduled_for is not None:
        message.scheduled_for = None


def run_send_job(message_id: str) -> SendOutcome:
    """The body of ``messages.send``; returns what happened (for logs and tests):
    missing, skipped, waiting, held, forwarded, repaced, sent, failed."""
    now = pacing.now_ms()
    granted = None
    with job_session() as session:
        found = _load(session, message_id)
        if found is None:
            return "missing"
        message, client, opted_out, campaign_status, window, tz = found
        if message.status != "queued" or message.direction != "outbound":
            # a duplicate job may have reserved a slot for it meanwhile: give those back
            pacing.release(message.client_id, *[pacing.token_for(message.id, n) for n in range(message.attempts + 1)])
            return "skipped"
        if message.campaign_id is not None:
            if campaign_status != "running":  # paused: resume sends it on; cancelled: cancel_rest cancels it
                _hold(session, message)
                return "held"
            if window:
                opens = windows.next_open(window, tz, from_ms(now))
                if opens > from_ms(now):  # outside its send window: wait for it to open, without a slot
                    _hold(session, message)
                    message.scheduled_at = opens
                    schedule(session, [(message.id, to_ms(opens) - now)])
                    counters.inc("wa_pacing_deferrals_total", transport=client.transport, reason="send_window")
                    return "waiting"
        if message.scheduled_at is not None and to_ms(message.scheduled_at) > now:
            schedule(session, [(message.id, to_ms(message.scheduled_at) - now)])
            return "waiting"
        if not sendable(client):
            _hold(session, message)
            return "held"
        limits = Limits.of(client)
        if limits:
            now = pacing.now_ms()  # the grant's moment: as late as possible before the claim
            slot = pacing.acquire(client.id, now, limits, pacing.token_for(message.id, message.attempts))
            if message.scheduled_for is None or to_ms(message.scheduled_for) != slot.at_ms:
                message.scheduled_for = from_ms(slot.at_ms)
            if not slot.granted:
                schedule(session, [(message.id, slot.at_ms - now)])
                counters.inc("wa_pacing_deferrals_total", transport=client.transport, reason="pacing")
                return "waiting"
            granted = slot.member
        if client.transport in STATEFUL:
            host = host_queue(session, client.id)
            if host is None:  # no live session host: wait for the client to be ready again
                _hold(session, message, *([granted] if granted else []))
                return "held"
            outbox.enqueue(session, SESSIONS_SEND, message.id, queue_name=host)
            return "forwarded"
        # sim / cloud: claim in this same transaction (right after the grant), send once committed
        claimed = _claim(session, message, client, opted_out)
        client_id = client.id
    if not isinstance(claimed, Prepared):
        if granted and claimed != "repaced":  # not sent (a repaced grant was withdrawn already)
            pacing.release(client_id, granted)
        return claimed
    return _deliver(claimed, stateless_transport)


# ----------------------------------------------------------------------------- sending (contract 4)

@dataclass(frozen=True)
class Prepared:
    message_id: str
    client_id: str
    attempt: int
    outbound: OutboundMessage
    row: dict  # the message's columns as claimed (``sending``): its ``sent`` event is computed from them


def perform_send(message_id: str, transport_for) -> SendOutcome:
    """Claim ``message_id`` (queued -> sending), call ``transport_for(client_id).send``, record the
    result. Pacing has already happened (``messages.send``). Returns sent / failed, or skipped (not
    queued any more: another job has it, or it was cancelled), held (client not sendable) or
    repaced (its pacing slot is not now: ``messages.send`` was enqueued to pace it again).
    Raises ``TransientSendError`` after putting the message back to ``queued``, for a retry."""
    with job_session() as session:
        found = _load(session, message_id)
        if found is None:
            return "skipped"
        message, client, opted_out = found[:3]
        claimed = _claim(session, message, client, opted_out)
    if not isinstance(claimed, Prepared):
        return claimed
    return _deliver(claimed, transport_for)


def _claim(session: Session, message: Message, client: Client,
           opted_out: bool | None) -> Prepared | SendOutcome:
    """In the caller's transaction: the last checks, then ``queued -> sending``. Returns what to
    send, or the outcome when there is nothing to send."""
    if message.status != "queued" or message.direction != "outbound":
        return "skipped"
    if not sendable(client):
        _hold(session, message)
        return "held"
    now = pacing.now_ms()
    if Limits.of(client):
        # the send must start within the pad after its grant (``scheduled_for``), whatever delayed
        # this thread (a loaded machine) or the hand-over to a session host; else it is paced again,
        # keeping its place
        if message.scheduled_for is None:
            outbox.enqueue(session, SEND_ACTOR, message.id)
            return "repaced"
        if now - to_ms(message.scheduled_for) > pacing.call_pad_ms():
            pacing.retake(client.id, pacing.token_for(message.id, message.attempts), to_ms(message.scheduled_for))
            outbox.enqueue(session, SEND_ACTOR, message.id)
            return "repaced"
    if opted_out and not (message.idempotency_key or "").startswith(OPT_OUT_KEY_PREFIX):
        _fail(session, message.id, "queued", "contact_opted_out", "The contact opted out after this message was queued")
        return "failed"
    at = from_ms(now)
    claimed = session.execute(CLAIM, {"ids": [message.id], "at": at}).first()
    if claimed is None:
        return "skipped"
    return Prepared(claimed.id, client.id, claimed.attempts, build_outbound(session, claimed), dict(claimed._mapping))


# The claim before the transport call, in one statement (the hot path of every send: one message,
# or a batch of them, app/messages/batches.py); what is written after the call is
# app/messages/recording.py.
CLAIM = text("""
    WITH m AS (
        UPDATE messages SET status = 'sending', sending_at = :at, attempts = attempts + 1, updated_at = :at
        WHERE id = ANY(:ids) AND status = 'queued'
          AND (campaign_id IS NULL OR EXISTS (SELECT 1 FROM campaigns AS c
                                              WHERE c.id = messages.campaign_id AND c.status = 'running'))
        RETURNING *),
    h AS (
        INSERT INTO message_status_history (organization_id, message_id, status, at, details)
        SELECT organization_id, id, 'sending', :at, jsonb_build_object('attempt', attempts) FROM m)
    SELECT * FROM m ORDER BY id
""")


def _deliver(prepared: Prepared, transport_for) -> SendOutcome:
    """Call the transport for a claimed (committed ``sending``) message and record the outcome.

    What the transport reports during the send (the simulator's receipts, due later) is collected
    and written with the ``sent`` record, in one transaction."""
    transport = transport_for(prepared.client_id)
    with collecting(transport) as reports:
        called = call_transport(prepared, transport, reports)
    if isinstance(called, TransientSendError):
        if not retry_later(prepared.message_id, prepared.attempt, called):
            return "failed"
        raise called
    if not isinstance(called, Sent):
        return called

    def record_outcome(session: Session | None) -> bool:
        if session is None:  # first as one statement, which declines when it cannot do it all
            return record_sent_alone(prepared.row, called.external_id, called.reports)
        record(session, called.reports)
        record_sent(session, prepared.message_id, called.external_id, claimed=prepared.row)
        return True

    if not durably(record_outcome, alone_first=True):
        log.error("send of %s went out (%s) but could not be recorded; the sweeper will ask the transport",
                  prepared.message_id, called.external_id)
    return "sent"


@dataclass(frozen=True)
class Sent:
    """A send the transport took: its id there, and what it reported meanwhile (to record with it)."""

    prepared: Prepared
    external_id: str
    reports: list


def collecting(transport) -> AbstractContextManager[list]:
    """The transport's reports made inside the block (``InboxSink.batch``), or a list of none."""
    sink = getattr(transport, "events", None)
    return sink.batch() if isinstance(sink, InboxSink) else nullcontext([])


def call_transport(prepared: Prepared, transport, reports: list) -> Sent | SendOutcome | TransientSendError:
    """One transport call for a claimed message, inside ``collecting``: the send to record, or the
    outcome already recorded (failed, unknown), or the ``TransientSendError`` for the caller to
    requeue. Only ``TransientSendError`` means "not sent, try again"; any other exception may have
    come after the transport accepted the message, so it is never made sendable again: it is
    ``unknown`` until the transport is asked (``reconcile``) or an ack tells."""
    message_id = prepared.message_id
    try:
        result = transport.send(prepared.outbound)
    except PermanentSendError as exc:
        reports.clear()
        code, why = exc.code, str(exc)
        durably(lambda session: _fail(session, message_id, "sending", code, why))
        return "failed"
    except TransientSendError as exc:
        reports.clear()
        return exc
    except Exception as exc:  # a transport bug, or a failure after the message went out
        log.warning("send of %s raised %s: its outcome is unknown", message_id, exc.__class__.__name__,
                    exc_info=True)
        pending, why = list(reports), f"{exc.__class__.__name__}: {exc}"[:500]
        reports.clear()

        def record_unknown(session: Session) -> None:
            record(session, pending)
            mark_unknown(session, message_id, "transport_error", why)

        durably(record_unknown)
        return "unknown"
    pending = list(reports)
    reports.clear()
    return Sent(prepared, result.external_id, pending)


def _fail(session: Session, message_id: str, from_status: str, code: str, text: str | None) -> Message | None:
    now = utcnow()
    row = session.scalars(
        update(Message).where(Message.id == message_id, Message.status == from_status)
        .values(status="failed", error_code=(code or "send_failed")[:100], error_message=(text or None) and text[:1000],
                failed_at=now, updated_at=now)
        .returning(Message), execution_options={"populate_existing": True, "synchronize_session": False}).first()
    if row is not None:
        record_status(session, row, "failed", at=now, details={"code": row.error_code})
    return row


def retry_later(message_id: str, attempt: int, exc: TransientSendError, *, own_job: bool = False) -> bool:
    """Back to ``queued`` for another (paced) attempt: True; or ``failed`` once the attempts are
    used up: False. (The transport said it did not send: a retry cannot make a duplicate.)
    ``own_job``: the message also gets its ``messages.send`` job, delayed as the transport asks
    (else the caller's job is retried by the broker)."""
    if attempt >= settings.MESSAGE_MAX_ATTEMPTS:
        durably(lambda session: _fail(session, message_id, "sending", exc.code, f"{exc} (after {attempt} attempts)"))
        return False
    requeued = []

    def requeue(session: Session) -> None:
        requeued.append(requeue_after_error(session, message_id, attempt, exc.code, str(exc)))
        if own_job and requeued[-1]:
            outbox.enqueue(session, SEND_ACTOR, message_id, delay_ms=exc.retry_after_ms or RETRY_FIRST_MS)

    if not durably(requeue):
        return False
    return bool(requeued and requeued[-1])


#: the first retry's delay of a message whose job is its own (the actor's ``min_backoff``)
RETRY_FIRST_MS = 1000


def requeue_after_error(session: Session, message_id: str, attempt: int, code: str, text: str) -> bool:
    """``sending`` (or ``unknown``, when the transport said it never got it) -> ``queued``."""
    now = utcnow()
    row = session.scalars(
        update(Message).where(Message.id == message_id, Message.status.in_(("sending", "unknown")))
        .values(status="queued", scheduled_for=None, error_code=None, error_message=None, updated_at=now)
        .returning(Message), execution_options={"populate_existing": True, "synchronize_session": False}).first()
    if row is None:
        return False
    # a history row only: a retry is not a new message.queued event
    session.add(MessageStatusHistory(organization_id=row.organization_id, message_id=row.id, status="queued",
                                     at=now, details={"retry_after_attempt": attempt,
                                                      "error": {"code": code, "message": text[:500]}}))
    return True


class _StatelessTransports:
    """``transport_for`` of the messages pool: one transport per client and worker thread, rebuilt
    every few seconds so configuration changes reach it."""

    TTL_S = 10.0

    def __init__(self):
        self.local = threading.local()

    def __call__(self, client_id: str):
        cache = getattr(self.local, "cache", None)
        if cache is None:
            cache = self.local.cache = {}
        hit = cache.get(client_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        with job_session() as session:
            info = load_client_info(session, client_id)
        transport = transport_class(info.transport)(info, sink)
        if len(cache) > 1000:
            cache.clear()
        cache[client_id] = (time.monotonic() + self.TTL_S, transport)
        return transport


sink = InboxSink()
stateless_transport = _StatelessTransports()
