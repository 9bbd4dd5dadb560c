"""From a queued message to the transport: paced, claimed once, never lost, never sent twice.

The path of one outbound message:

1. Accepted (app/messages/service.py): the row and its ``messages.send`` job commit together (the
   outbox). A ready client's pacing slot is reserved at once (``plan``), and the job is delayed in
   the broker until that slot; ``messages.scheduled_for`` shows it. A job due more than
   ``MESSAGE_PARK_AFTER`` ahead is parked in a Redis sorted set instead, and the feeder
   (``release_parked``) hands it to the broker shortly before its time: a worker holds the delayed
   jobs it has fetched in memory, up to a limit, so days of backlog must not sit there.
2. ``messages.send`` (``run_send_job``): skips a message that is no longer queued; holds one whose
   client is not ready, paused or deleted (it stays ``queued``; ``resume_client`` sends it on when
   the client is ready again); asks pacing for its slot (workers/pacing.py). Not due yet: the job is
   enqueued again with ``delay = slot - now`` (a new broker message: deferrals use no retries and
   no thread). Due: the send is granted if the client's recent sends allow one now (else the job
   waits just until they do, keeping its place), and the message is sent here (sim, cloud) or
   handed to the session host that owns the client (web, ``sessions.send``), which calls
   ``perform_send``.
3. ``perform_send`` claims the row (``UPDATE ... SET status='sending' WHERE status='queued'``) and
   commits before calling the transport, so a redelivered or duplicated job finds nothing to claim,
   and a cancel that committed first wins. Then ``sent`` (with the transport's id, for the acks),
   or ``failed`` at once on a permanent error, or back to ``queued`` and a retry with backoff on a
   transient one (``TransientSendError`` is raised to the actor; the attempts are counted in the
   row, so at most ``MESSAGE_MAX_ATTEMPTS`` transport calls whatever the broker does).
4. A worker killed between the claim and the result leaves the row in ``sending``: ``sweep`` marks
   it ``failed`` with code ``interrupted`` after ``MESSAGE_SENDING_TIMEOUT`` (it may have reached
   WhatsApp, so it is never resent), and re-enqueues ``queued`` messages whose job was lost.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, select, text, update

import workers.broker  # noqa: F401  (the configured broker, before anything is enqueued)
from app import outbox
from app.clients.models import Client
from app.contacts.models import Contact
from app.db import job_session, utcnow
from app.inbox.service import InboxSink, record
from app.messages.models import Message
from app.messages.service import (OPT_OUT_KEY_PREFIX, SEND_ACTOR, SEND_QUEUE, dump, record_status,
                                  render_template, sendable)
from app.transports import KNOWS_RECEIPTS, STATEFUL, transport_class
from app.transports.base import MediaRef, OutboundMessage, PermanentSendError, TransientSendError
from config import settings
from workers import pacing
from workers.pacing import Limits

log = logging.getLogger(__name__)

SESSIONS_SEND = "sessions.send"


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _park_after_ms() -> int:
    return settings.MESSAGE_PARK_AFTER * 1000


# ----------------------------------------------------------------------------- planning (intake, resume)

@dataclass(frozen=True)
class Plan:
    message_id: str
    token: str
    delay_ms: int
    scheduled_for: datetime | None
    reserved: bool


def plan(client: Client, entries: list[tuple[str, int, datetime | None]]) -> list[Plan]:
    """When each message's job should run: ``entries`` are ``(message_id, attempt, scheduled_at)``.

    For a client that may send now and is paced, the slots are reserved here (not granted: the job
    is granted its slot when it runs at it); a message with a future ``scheduled_at`` waits for
    that instead; a client that is not ready gets its jobs at once (they hold the messages)."""
    now_ms = pacing.now_ms()
    limits = Limits.of(client) if sendable(client) else None
    due = [(i, e) for i, e in enumerate(entries) if not (e[2] is not None and _ms(e[2]) > now_ms)]
    slots = {}
    if limits and due:
        got = pacing.acquire_many(client.id, now_ms, limits, [pacing.token_for(e[0], e[1]) for _, e in due],
                                  grant=False)
        slots = {i: s for (i, _), s in zip(due, got)}
    plans = []
    for i, (message_id, attempt, scheduled_at) in enumerate(entries):
        token = pacing.token_for(message_id, attempt)
        if i in slots:
            at = slots[i].at_ms
            plans.append(Plan(message_id, token, max(0, at - now_ms), _dt(at), True))
        elif scheduled_at is not None and _ms(scheduled_at) > now_ms:
            plans.append(Plan(message_id, token, _ms(scheduled_at) - now_ms, None, False))
        else:
            plans.append(Plan(message_id, token, 0, None, False))
    return plans


def enqueue_plans(session, plans: list[Plan]) -> None:
    schedule(session, [(p.message_id, p.delay_ms) for p in plans])


PARKED_KEY = "wa:msgs:parked"
_RELEASE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #due, 2 do redis.call('ZREM', KEYS[1], due[i]) end
return due
"""


