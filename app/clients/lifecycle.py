"""The client status state machine: status changes, transport reports, reconnects, and what the
lifecycle jobs (``clients.start`` / ``stop`` / ``logout``) do before they call a transport.

Statuses (app/clients/statuses.py): every change goes through ``set_status``: a
``client_status_history`` row, ``status_changed_at``, and the webhook event of the new status
(``client.qr``, ``client.connected``, ``client.disconnected``, ``client.banned``; leaving ``ready``
any other way is also ``client.disconnected``). Transports report the rest, which
``record_status`` applies (``clients.on_status``); a report that does not fit the current status
(a late report of a session stopped since) is ignored. A client that becomes ready again has its
waiting messages sent on (``app.messages.planning.resume_client``).
"""
from __future__ import annotations

import logging
import random
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from app import outbox
from app.clients.alerts import alert_detail, raise_alert
from app.clients.info import client_info
from app.clients.models import Client, ClientStatusHistory
from app.clients.schemas import ClientSchema
from app.clients.session_state import forget_session_state
from app.clients.statuses import ACCEPTS, EVENT_FOR_STATUS, SHUT_STATUSES
from app.db import utcnow
from app.messages.planning import resume_client
from app.transports import STATEFUL, transport_class
from app.transports.base import REPORTED_STATUSES, ClientInfo
from app.webhooks.events import emit
from config import settings

log = logging.getLogger(__name__)

#: history reasons the reconnect counter looks for
REQUESTED = "start requested"
RECONNECT = "reconnecting"


def set_status(session: Session, client: Client, status: str, *, reason: str | None = None,
               details: dict | None = None) -> bool:
    """Move ``client`` to ``status``: history row, ``status_changed_at`` and the webhook event.
    Returns False (and does nothing) when it already is in that status."""
    previous = client.status
    if previous == status:
        return False
    now = utcnow()
    session.add(ClientStatusHistory(organization_id=client.organization_id, client_id=client.id,
                                    from_status=previous, status=status, reason=(reason or None) and reason[:500],
                                    details=details or {}))
    client.status, client.status_changed_at, client.updated_at = status, now, now
    if status != "qr":
        client.qr = client.qr_expires_at = None
    event = EVENT_FOR_STATUS.get(status) or ("client.disconnected" if previous == "ready" else None)
    if event:
        _emit(session, client, event)
    return True


def _emit(session: Session, client: Client, event: str) -> None:
    session.flush()
    emit(session, client.organization_id, event, event_data(client, event))


def event_data(client: Client, event: str) -> dict:
    """The client resource; ``client.qr`` also carries the code, so an integration can show it."""
    data = ClientSchema().dump(client)
    if event == "client.qr":
        data["qr"] = client.qr
        data["qr_expires_at"] = client.qr_expires_at.isoformat() if client.qr_expires_at else None
    return data


def record_status(session: Session, client_id: str, status: str, detail: dict | None = None) -> Client | None:
    """Apply a transport's report (``clients.on_status``). Returns the client, or None when the
    report was ignored (unknown or deleted client, stale report)."""
    detail = dict(detail or {})
    client = session.get(Client, client_id, with_for_update=True, populate_existing=True)
    if client is None or client.deleted_at is not None:
        return None
    if status not in REPORTED_STATUSES:
        log.warning("client %s: unknown status report %r ignored", client_id, status)
        return None
    if client.status not in ACCEPTS[status] or _is_stale(client, detail):
        log.info("client %s: report %r ignored in status %s", client_id, status, client.status)
        return None
    reason = _text(detail.get("reason"))
    history = {k: v for k, v in detail.items() if k not in ("qr", "session", "expires_at")}
    if status == "starting":
        set_status(session, client, "starting", reason=reason or "transport starting", details=history)
    elif status == "qr":
        client.qr = _text(detail.get("qr"), 4096)
        client.qr_expires_at = _parse_time(detail.get("expires_at"))
        if not set_status(session, client, "qr", reason=reason or "scan the QR code", details=history):
            _emit(session, client, "client.qr")  # a new code of the same login
    elif status == "ready":
        _ready(session, client, detail, history)
    elif status == "disconnected":
        client.last_error = reason
        set_status(session, client, "disconnected", reason=reason or "disconnected", details=history)
        _schedule_reconnect(session, client)
    elif status == "banned":
        client.last_error, client.paused = reason or "banned", True
        previous = client.status
        set_status(session, client, "banned", reason=reason or "banned", details=history)
        raise_alert(session, client.organization_id, "banned", client.id,
                    {"reason": reason, "from_status": previous, **alert_detail(detail)})
    elif status == "logged_out":
        client.last_error, client.paused = reason or "logged out from the phone", True
        set_status(session, client, "stopped", reason=reason or "logged out from the phone", details=history)
        raise_alert(session, client.organization_id, "logged_out", client.id,
                    {"reason": reason, **alert_detail(detail)})
        forget_session_state(session, client.id)
    elif status == "failed":
        client.last_error = reason or "failed"
        set_status(session, client, "failed", reason=client.last_error, details=history)
    return client


