"""What the workers do for campaigns: fan-out, hold, resume, cancel, rebalance, start and finish.

**Fan-out** (``campaigns.fan_out``, pool ``default``) walks the audience in contact-id order, a
chunk per transaction: one ordinary message per recipient through the message pipeline's intake
(``accept_messages``: paced, parked, tracked, ``message.queued``), keyed ``cmp_<campaign>_<contact>``
so that no recipient ever gets a second message, whatever runs twice; then a recipient row per
contact (unique per campaign and contact) with its message, or why it was skipped (opted out, over
the frequency cap, a variable without a value) or refused. The chunk commits with the campaign's ``fanout_cursor``, so a
fan-out that dies goes on from its last chunk (``tick`` sends it again when it stalls); one holds
the campaign's advisory lock while it runs, so two never interleave.

A recipient's status then follows its message's (a database trigger), and the campaign's counters
follow the recipients' (another): progress is exact and costs no scan. ``tick`` (periodic) starts
due scheduled campaigns (each locked and begun in one transaction: exactly once whatever the
number of schedulers),
completes running ones with nothing left, and moves the queued messages of clients that dropped
out (banned, logged out, stopped, deleted) to the campaign's other clients. Replies are counted by
app/campaigns/replies.py.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from app import outbox
from app.campaigns import audience as audiences
from app.campaigns import windows
from app.campaigns.content import item_for, key_of
from app.campaigns.models import Campaign, CampaignRecipient, clients_of
from app.campaigns.service import FAN_OUT_ACTOR, _emit, begin
from app.campaigns.statuses import DROPPED_OUT
from app.clients.models import Client
from app.db import job_session, utcnow
from app.messages import pacing, planning
from app.messages.models import Message
from app.messages.tracking import sendable
from app.security.principal import SystemPrincipal
from app.templates.models import Template
from config import settings

log = logging.getLogger(__name__)



# ----------------------------------------------------------------------------- fan-out

def run_fan_out(campaign_id: str, max_chunks: int | None = None) -> int:
    """``campaigns.fan_out``: every chunk left, while the campaign runs. Returns recipients written."""
    written = 0
    with job_session() as lock_session:
        if not lock_session.scalar(select(func.pg_try_advisory_lock(func.hashtext("campaign:" + campaign_id)))):
            return 0  # another fan-out of this campaign is running
        try:
            chunks = 0
            while max_chunks is None or chunks < max_chunks:
                with job_session() as session:
                    n, done = fan_out_chunk(session, campaign_id)
                written += n
                chunks += 1
                if done:
                    break
        finally:
            lock_session.execute(select(func.pg_advisory_unlock(func.hashtext("campaign:" + campaign_id))))
            lock_session.commit()
    return written


def usable(client: Client) -> bool:
    """Whether a client still takes a campaign's share (one that is only not ready now waits)."""
    return client.deleted_at is None and client.status not in DROPPED_OUT


def fan_out_chunk(session: Session, campaign_id: str) -> tuple[int, bool]:
    """One chunk, in the caller's transaction: (recipients written, fan-out done?)."""
    campaign = session.scalars(select(Campaign).where(Campaign.id == campaign_id).with_for_update()).first()
    if campaign is None or campaign.status != "running" or campaign.fanout_done_at is not None:
        return 0, True
    org = campaign.organization_id
    clients = [c for c in clients_of(session, campaign.id) if usable(c)]
    if not clients:
        fail(session, campaign, "Every client of the campaign dropped out (banned, logged out, stopped or deleted)")
        return 0, True
    template = session.get(Template, campaign.template_id) if campaign.template_id else None
    if campaign.template_id and (template is None or template.deleted_at is not None):
        fail(session, campaign, "The campaign's template was deleted")
        return 0, True
    # one fan-out at a time per organisation: the frequency cap counts every campaign's messages
    session.execute(select(func.pg_advisory_xact_lock(func.hashtext("campaign-fanout:" + org))))
    size = settings.CAMPAIGN_FANOUT_CHUNK
    rows = session.execute(audiences.chunk(org, campaign.audience or {}, campaign.fanout_cursor or "", size)).all()
    if rows:
        _write_chunk(session, campaign, template, clients, rows)
        campaign.fanout_cursor = rows[-1].id
    done = len(rows) < size
    now = utcnow()
    if done:
        campaign.fanout_done_at = now
    campaign.updated_at = now
    return len(rows), done