def schedule(session, jobs: list[tuple[str, int]]) -> None:
    """Have ``messages.send`` run for each ``(message_id, delay_ms)``: through the outbox (sent
    after commit) when due within ``MESSAGE_PARK_AFTER``, else parked in Redis for the feeder
    (``release_parked``). Parking happens now; if the transaction then rolls back, the feeder
    later finds no message and nothing happens. A parking lot lost with Redis is recovered by
    the sweeper (``requeue_lost``) from the rows."""
    from app.kv import redis_client

    soon = [(m, d) for m, d in jobs if d <= _park_after_ms()]
    later = [(m, d) for m, d in jobs if d > _park_after_ms()]
    if soon:
        outbox.enqueue_many(session, SEND_ACTOR, [(m,) for m, _ in soon], queue_name=SEND_QUEUE,
                            delays_ms=[d for _, d in soon])
    if later:
        now = pacing.now_ms()
        redis_client().zadd(PARKED_KEY, {m: now + d for m, d in later})


def release_parked(limit: int = 10_000) -> int:
    """The feeder (``messages.release_parked``, periodic): move parked messages due within
    ``MESSAGE_PARK_AFTER`` into the broker, each delayed until its time."""
    import dramatiq

    from app.kv import redis_client

    now = pacing.now_ms()
    due = redis_client().eval(_RELEASE, 1, PARKED_KEY, now + _park_after_ms(), limit)
    broker = dramatiq.get_broker()
    for i in range(0, len(due), 2):
        message_id = due[i].decode() if isinstance(due[i], bytes) else due[i]
        delay = max(0, int(float(due[i + 1])) - now)
        broker.enqueue(dramatiq.Message(queue_name=SEND_QUEUE, actor_name=SEND_ACTOR, args=(message_id,), kwargs={},
                                        options={}), delay=delay or None)
    return len(due) // 2


def release_plans(client_id: str, plans: list[Plan]) -> None:
    pacing.release(client_id, *[p.token for p in plans if p.reserved])


def release_reservation(message: Message) -> None:
    """Give back the pacing slot a queued message reserved (cancelled, held)."""
    pacing.release(message.client_id, pacing.token_for(message.id, message.attempts))


def resume_client(session, client_id: str) -> int:
    """Contract 5: the client is ready again; send on every message that waited for it, in order,
    with fresh pacing slots. Called in the caller's transaction; returns how many."""
    client = session.get(Client, client_id)
    if client is None or not sendable(client):
        return 0
    rows = session.execute(select(Message.id, Message.attempts, Message.scheduled_at).where(
        Message.client_id == client_id, Message.status == "queued", Message.direction == "outbound")
        .order_by(Message.id)).all()
    now = utcnow()
    for start in range(0, len(rows), 5000):
        chunk = rows[start:start + 5000]
        plans = plan(client, [(r.id, r.attempts, r.scheduled_at) for r in chunk])
        session.execute(update(Message), [{"id": p.message_id, "scheduled_for": p.scheduled_for, "updated_at": now}
                                          for p in plans])
        enqueue_plans(session, plans)
    return len(rows)


# ----------------------------------------------------------------------------- the messages.send job

def _load(session, message_id: str):
    """(message, client, contact opted out?) of a message, or None."""
    return session.execute(select(Message, Client, Contact.opted_out)
                           .join(Client, Client.id == Message.client_id)
                           .outerjoin(Contact, Contact.id == Message.contact_id)
                           .where(Message.id == message_id)).first()