def _ready(session: Session, client: Client, detail: dict, history: dict) -> None:
    was_paused = client.paused
    phone = _text(detail.get("phone"), 32)
    if phone:
        client.phone = phone
    client.last_seen_at = utcnow()
    client.paused, client.last_error = False, None
    changed = set_status(session, client, "ready", reason=_text(detail.get("reason")) or "connected", details=history)
    if changed or was_paused:
        resume_client(session, client.id)  # what waited for this client is sent on


def _schedule_reconnect(session: Session, client: Client) -> None:
    """Exponential backoff: attempt n waits base * 2^(n-1) ms (capped, with jitter); after
    CLIENT_RECONNECT_ATTEMPTS failed attempts in a row the client is ``failed`` and alerted."""
    attempt = reconnect_attempt(session, client.id)
    if attempt > settings.CLIENT_RECONNECT_ATTEMPTS:
        reason = f"gave up reconnecting after {settings.CLIENT_RECONNECT_ATTEMPTS} attempts"
        client.last_error = reason
        set_status(session, client, "failed", reason=reason, details={"attempts": attempt - 1})
        raise_alert(session, client.organization_id, "disconnected", client.id,
                    {"reason": reason, "attempts": attempt - 1})
        return
    delay = reconnect_delay_ms(attempt)
    outbox.enqueue(session, "clients.start", client.id, delay_ms=delay)
    log.info("client %s: reconnect attempt %d in %d ms", client.id, attempt, delay)


def reconnect_attempt(session: Session, client_id: str) -> int:
    """How many disconnections in a row this is: ``disconnected`` rows since the client was last
    ready or last started by a user."""
    history = ClientStatusHistory
    reset = session.scalar(select(func.max(history.id)).where(
        history.client_id == client_id,
        or_(history.status == "ready", and_(history.status == "starting", history.reason == REQUESTED))))
    return session.scalar(select(func.count()).select_from(history).where(
        history.client_id == client_id, history.status == "disconnected", history.id > (reset or 0))) or 0


def reconnect_delay_ms(attempt: int) -> int:
    full = min(settings.CLIENT_RECONNECT_BASE_MS * 2 ** max(0, attempt - 1), settings.CLIENT_RECONNECT_MAX_MS)
    return int(full * random.uniform(0.8, 1.0))


def _is_stale(client: Client, detail: dict) -> bool:
    """A report stamped with a session the transport has replaced since (``detail["session"]``);
    transports that stamp reports declare ``is_current_session(client_id, token)``."""
    token = detail.get("session")
    if not token or client.transport in STATEFUL:
        return False
    check = getattr(transport_class(client.transport), "is_current_session", None)
    return check is not None and not check(client.id, str(token))


# ------------------------------------------------------------------------------- jobs' side

def begin_start(session: Session, client_id: str) -> ClientInfo | None:
    """``clients.start``: the ClientInfo to start a stateless transport with, after committing
    ``starting``; None when there is nothing to do here (stopped since, deleted, or a web client,
    whose start is forwarded to its session host)."""
    client = session.get(Client, client_id, with_for_update=True, populate_existing=True)
    if client is None or client.deleted_at is not None:
        return None
    if client.status == "disconnected":
        set_status(session, client, "starting", reason=RECONNECT)
    elif client.status != "starting":
        log.info("client %s: start skipped in status %s", client_id, client.status)
        return None
    if client.transport in STATEFUL:
        outbox.enqueue(session, "sessions.start", client.id)
        return None
    return client_info(session, client)


def begin_shutdown(session: Session, client_id: str, verb: str) -> ClientInfo | None:
    """``clients.stop`` / ``clients.logout``: the ClientInfo to call ``verb`` on, or None when the
    client was started again since (nothing to stop) or is a web client (forwarded to
    ``sessions.<verb>``)."""
    client = session.get(Client, client_id)
    if client is None:
        return None
    if client.deleted_at is None and client.status not in SHUT_STATUSES:
        log.info("client %s: %s skipped in status %s", client_id, verb, client.status)
        return None
    if client.transport in STATEFUL:
        outbox.enqueue(session, f"sessions.{verb}", client.id)
        return None
    return client_info(session, client)


def _text(value, limit: int = 500) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _parse_time(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