_INSERT_RECIPIENTS = text("""
    INSERT INTO campaign_recipients (organization_id, campaign_id, contact_id, status, reason, client_id, message_id,
                                     created_at, updated_at)
    SELECT :org, :campaign, u.contact_id, u.status, u.reason, u.client_id, u.message_id, :now, :now
      FROM unnest(CAST(:contacts AS text[]), CAST(:statuses AS text[]), CAST(:reasons AS text[]),
                  CAST(:clients AS text[]), CAST(:messages AS text[]))
           AS u(contact_id, status, reason, client_id, message_id)
    ON CONFLICT ON CONSTRAINT campaign_recipients_campaign_contact_key DO NOTHING
""")


def _capped(session: Session, campaign: Campaign, contact_ids: list[str]) -> set[str]:
    cap = campaign.frequency_cap
    if not cap or not contact_ids:
        return set()
    since = utcnow() - timedelta(hours=int(cap["hours"]))
    counts = session.execute(
        select(Message.contact_id, func.count()).where(
            Message.organization_id == campaign.organization_id, Message.contact_id.in_(contact_ids),
            Message.campaign_id.is_not(None), Message.campaign_id != campaign.id, Message.direction == "outbound",
            Message.created_at >= since, Message.status.not_in(("failed", "cancelled")))
        .group_by(Message.contact_id)).all()
    return {cid for cid, n in counts if n >= int(cap["max"])}


def _write_chunk(session: Session, campaign: Campaign, template: Template | None, clients: list[Client],
                 rows: Sequence[Any]) -> None:
    from app.messages.service import accept_messages

    now = utcnow()
    written = set(session.scalars(select(CampaignRecipient.contact_id).where(  # a range of the unique index
        CampaignRecipient.campaign_id == campaign.id, CampaignRecipient.contact_id >= rows[0].id,
        CampaignRecipient.contact_id <= rows[-1].id)))
    rows = [r for r in rows if r.id not in written]  # a recipient written before keeps its message
    capped = _capped(session, campaign, [r.id for r in rows if not r.opted_out])
    outcome: dict[str, tuple[str, str | None, str | None, str | None]] = {}  # contact -> (status, reason, client, msg)
    by_client: dict[str, list[tuple[Any, dict]]] = {c.id: [] for c in clients}
    window = campaign.send_window
    for i, r in enumerate(rows):
        if r.opted_out:
            outcome[r.id] = ("skipped", "opted_out", None, None)
            continue
        if r.id in capped:
            outcome[r.id] = ("skipped", "frequency_cap", None, None)
            continue
        item, missing = item_for(campaign, template, r.phone, r)
        if missing:
            outcome[r.id] = ("skipped", f"missing_variables: {', '.join(missing)}", None, None)
            continue
        if window:
            opens = windows.next_open(window, (r.attributes or {}).get("timezone"), now)
            if opens > now:
                item["scheduled_at"] = opens
        by_client[clients[i % len(clients)].id].append((r, item))
    principal = SystemPrincipal(campaign.organization_id)
    for client in clients:
        batch = by_client[client.id]
        if not batch:
            continue
        results = accept_messages(session, principal, client, [item for _, item in batch], campaign_id=campaign.id,
                                  keys=[key_of(campaign.id, r.id) for r, _ in batch],
                                  known_contacts={r.phone: (r.id, False) for r, _ in batch})
        for (r, _), result in zip(batch, results, strict=True):
            if "error" in result:
                code = result["error"]["code"]
                status = "skipped" if code == "contact_opted_out" else "failed"
                outcome[r.id] = (status, f"{code}: {result['error']['message']}"[:500], client.id, None)
            else:
                outcome[r.id] = ("queued", None, client.id, result["id"])
    if outcome:  # each recipient written once, with what became of it
        ids = list(outcome)
        session.execute(_INSERT_RECIPIENTS, {
            "org": campaign.organization_id, "campaign": campaign.id, "now": now, "contacts": ids,
            "statuses": [outcome[i][0] for i in ids], "reasons": [outcome[i][1] for i in ids],
            "clients": [outcome[i][2] for i in ids], "messages": [outcome[i][3] for i in ids]})