def _hold(session, message: Message, *granted: str) -> None:
    """The client cannot send: the message stays queued, without a slot, until resume_client."""
    pacing.release(message.client_id, pacing.token_for(message.id, message.attempts), *granted)
    if message.scheduled_for is not None:
        message.scheduled_for = None


def _host_queue(session, client_id: str) -> str | None:
    try:
        from workers.session_host import host_queue
    except ImportError:
        return None
    return host_queue(session, client_id)


def run_send_job(message_id: str) -> str:
    """The body of ``messages.send``; returns what happened (for logs and tests):
    missing, skipped, waiting, held, forwarded, repaced, sent, failed."""
    now = pacing.now_ms()
    granted = None
    with job_session() as session:
        found = _load(session, message_id)
        if found is None:
            return "missing"
        message, client, opted_out = found
        if message.status != "queued" or message.direction != "outbound":
            # a duplicate job may have reserved a slot for it meanwhile: give those back
            pacing.release(message.client_id, *[pacing.token_for(message.id, n) for n in range(message.attempts + 1)])
            return "skipped"
        if message.scheduled_at is not None and _ms(message.scheduled_at) > now:
            schedule(session, [(message.id, _ms(message.scheduled_at) - now)])
            return "waiting"
        if not sendable(client):
            _hold(session, message)
            return "held"
        limits = Limits.of(client)
        if limits:
            now = pacing.now_ms()  # the grant's moment: as late as possible before the claim
            slot = pacing.acquire(client.id, now, limits, pacing.token_for(message.id, message.attempts))
            if message.scheduled_for is None or _ms(message.scheduled_for) != slot.at_ms:
                message.scheduled_for = _dt(slot.at_ms)
            if not slot.granted:
                schedule(session, [(message.id, slot.at_ms - now)])
                return "waiting"
            granted = slot.member
        if client.transport in STATEFUL:
            host = _host_queue(session, client.id)
            if host is None:  # no live session host: wait for the client to be ready again
                _hold(session, message, *([granted] if granted else []))
                return "held"
            outbox.enqueue(session, SESSIONS_SEND, message.id, queue_name=host)
            return "forwarded"
        # sim / cloud: claim in this same transaction (right after the grant), send once committed
        outcome, prepared = _claim(session, message, client, opted_out)
        client_id = client.id
    if prepared is None:
        if granted and outcome != "repaced":  # not sent (a repaced grant was withdrawn already)
            pacing.release(client_id, granted)
        return outcome
    return _deliver(prepared, stateless_transport)


# ----------------------------------------------------------------------------- sending (contract 4)

@dataclass(frozen=True)
class _Prepared:
    message_id: str
    client_id: str
    attempt: int
    outbound: OutboundMessage


def perform_send(message_id: str, transport_for) -> str:
    """Claim ``message_id`` (queued -> sending), call ``transport_for(client_id).send``, record the
    result. Pacing has already happened (``messages.send``). Returns sent / failed, or skipped (not
    queued any more: another job has it, or it was cancelled), held (client not sendable) or
    repaced (its pacing slot is not now: ``messages.send`` was enqueued to pace it again).
    Raises ``TransientSendError`` after putting the message back to ``queued``, for a retry."""
    with job_session() as session:
        found = _load(session, message_id)
        if found is None:
            return "skipped"
        message, client, opted_out = found
        outcome, prepared = _claim(session, message, client, opted_out)
    if prepared is None:
        return outcome
    return _deliver(prepared, transport_for)


