"""Sends in batches, for clients that are not paced and send over a stateless transport (sim, cloud).

Such a client has no pacing slot to wait for, so a job per message would only add a broker hop, a
load and a transaction per message. Its new messages due now get one ``messages.send_due`` job per
intake instead (app/messages/planning.py), which claims the client's waiting first attempts in
batches of ``MESSAGE_SEND_BATCH`` (``queued -> sending`` in one statement, committed before the
transport is called, like a single claim), sends each, and records the sends in one statement.

What stays per message (``messages.send``): retries (a transient error hands the message to its own
job, with backoff), scheduled messages, campaigns' messages, paced clients and session hosts.

Nothing is lost or sent twice whatever stops: rows are claimed once (``FOR UPDATE SKIP LOCKED``,
then ``status = 'queued'``), so jobs running side by side share a backlog; a worker killed
mid-batch leaves its claimed rows in ``sending``, which the sweeper makes ``unknown`` and asks the
transport about (app/messages/sweeper.py), exactly as for one send; a ``send_due`` job lost with
the broker is made up by the sweeper's lost-job pass, which gives each waiting message a job.
"""
from __future__ import annotations

import logging
import time
from collections import Counter

from sqlalchemy import text
from sqlalchemy.orm import Session

from app import outbox
from app.clients.models import Client
from app.db import job_session, utcnow
from app.inbox.service import record
from app.messages.dispatch import (
    CLAIM,
    Prepared,
    Sent,
    call_transport,
    collecting,
    retry_later,
    stateless_transport,
)
from app.messages.outbound import build_outbound
from app.messages.planning import SEND_DUE_ACTOR, replan, schedule, takes_batches
from app.messages.recording import durably, record_sent_many
from app.messages.tracking import OPT_OUT_KEY_PREFIX, sendable
from app.transports.base import TransientSendError
from config import settings

log = logging.getLogger(__name__)

#: how long one ``send_due`` job goes on before it hands the rest of a backlog to a new job (so a
#: worker stopping is not kept waiting, and other clients' jobs get threads)
SEND_DUE_BUDGET_S = 5.0

#: after a transient error, how long the rest of a client's backlog waits before the next batch
RETRY_PAUSE_MS = 1000

#: the messages a batch takes: first attempts due now, not a campaign's, in order
_WAITING = """
    m.client_id = :client AND m.status = 'queued' AND m.direction = 'outbound' AND m.campaign_id IS NULL
    AND m.attempts = 0 AND (m.scheduled_at IS NULL OR m.scheduled_at <= :at)"""

# the next batch, locked; ``refused``: its contact opted out since (the message's own job fails it)
_PICK = text(f"""
    SELECT m.id, (COALESCE(c.opted_out, FALSE) AND COALESCE(m.idempotency_key, '') NOT LIKE :opt_out) AS refused
      FROM messages AS m LEFT JOIN contacts AS c ON c.id = m.contact_id
     WHERE {_WAITING}
     ORDER BY m.id LIMIT :n
       FOR UPDATE OF m SKIP LOCKED
""")

_WAITING_ROWS = text(f"SELECT m.id, m.attempts, m.scheduled_at FROM messages AS m WHERE {_WAITING} ORDER BY m.id")


def run_send_due(client_id: str) -> Counter:
    """The body of ``messages.send_due``: batches of ``client_id``'s waiting messages until none is
    left or ``SEND_DUE_BUDGET_S`` has passed (then a new job goes on). Returns the outcomes."""
    deadline = time.monotonic() + SEND_DUE_BUDGET_S
    outcomes: Counter = Counter()
    while True:
        claimed, stop = send_batch(client_id, outcomes)
        if stop and outcomes["retrying"]:
            # the transport is failing: those messages retry on their own, the rest goes on in a moment
            _send_due_later(client_id, RETRY_PAUSE_MS)
            return outcomes
        if stop or claimed < settings.MESSAGE_SEND_BATCH:
            return outcomes
        if time.monotonic() > deadline:
            _send_due_later(client_id, None)
            return outcomes


def _send_due_later(client_id: str, delay_ms: int | None) -> None:
    with job_session() as session:
        outbox.enqueue(session, SEND_DUE_ACTOR, client_id, delay_ms=delay_ms)


def send_batch(client_id: str, outcomes: Counter) -> tuple[int, bool]:
    """Claim, send and record one batch; (how many were claimed, whether to stop here)."""
    with job_session() as session:
        client = session.get(Client, client_id)
        if client is None or not sendable(client):
            outcomes["held"] += 1  # they wait, queued: resume_client sends them when it is ready again
            return 0, True
        if not takes_batches(client):  # paced (or moved to a session host) since: one job each
            outcomes["replanned"] += _replan_waiting(session, client)
            return 0, True
        at = utcnow()
        picked = session.execute(_PICK, {"client": client_id, "at": at, "n": settings.MESSAGE_SEND_BATCH,
                                         "opt_out": OPT_OUT_KEY_PREFIX + "%"}).all()
        refused = [r.id for r in picked if r.refused]
        if refused:
            schedule(session, [(i, 0) for i in refused])
            outcomes["refused"] += len(refused)
        ids = [r.id for r in picked if not r.refused]
        rows = session.execute(CLAIM, {"ids": ids, "at": at}).all() if ids else []
        prepared = [Prepared(r.id, client_id, r.attempts, build_outbound(session, r), dict(r._mapping))
                    for r in rows]
    if prepared:
        _send(prepared, outcomes)
    return len(picked), outcomes["retrying"] > 0


def _send(batch: list[Prepared], outcomes: Counter) -> None:
    transport = stateless_transport(batch[0].client_id)
    sent: list[Sent] = []
    retry: list[tuple[Prepared, TransientSendError]] = []
    with collecting(transport) as reports:
        for prepared in batch:
            called = call_transport(prepared, transport, reports)
            if isinstance(called, Sent):
                sent.append(called)
            elif isinstance(called, TransientSendError):
                retry.append((prepared, called))
            else:
                outcomes[called] += 1

    def record_sends(session: Session) -> None:
        record(session, [r for s in sent for r in s.reports])
        record_sent_many(session, [(s.prepared.row, s.external_id) for s in sent])

    if sent:
        if durably(record_sends):
            outcomes["sent"] += len(sent)
        else:
            log.error("%d sends went out but could not be recorded; the sweeper will ask the transport", len(sent))
    for prepared, exc in retry:
        # queued again with a job of its own, which retries it with backoff (or failed: no attempt left)
        requeued = retry_later(prepared.message_id, prepared.attempt, exc, own_job=True)
        outcomes["retrying" if requeued else "failed"] += 1


def _replan_waiting(session: Session, client: Client) -> int:
    """Waiting messages of a client that no longer takes batches get a job each, with slots."""
    rows = session.execute(_WAITING_ROWS, {"client": client.id, "at": utcnow()}).all()
    replan(session, client, rows)
    return len(rows)