def fail(session: Session, campaign: Campaign, why: str) -> None:
    """The campaign cannot go on: ``failed``; its queued messages are cancelled."""
    from app.audit.service import record

    campaign.status, campaign.last_error, campaign.updated_at = "failed", why[:1000], utcnow()
    record(session, None, "campaign.fail", organization_id=campaign.organization_id, target_type="campaign",
           target_id=campaign.id, changes={"reason": why})
    outbox.enqueue(session, "campaigns.cancel_rest", campaign.id)
    log.warning("campaign %s failed: %s", campaign.id, why)


# ----------------------------------------------------------------------------- hold, resume, cancel

def _queued(session: Session, campaign_id: str, after_id: str, limit: int = 5_000) -> Sequence[Any]:
    return session.execute(select(Message.id, Message.client_id, Message.attempts, Message.scheduled_at)
                           .where(Message.campaign_id == campaign_id, Message.status == "queued",
                                  Message.id > after_id).order_by(Message.id).limit(limit)).all()


def run_hold(campaign_id: str) -> int:
    """``campaigns.hold`` (after a pause): the queued messages give back their sending slots, so
    the clients' other messages do not wait behind them. Returns how many."""
    held, after = 0, ""
    while True:
        with job_session() as session:
            if session.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) != "paused":
                return held
            rows = _queued(session, campaign_id, after)
            if not rows:
                return held
            session.execute(update(Message).where(Message.id.in_([r.id for r in rows]), Message.status == "queued")
                            .values(scheduled_for=None), execution_options={"synchronize_session": False})
        _release_slots(rows)
        held += len(rows)
        after = rows[-1].id


def run_resume(campaign_id: str) -> int:
    """``campaigns.resume``: the queued messages get new slots and jobs, in order."""
    resumed, after = 0, ""
    while True:
        with job_session() as session:
            if session.scalar(select(Campaign.status).where(Campaign.id == campaign_id)) != "running":
                return resumed
            rows = _queued(session, campaign_id, after)
            if not rows:
                return resumed
            _replan(session, rows)
        resumed += len(rows)
        after = rows[-1].id


def _replan(session: Session, rows: Sequence[Any]) -> None:
    by_client: dict[str, list] = {}
    for r in rows:
        by_client.setdefault(r.client_id, []).append(r)
    for client_id, mine in by_client.items():
        client = session.get(Client, client_id)
        if client is not None:
            planning.replan(session, client, mine)


def _release_slots(rows: Sequence[Any], client_of=lambda r: r.client_id) -> None:
    """Give back the pacing reservations of queued messages (rows with ``id`` and ``attempts``)."""
    by_client: dict[str, list[str]] = {}
    for r in rows:
        by_client.setdefault(client_of(r), []).append(pacing.token_for(r.id, r.attempts))
    for client_id, tokens in by_client.items():
        pacing.release(client_id, *tokens)


def run_cancel_rest(campaign_id: str) -> int:
    """``campaigns.cancel_rest`` (after a cancel, or a failure): every message not sent yet is
    ``cancelled`` (with its history row), recipients without one too. Returns how many messages."""
    cancelled = 0
    while True:
        with job_session() as session:
            status = session.scalar(select(Campaign.status).where(Campaign.id == campaign_id))
            if status not in ("cancelled", "failed"):
                return cancelled
            now = utcnow()
            rows = session.execute(text("""
                WITH m AS (
                    UPDATE messages SET status = 'cancelled', cancelled_at = :now, updated_at = :now
                     WHERE id IN (SELECT id FROM messages WHERE campaign_id = :c AND status = 'queued'
                                  ORDER BY id LIMIT 5000 FOR UPDATE SKIP LOCKED)
                       AND status = 'queued'
                    RETURNING id, organization_id, client_id, attempts),
                h AS (
                    INSERT INTO message_status_history (organization_id, message_id, status, at, details)
                    SELECT organization_id, id, 'cancelled', :now, jsonb_build_object('campaign', CAST(:c AS text))
                      FROM m)
                SELECT id, client_id, attempts FROM m
            """), {"c": campaign_id, "now": now}).all()
            if not rows:
                session.execute(update(CampaignRecipient).where(CampaignRecipient.campaign_id == campaign_id,
                                                                CampaignRecipient.status == "pending")
                                .values(status="cancelled", updated_at=now))
        if not rows:
            return cancelled
        _release_slots(rows)
        cancelled += len(rows)


# ----------------------------------------------------------------------------- the periodic tick