def _claim(session, message: Message, client: Client, opted_out: bool | None):
    """In the caller's transaction: the last checks, then ``queued -> sending``. Returns
    (outcome, None) when there is nothing to send, or ("claimed", what to send)."""
    if message.status != "queued" or message.direction != "outbound":
        return "skipped", None
    if not sendable(client):
        _hold(session, message)
        return "held", None
    now = pacing.now_ms()
    if Limits.of(client):
        # the send must start within the pad after its grant (``scheduled_for``), whatever delayed
        # this thread (a loaded machine) or the hand-over to a session host; else it is paced again,
        # keeping its place
        if message.scheduled_for is None:
            outbox.enqueue(session, SEND_ACTOR, message.id, queue_name=SEND_QUEUE)
            return "repaced", None
        if now - _ms(message.scheduled_for) > pacing.call_pad_ms():
            pacing.retake(client.id, pacing.token_for(message.id, message.attempts), _ms(message.scheduled_for))
            outbox.enqueue(session, SEND_ACTOR, message.id, queue_name=SEND_QUEUE)
            return "repaced", None
    if opted_out and not (message.idempotency_key or "").startswith(OPT_OUT_KEY_PREFIX):
        _fail(session, message.id, "queued", "contact_opted_out", "The contact opted out after this message was queued")
        return "failed", None
    at = _dt(now)
    claimed = session.execute(_CLAIM, {"id": message.id, "at": at}).first()
    if claimed is None:
        return "skipped", None
    return "claimed", _Prepared(claimed.id, client.id, claimed.attempts, build_outbound(session, claimed))


# One statement each for the two writes around the transport call (the hot path of every send).
_CLAIM = text("""
    WITH m AS (
        UPDATE messages SET status = 'sending', sending_at = :at, attempts = attempts + 1, updated_at = :at
        WHERE id = :id AND status = 'queued'
        RETURNING id, organization_id, attempts, to_phone, type, text, caption, media_id, template_id, variables),
    h AS (
        INSERT INTO message_status_history (organization_id, message_id, status, at, details)
        SELECT organization_id, id, 'sending', :at, jsonb_build_object('attempt', attempts) FROM m)
    SELECT * FROM m
""")
_SENT = text("""
    WITH m AS (
        UPDATE messages SET status = 'sent', sent_at = :at, external_id = :external_id, updated_at = :at,
                            error_code = NULL, error_message = NULL
        WHERE id = :id AND status = 'sending'
        RETURNING *),
    h AS (
        INSERT INTO message_status_history (organization_id, message_id, status, at, details)
        SELECT organization_id, id, 'sent', :at, jsonb_build_object('external_id', CAST(:external_id AS text)) FROM m),
    c AS (
        UPDATE contacts SET last_outbound_at = GREATEST(contacts.last_outbound_at, :at)
        FROM m WHERE contacts.id = m.contact_id)
    SELECT * FROM m
""")


def _deliver(prepared: _Prepared, transport_for) -> str:
    """Call the transport for a claimed (committed ``sending``) message and record the outcome.

    What the transport reports during the send (the simulator's receipts, due later) is collected
    and written with the ``sent`` record, in one transaction. Only ``TransientSendError`` means
    "not sent, try again"; any other exception may have come after the transport accepted the
    message, so it is never made sendable again: it is ``unknown`` until the transport is asked
    (``reconcile``) or an ack tells."""
    message_id = prepared.message_id
    transport = transport_for(prepared.client_id)
    sink = getattr(transport, "events", None)
    collecting = sink.batch() if isinstance(sink, InboxSink) else nullcontext([])
    with collecting as reports:
        try:
            result = transport.send(prepared.outbound)
        except PermanentSendError as exc:
            reports.clear()
            durably(lambda session: _fail(session, message_id, "sending", exc.code, str(exc)))
            return "failed"
        except TransientSendError as exc:
            reports.clear()
            if not _retry_later(message_id, prepared.attempt, exc):
                return "failed"
            raise
        except Exception as exc:  # a transport bug, or a failure after the message went out
            log.warning("send of %s raised %s: its outcome is unknown", message_id, exc.__class__.__name__,
                        exc_info=True)
            pending = list(reports)
            reports.clear()
            durably(lambda session: (record(session, pending),
                                     _mark_unknown(session, message_id, "transport_error",
                                                   f"{exc.__class__.__name__}: {exc}"[:500])))
            return "unknown"
        pending = list(reports)
        reports.clear()
    if not durably(lambda session: (record(session, pending), _record_sent(session, message_id, result.external_id))):
        log.error("send of %s went out (%s) but could not be recorded; the sweeper will ask the transport",
                  message_id, result.external_id)
    return "sent"


#: how long a worker keeps trying to record the outcome of a send while the database is away
RECORD_PATIENCE_S = 30.0


def durably(work, patience_s: float | None = None) -> bool:
    """Run ``work(session)`` in a transaction, retried with backoff while the database is
    unreachable (at most ``patience_s``): the outcome of a send that happened must not be lost to
    a database blip. False when it never succeeded (the sweeper then reconciles the message)."""
    from app.db import OperationalErrors

    deadline = time.monotonic() + (RECORD_PATIENCE_S if patience_s is None else patience_s)
    pause = 0.2
    while True:
        try:
            with job_session() as session:
                work(session)
            return True
        except OperationalErrors as exc:
            if time.monotonic() + pause > deadline:
                log.error("database unavailable for %.0f s; giving up recording (%s)", RECORD_PATIENCE_S,
                          exc.__class__.__name__)
                return False
            log.warning("database unavailable (%s); recording again in %.1f s", exc.__class__.__name__, pause)
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _mark_unknown(session, message_id: str, code: str, text: str) -> Message | None:
    """``sending`` -> ``unknown``: it may or may not have reached WhatsApp. Never sent again; a
    ``messages.reconcile`` job asks the transport, and any ack moves it to the truth."""
    now = utcnow()
    row = session.scalars(
        update(Message).where(Message.id == message_id, Message.status == "sending")
        .values(status="unknown", error_code=code[:100], error_message=text[:1000], updated_at=now)
        .returning(Message), execution_options={"populate_existing": True, "synchronize_session": False}).first()
    if row is not None:
        record_status(session, row, "unknown", at=now, details={"code": code})
        outbox.enqueue(session, RECONCILE_ACTOR, row.id, queue_name="default", delay_ms=RECONCILE_FIRST_MS)
    return row


def _fail(session, message_id: str, from_status: str, code: str, text: str | None) -> Message | None:
    now = utcnow()
    row = session.scalars(
        update(Message).where(Message.id == message_id, Message.status == from_status)
        .values(status="failed", error_code=(code or "send_failed")[:100], error_message=(text or None) and text[:1000],
                failed_at=now, updated_at=now)
        .returning(Message), execution_options={"populate_existing": True, "synchronize_session": False}).first()
    if row is not None:
        record_status(session, row, "failed", at=now, details={"code": row.error_code})
    return row


def _retry_later(message_id: str, attempt: int, exc: TransientSendError) -> bool:
    """Back to ``queued`` for another (paced) attempt: True; or ``failed`` once the attempts are
    used up: False. (The transport said it did not send: a retry cannot make a duplicate.)"""
    if attempt >= settings.MESSAGE_MAX_ATTEMPTS:
        durably(lambda session: _fail(session, message_id, "sending", exc.code, f"{exc} (after {attempt} attempts)"))
        return False
    requeued = []
    if not durably(lambda session: requeued.append(requeue_after_error(session, message_id, attempt, exc.code,
                                                                        str(exc)))):
        return False
    return bool(requeued and requeued[-1])


def requeue_after_error(session, message_id: str, attempt: int, code: str, text: str) -> bool:
    """``sending`` (or ``unknown``, when the transport said it never got it) -> ``queued``."""
    from app.messages.models import MessageStatusHistory

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


def _record_sent(session, message_id: str, external_id: str, at: datetime | None = None) -> None:
    from app.webhooks.events import emit

    row = session.execute(_SENT, {"id": message_id, "at": at or utcnow(), "external_id": external_id}).first()
    if row is None:
        # reconciled meanwhile (unknown, or a late ack): keep the transport's id, and let an
        # unknown message know it went out
        session.execute(update(Message).where(Message.id == message_id).values(external_id=external_id),
                        execution_options={"synchronize_session": False})
        from app.messages.service import apply_ack

        message = session.get(Message, message_id)
        if message is not None and message.status == "unknown":
            apply_ack(session, message.client_id, external_id, "sent", at=at, message_id=message_id)
        return
    emit(session, row.organization_id, "message.sent", dump(row))


def build_outbound(session, message) -> OutboundMessage:
    """What the transport sends for ``message`` (a Message or a row of its columns)."""
    from app.media.models import Media
    from app.templates.models import Template

    media = template = None
    if message.media_id:
        row = session.get(Media, message.media_id)
        if row is not None:
            media = media_ref(session, row)
    if message.template_id:
        row = session.get(Template, message.template_id)
        if row is not None:
            template = {"name": row.name, "language": row.language, "body": render_template(row.body, message.variables),
                        "variables": dict(message.variables or {})}
    return OutboundMessage(message_id=message.id, to=message.to_phone, type=message.type, text=message.text,
                           caption=message.caption, media=media, template=template)