def start_due(session: Session) -> list[str]:
    """Scheduled campaigns whose time came, begun. Each is locked (``SKIP LOCKED``) and begun in
    this transaction, so two schedulers' ticks can never start one twice."""
    rows = session.scalars(select(Campaign).where(Campaign.status == "scheduled", Campaign.scheduled_at <= func.now(),
                                                  Campaign.deleted_at.is_(None))
                           .order_by(Campaign.scheduled_at).limit(100).with_for_update(skip_locked=True)).all()
    for campaign in rows:
        begin(session, campaign, None)
    return [c.id for c in rows]


def complete_finished(session: Session) -> list[str]:
    """Running campaigns whose fan-out is done and whose every recipient has left: completed."""
    rows = session.scalars(select(Campaign).where(Campaign.status == "running", Campaign.fanout_done_at.is_not(None),
                                                  Campaign.pending_count == 0, Campaign.queued_count == 0)
                           .with_for_update(skip_locked=True)).all()
    from app.audit.service import record

    for campaign in rows:
        now = utcnow()
        campaign.status, campaign.completed_at, campaign.updated_at = "completed", now, now
        record(session, None, "campaign.complete", organization_id=campaign.organization_id,
               target_type="campaign", target_id=campaign.id, changes={"status": "completed"})
        _emit(session, campaign, "campaign.completed")
    return [c.id for c in rows]


def restart_stalled(session: Session) -> list[str]:
    """Running campaigns whose fan-out has not moved for a minute (its worker died): sent again."""
    ids = list(session.scalars(select(Campaign.id).where(
        Campaign.status == "running", Campaign.fanout_done_at.is_(None),
        Campaign.updated_at < func.now() - timedelta(seconds=settings.CAMPAIGN_FANOUT_STALLED_AFTER))))
    if ids:
        outbox.enqueue_many(session, FAN_OUT_ACTOR, [(i,) for i in ids])
    return ids


def rebalance(session: Session) -> int:
    """Queued messages of running campaigns on clients that dropped out move to the campaign's
    other clients (round robin), with new slots there. Returns how many moved."""
    stuck = session.execute(text(f"""
        SELECT m.id, m.campaign_id, m.attempts, m.scheduled_at, m.client_id AS old_client
          FROM messages AS m JOIN clients AS c ON c.id = m.client_id
          JOIN campaigns AS cp ON cp.id = m.campaign_id
         WHERE m.campaign_id IS NOT NULL AND m.status = 'queued' AND cp.status = 'running'
           AND (c.deleted_at IS NOT NULL OR c.status IN ({", ".join(f"'{s}'" for s in DROPPED_OUT)}))
         ORDER BY m.id LIMIT 5000 FOR UPDATE OF m SKIP LOCKED
    """)).all()
    if not stuck:
        return 0
    moved = 0
    by_campaign: dict[str, list] = {}
    for r in stuck:
        by_campaign.setdefault(r.campaign_id, []).append(r)
    now = utcnow()
    for campaign_id, rows in by_campaign.items():
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        targets = [c for c in clients_of(session, campaign.id) if usable(c)]
        if not targets:
            fail(session, campaign, "Every client of the campaign dropped out (banned, logged out, stopped or deleted)")
            continue
        _release_slots(rows, client_of=lambda r: r.old_client)
        moves = [(r, targets[i % len(targets)]) for i, r in enumerate(rows)]
        session.execute(update(Message), [{"id": r.id, "client_id": t.id, "from_phone": t.phone, "scheduled_for": None,
                                           "updated_at": now} for r, t in moves])
        session.execute(text("""
            UPDATE campaign_recipients AS r SET client_id = u.client_id, updated_at = :now
              FROM unnest(CAST(:ids AS text[]), CAST(:clients AS text[])) AS u(message_id, client_id)
             WHERE r.message_id = u.message_id
        """), {"now": now, "ids": [r.id for r, _ in moves], "clients": [t.id for _, t in moves]})
        for target in targets:
            mine = [r for r, t in moves if t.id == target.id]
            if mine and sendable(target):
                planning.replan(session, target, mine)
        moved += len(moves)
        log.info("campaign %s: %d queued message(s) moved off clients that dropped out", campaign_id, len(moves))
    return moved


def run_tick() -> dict:
    """``campaigns.tick`` (periodic): each step in its own transaction."""
    out = {}
    for name, step in (("started", start_due), ("completed", complete_finished), ("restarted", restart_stalled),
                       ("moved", rebalance)):
        with job_session() as session:
            out[name] = step(session)
    return out