def media_ref(session, media) -> MediaRef:
    """A ``MediaRef`` of a media row; the media service fills in where the bytes are when it can
    (``app.media.service.media_ref``)."""
    try:
        from app.media.service import media_ref as stored_ref
    except ImportError:
        stored_ref = None
    if stored_ref is not None:
        return stored_ref(session, media)
    return MediaRef(media_id=media.id, mime_type=media.mime_type, filename=media.filename, size=media.size_bytes)


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
        from app.clients.service import load_client_info

        with job_session() as session:
            info = load_client_info(session, client_id)
        transport = transport_class(info.transport)(info, _sink)
        if len(cache) > 1000:
            cache.clear()
        cache[client_id] = (time.monotonic() + self.TTL_S, transport)
        return transport


_sink = InboxSink()
stateless_transport = _StatelessTransports()


# ----------------------------------------------------------------------------- the sweeper

RECONCILE_ACTOR = "messages.reconcile"
#: the first question to the transport about a message whose send ended in doubt
RECONCILE_FIRST_MS = 5_000
#: how long ``unknown`` messages are asked about again (by the sweeper), after which they stay
#: unknown until an ack comes
RECONCILE_FOR = timedelta(days=1)


def interrupted(session, older_than_s: float | None = None, limit: int = 1000) -> int:
    """``sending`` rows older than the timeout (their worker died mid-send, or could not record
    the outcome) become ``unknown`` (code ``interrupted``) and the transport is asked about them;
    they are never resent unless the transport is certain it never got them."""
    older_than_s = settings.MESSAGE_SENDING_TIMEOUT if older_than_s is None else older_than_s
    stuck = list(session.scalars(select(Message.id).where(
        Message.status == "sending", Message.sending_at < func.now() - timedelta(seconds=older_than_s))
        .limit(limit).with_for_update(skip_locked=True)))
    for message_id in stuck:
        _mark_unknown(session, message_id, "interrupted",
                      "The worker stopped while sending; the transport is asked whether the message went out")
    if stuck:
        log.warning("sweeper: %d message(s) interrupted mid-send are unknown until the transport tells", len(stuck))
    return len(stuck)


#: a ``sent`` message whose receipts have not come after this long is asked about (transports
#: that know receipts: ``KNOWS_RECEIPTS``)
RECEIPTS_OVERDUE = timedelta(minutes=10)


def reconcile_unknown(session, limit: int = 500) -> int:
    """Ask again (periodic) about ``unknown`` messages of the last ``RECONCILE_FOR``, and about
    ``sent`` ones whose receipts are overdue where the transport can tell; each at most every
    ``RECEIPTS_OVERDUE`` once it was asked (asking touches ``updated_at``)."""
    doubtful = or_(and_(Message.status == "unknown",
                        Message.updated_at < func.now() - timedelta(milliseconds=RECONCILE_FIRST_MS)),
                   and_(Message.status == "sent", Client.transport.in_(sorted(KNOWS_RECEIPTS)),
                        Message.updated_at < func.now() - RECEIPTS_OVERDUE))
    ids = list(session.scalars(select(Message.id).join(Client, Client.id == Message.client_id).where(
        Message.direction == "outbound", doubtful, Message.updated_at > func.now() - RECONCILE_FOR,
        Client.transport.notin_(STATEFUL)).order_by(Message.updated_at).limit(limit)))
    if ids:
        session.execute(update(Message).where(Message.id.in_(ids), Message.status == "sent")
                        .values(updated_at=func.now()), execution_options={"synchronize_session": False})
    outbox.enqueue_many(session, RECONCILE_ACTOR, [(i,) for i in ids], queue_name="default")
    return len(ids)


def reconcile(message_id: str) -> str:
    """``messages.reconcile``: ask the transport whether an ``unknown`` message went out (or how far
    a ``sent`` one whose receipts are overdue got). Sent: the truth is recorded (with the receipts
    it knows of); certainly not sent: queued again; can't tell: stays as it is. Returns what
    happened."""
    from app.clients.service import load_client_info
    from app.messages.service import apply_ack

    with job_session() as session:
        message = session.get(Message, message_id)
        if message is None or message.status not in ("unknown", "sent") or message.direction != "outbound":
            return "skipped"
        info = load_client_info(session, message.client_id)
        if info.transport in STATEFUL:
            return "unknown"  # a browser session is asked by its own acks
        attempted_at = message.sending_at
    found = transport_class(info.transport)(info, _sink).lookup(message_id, attempted_at)  # may raise: retried
    if found is None:
        return "unknown"
    with job_session() as session:
        message = session.get(Message, message_id, with_for_update=True, populate_existing=True)
        if message is None or message.status not in ("unknown", "sent"):
            return "skipped"
        if not found.sent:
            if message.status == "sent":
                return "sent"  # we recorded it sent: a network that forgot it does not undo that
            requeue_after_error(session, message_id, message.attempts, message.error_code or "interrupted",
                                "the transport never received it")
            schedule(session, [(message_id, 0)])
            return "requeued"
        status = found.status or "sent"
        for step in ("sent", "delivered", "read"):  # each step at its own time
            apply_ack(session, message.client_id, found.external_id, step, at=found.times.get(step),
                      message_id=message_id)
            if step == status:
                break
        return status


def requeue_lost(session, lost_after_s: float | None = None, limit: int = 5000) -> int:
    """``queued`` messages of sendable clients whose due time passed ``lost_after_s`` ago with
    nothing happening: their job was lost (Redis lost it, or a crash outlived the outbox). They get
    a new one (a duplicate is harmless: the claim happens once)."""
    from workers.broker import queue_head_ms

    lost_after_s = settings.MESSAGE_LOST_AFTER if lost_after_s is None else lost_after_s
    # a backlog is not a loss: a job due before the one at the head of the queue has had its turn
    head = _dt(queue_head_ms(SEND_QUEUE)) - timedelta(seconds=lost_after_s)
    cutoff = func.least(func.now() - timedelta(seconds=lost_after_s), head)
    ids = session.scalars(
        select(Message.id).join(Client, Client.id == Message.client_id)
        .where(Message.status == "queued", Message.direction == "outbound",
               Client.status == "ready", Client.paused.is_(False), Client.deleted_at.is_(None),
               func.greatest(Message.scheduled_for, Message.scheduled_at, Message.updated_at) < cutoff)
        .order_by(Message.id).limit(limit).with_for_update(of=Message, skip_locked=True)).all()
    if not ids:
        return 0
    session.execute(update(Message).where(Message.id.in_(ids)).values(updated_at=func.now()),
                    execution_options={"synchronize_session": False})
    outbox.enqueue_many(session, SEND_ACTOR, [(i,) for i in ids], queue_name=SEND_QUEUE)
    log.warning("sweeper: re-enqueued %d queued message(s) whose job was lost", len(ids))
    return len(ids)


def reschedule_queued(session, after_id: str = "", limit: int = 5000) -> list[str]:
    """Every ``queued`` message of sendable clients (from ``after_id``, at most ``limit``) gets a
    new job at its time (its slot or ``scheduled_at``, else now): for a broker that lost all of
    them, delayed and parked ones included. Returns the ids, to go on from the last."""
    rows = session.execute(
        select(Message.id, Message.scheduled_for, Message.scheduled_at).join(Client, Client.id == Message.client_id)
        .where(Message.status == "queued", Message.direction == "outbound", Message.id > after_id,
               Client.status == "ready", Client.paused.is_(False), Client.deleted_at.is_(None))
        .order_by(Message.id).limit(limit)).all()
    now = pacing.now_ms()
    schedule(session, [(r.id, max([0] + [_ms(t) - now for t in (r.scheduled_for, r.scheduled_at) if t])) for r in rows])
    return [r.id for r in rows]


def sweep(session, *, sending_timeout_s: float | None = None, lost_after_s: float | None = None) -> dict:
    """Everything the periodic ``messages.sweep`` does, in the caller's transaction."""
    from app import idempotency

    return {"interrupted": interrupted(session, sending_timeout_s),
            "reconciling": reconcile_unknown(session),
            "requeued": requeue_lost(session, lost_after_s),
            "idempotency_keys_purged": idempotency.purge_expired(session)}
