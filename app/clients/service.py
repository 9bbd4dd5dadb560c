"""Clients (WhatsApp accounts): the lifecycle the API drives, the status reports transports send,
and what a transport is built from (``load_client_info``).

Statuses (API.md): created, starting, qr, ready, disconnected, banned, stopped, failed. Every
change goes through ``set_status``: a ``client_status_history`` row, ``status_changed_at``, and
the webhook event of the new status (``client.qr``, ``client.connected``, ``client.disconnected``,
``client.banned``; leaving ``ready`` any other way is also ``client.disconnected``). The API moves
a client to ``starting`` / ``stopped`` itself and leaves the transport work to jobs
(jobs/clients.py); transports report the rest, which ``record_status`` applies (``clients.on_status``).
A report that does not fit the current status (a late report of a session stopped since) is
ignored. docs/clients.md draws the lifecycle.
"""
from __future__ import annotations

import io
import logging
import random
from datetime import datetime

from sqlalchemy import and_, func, or_, select

from app import outbox, quotas
from app.audit import service as audit
from app.clients.models import BanAlert, Client, ClientSession, ClientStatusHistory, Proxy
from app.clients.schemas import SECRET_CONFIG_KEYS, ClientSchema
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.pagination import paginate
from app.security.crypto import decrypt_bytes, decrypt_json, encrypt, encrypt_json
from app.security.principal import Principal
from app.transports import STATEFUL, transport_class
from app.transports.base import REPORTED_STATUSES, ClientInfo
from app.webhooks.events import emit
from config import settings

log = logging.getLogger(__name__)

#: statuses in which a transport session is (or is about to be) alive
LIVE = ("starting", "qr", "ready", "disconnected")
#: history reasons the reconnect counter looks for
REQUESTED = "start requested"
RECONNECT = "reconnecting"
LIMIT_FIELDS = ("per_minute", "per_hour", "per_day", "min_gap_ms", "max_gap_ms")
DEFAULT_LIMITS = {"per_minute": 20, "per_hour": 100, "per_day": 1000, "min_gap_ms": 2000, "max_gap_ms": 5000}
EVENT_FOR_STATUS = {"qr": "client.qr", "ready": "client.connected", "disconnected": "client.disconnected",
                    "banned": "client.banned"}
#: which reports each status accepts; anything else is a stale report and is ignored
ACCEPTS = {
    "starting": {"starting", "disconnected", "ready"},  # ready: a session host taking a session over
    "qr": {"starting", "qr", "ready", "disconnected"},   # ready/disconnected: the login was lost, scan again
    "ready": {"starting", "qr", "ready", "disconnected"},
    "disconnected": {"starting", "qr", "ready"},
    "logged_out": set(LIVE),
    "failed": set(LIVE),
    "banned": {"starting", "qr", "ready", "disconnected", "stopped", "failed"},
}


# ------------------------------------------------------------------------------- lookups

def visible_client(session, principal: Principal, client_id: str, *, for_update: bool = False) -> Client:
    """A client of the principal's organisation that the principal may use (agents: assigned ones)."""
    if not principal.can_use_client(client_id):
        raise NotFound("client not found")
    return get_scoped(session, Client, principal.organization_id, client_id, for_update=for_update)


def dump(client: Client) -> dict:
    return ClientSchema().dump(client)


def load_client_info(session, client_id: str) -> ClientInfo:
    """What a transport is built from: ids, non-secret config, decrypted secrets and proxy.

    Platform-internal (no principal, no tenant check) and it also loads soft-deleted clients, so
    a logout can still run after a delete: callers decide what ``deleted_at`` means to them."""
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound("client not found")
    return client_info(session, client)


def client_info(session, client: Client) -> ClientInfo:
    from app.clients.proxy_service import proxy_info

    proxy = session.get(Proxy, client.proxy_id) if client.proxy_id else None
    return ClientInfo(
        id=client.id, organization_id=client.organization_id, transport=client.transport,
        config=dict(client.config or {}), secrets=decrypt_json(client.secrets_encrypted) or {},
        proxy=proxy_info(proxy) if proxy is not None and proxy.deleted_at is None else None,
        phone=client.phone,
    )


# ------------------------------------------------------------------------------- CRUD

def list_clients(session, principal: Principal, *, limit: int, cursor: str | None = None,
                 status: str | None = None, transport: str | None = None) -> dict:
    stmt = scoped_select(Client, principal.organization_id)
    if principal.client_ids is not None:
        stmt = stmt.where(Client.id.in_(sorted(principal.client_ids)))
    if status:
        stmt = stmt.where(Client.status == status)
    if transport:
        stmt = stmt.where(Client.transport == transport)
    return paginate(session, stmt, Client.id, limit=limit, cursor=cursor)


def get_client(session, principal: Principal, client_id: str) -> Client:
    return visible_client(session, principal, client_id)


def create_client(session, principal: Principal, *, name: str, transport: str | None = None,
                  config: dict | None = None, limits: dict | None = None, proxy_id: str | None = None) -> Client:
    transport = transport or settings.DEFAULT_TRANSPORT
    public, secrets = _split_config({k: v for k, v in (config or {}).items() if v is not None})
    _check_config(transport, public)
    merged_limits = _checked_limits({**DEFAULT_LIMITS, **(limits or {})})
    if proxy_id is not None:
        _check_proxy(session, principal.organization_id, proxy_id)
    quotas.enforce(session, principal.organization_id, "clients", Client, Client.deleted_at.is_(None))
    client = Client(organization_id=principal.organization_id, name=name, transport=transport, config=public,
                    secrets_encrypted=encrypt_json(secrets) if secrets else None, proxy_id=proxy_id,
                    status="created", status_changed_at=utcnow(), **merged_limits)
    session.add(client)
    session.flush()
    session.add(ClientStatusHistory(organization_id=client.organization_id, client_id=client.id, from_status=None,
                                    status="created", reason="created"))
    audit.record(session, principal, "client.create", target_type="client", target_id=client.id, changes={
        "name": name, "transport": transport, "config": public, "limits": merged_limits, "proxy_id": proxy_id,
        "secret_keys": sorted(secrets)})
    return client


def update_client(session, principal: Principal, client_id: str, **fields) -> Client:
    client = visible_client(session, principal, client_id, for_update=True)
    changes: dict = {}
    if "name" in fields:
        changes.update(audit.diff(client, {"name": fields["name"]}))
        client.name = fields["name"]
    if "limits" in fields:
        merged = _checked_limits({**{f: getattr(client, f) for f in LIMIT_FIELDS}, **fields["limits"]})
        changes.update(audit.diff(client, merged))
        for name, value in merged.items():
            setattr(client, name, value)
    if "proxy_id" in fields:
        if fields["proxy_id"] is not None:
            _check_proxy(session, client.organization_id, fields["proxy_id"])
        changes.update(audit.diff(client, {"proxy_id": fields["proxy_id"]}))
        client.proxy_id = fields["proxy_id"]
    if "config" in fields:
        patch_public, patch_secrets = _split_config(fields["config"])
        public = _merge_patch(client.config or {}, patch_public)
        _check_config(client.transport, public)
        changes.update(audit.diff(client, {"config": public}))
        client.config = public
        if patch_secrets:
            secrets = _merge_patch(decrypt_json(client.secrets_encrypted) or {}, patch_secrets)
            client.secrets_encrypted = encrypt_json(secrets) if secrets else None
            changes["secret_keys"] = {"set": sorted(k for k, v in patch_secrets.items() if v is not None),
                                      "removed": sorted(k for k, v in patch_secrets.items() if v is None)}
    if changes:
        client.updated_at = utcnow()
        audit.record(session, principal, "client.update", target_type="client", target_id=client.id, changes=changes)
    return client


def delete_client(session, principal: Principal, client_id: str) -> None:
    """Soft delete. A client that ever ran is logged out by a job (which still finds it)."""
    client = visible_client(session, principal, client_id, for_update=True)
    ever_started = client.status != "created"
    if client.status in LIVE:
        set_status(session, client, "stopped", reason="deleted")
    client.deleted_at = client.updated_at = utcnow()
    if ever_started:
        _enqueue(session, "clients.logout", client.id, queue_name="default")
    audit.record(session, principal, "client.delete", target_type="client", target_id=client.id,
                 changes={"name": client.name, "status": client.status})


# ------------------------------------------------------------------------------- lifecycle (API)

def start_client(session, principal: Principal, client_id: str) -> Client:
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status in ("starting", "qr", "ready"):
        raise Conflict(f"The client is already {client.status}", code="client_already_running",
                       details={"status": client.status})
    client.last_error = None
    set_status(session, client, "starting", reason=REQUESTED, details={"by": principal.id})
    _enqueue(session, "clients.start", client.id, queue_name="default")
    audit.record(session, principal, "client.start", target_type="client", target_id=client.id)
    return client


def stop_client(session, principal: Principal, client_id: str) -> Client:
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status not in (*LIVE, "failed"):
        raise Conflict(f"The client is not running ({client.status})", code="client_not_running",
                       details={"status": client.status})
    set_status(session, client, "stopped", reason="stop requested", details={"by": principal.id})
    _enqueue(session, "clients.stop", client.id, queue_name="default")
    audit.record(session, principal, "client.stop", target_type="client", target_id=client.id)
    return client


def logout_client(session, principal: Principal, client_id: str) -> Client:
    """Log the account out: the next start needs a new QR scan."""
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status == "created":
        raise Conflict("The client never started: there is nothing to log out", code="client_not_started",
                       details={"status": client.status})
    set_status(session, client, "stopped", reason="logout requested", details={"by": principal.id})
    _enqueue(session, "clients.logout", client.id, queue_name="default")
    audit.record(session, principal, "client.logout", target_type="client", target_id=client.id)
    return client


#: seconds a caller is told to wait for the QR code of a client that is still starting
QR_RETRY_AFTER_S = 1


def _not_in_qr(client: Client) -> Conflict:
    """409 for a client without a QR code; while it is starting, when to ask again."""
    if client.status == "starting":
        return Conflict(f"The client is starting: its QR code is usually shown within seconds; "
                        f"retry in {QR_RETRY_AFTER_S} s", code="client_not_in_qr_state",
                        details={"status": client.status, "retry_after": QR_RETRY_AFTER_S},
                        headers={"Retry-After": str(QR_RETRY_AFTER_S)})
    hint = {"ready": "it is already linked", "created": "start it first (POST /api/clients/{id}/start)",
            "stopped": "start it first (POST /api/clients/{id}/start)",
            "failed": "start it again (POST /api/clients/{id}/start)"}.get(client.status)
    return Conflict(f"The client shows no QR code (status {client.status})" + (f": {hint}" if hint else ""),
                    code="client_not_in_qr_state", details={"status": client.status})


def get_qr(session, principal: Principal, client_id: str) -> dict:
    client = visible_client(session, principal, client_id)
    if client.status != "qr" or not client.qr:
        raise _not_in_qr(client)
    return {"qr": client.qr, "expires_at": client.qr_expires_at}


def qr_png(payload: str, *, scale: int = 8, border: int = 4) -> bytes:
    """The QR code of ``payload`` as a PNG (``scale`` pixels per module, ``border`` quiet modules)."""
    import segno

    buf = io.BytesIO()
    segno.make_qr(payload, error="m").save(buf, kind="png", scale=scale, border=border)
    return buf.getvalue()


# ------------------------------------------------------------------------------- status changes

def set_status(session, client: Client, status: str, *, reason: str | None = None, details: dict | None = None) -> bool:
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


def _emit(session, client: Client, event: str) -> None:
    import workers.broker  # noqa: F401  (emit enqueues the fan-out after commit)

    session.flush()
    emit(session, client.organization_id, event, event_data(client, event))


def event_data(client: Client, event: str) -> dict:
    """The client resource; ``client.qr`` also carries the code, so an integration can show it."""
    data = dump(client)
    if event == "client.qr":
        data["qr"] = client.qr
        data["qr_expires_at"] = client.qr_expires_at.isoformat() if client.qr_expires_at else None
    return data


def record_status(session, client_id: str, status: str, detail: dict | None = None) -> Client | None:
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
                    {"reason": reason, "from_status": previous, **_alert_detail(detail)})
    elif status == "logged_out":
        client.last_error, client.paused = reason or "logged out from the phone", True
        set_status(session, client, "stopped", reason=reason or "logged out from the phone", details=history)
        raise_alert(session, client.organization_id, "logged_out", client.id, {"reason": reason, **_alert_detail(detail)})
        forget_session_state(session, client.id)
    elif status == "failed":
        client.last_error = reason or "failed"
        set_status(session, client, "failed", reason=client.last_error, details=history)
    return client


def _ready(session, client: Client, detail: dict, history: dict) -> None:
    was_paused = client.paused
    phone = _text(detail.get("phone"), 32)
    if phone:
        client.phone = phone
    client.last_seen_at = utcnow()
    client.paused, client.last_error = False, None
    changed = set_status(session, client, "ready", reason=_text(detail.get("reason")) or "connected", details=history)
    if changed or was_paused:
        resume_outbound(session, client.id)


def resume_outbound(session, client_id: str) -> None:
    """Let the message pipeline re-enqueue what waited for this client (if the pipeline is there)."""
    try:
        from app.messages.dispatch import resume_client
    except (ImportError, AttributeError):
        log.debug("app.messages.dispatch.resume_client not available yet")
        return
    resume_client(session, client_id)


def _schedule_reconnect(session, client: Client) -> None:
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
    _enqueue(session, "clients.start", client.id, delay_ms=delay, queue_name="default")
    log.info("client %s: reconnect attempt %d in %d ms", client.id, attempt, delay)


def reconnect_attempt(session, client_id: str) -> int:
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


def raise_alert(session, organization_id: str, kind: str, client_id: str | None, details: dict) -> BanAlert:
    alert = BanAlert(organization_id=organization_id, client_id=client_id, kind=kind,
                     details={k: v for k, v in details.items() if v is not None})
    session.add(alert)
    return alert


def _alert_detail(detail: dict) -> dict:
    return {k: detail[k] for k in ("code",) if k in detail}


def _is_stale(client: Client, detail: dict) -> bool:
    """A report stamped with a session the transport has replaced since (``detail["session"]``);
    transports that stamp reports declare ``is_current_session(client_id, token)``."""
    token = detail.get("session")
    if not token or client.transport in STATEFUL:
        return False
    check = getattr(transport_class(client.transport), "is_current_session", None)
    return check is not None and not check(client.id, str(token))


# ------------------------------------------------------------------------------- jobs' side

def begin_start(session, client_id: str) -> ClientInfo | None:
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
        _enqueue(session, "sessions.start", client.id, queue_name="sessions")
        return None
    return client_info(session, client)


def begin_shutdown(session, client_id: str, verb: str) -> ClientInfo | None:
    """``clients.stop`` / ``clients.logout``: the ClientInfo to call ``verb`` on, or None when the
    client was started again since (nothing to stop) or is a web client (forwarded to
    ``sessions.<verb>``)."""
    client = session.get(Client, client_id)
    if client is None:
        return None
    if client.deleted_at is None and client.status not in ("stopped", "failed", "banned"):
        log.info("client %s: %s skipped in status %s", client_id, verb, client.status)
        return None
    if client.transport in STATEFUL:
        _enqueue(session, f"sessions.{verb}", client.id, queue_name="sessions")
        return None
    return client_info(session, client)


def save_session_state(session, client_id: str, state: bytes) -> bool:
    """Store a stateful transport's login state, encrypted (``clients.save_session_state``)."""
    from sqlalchemy.dialects.postgresql import insert

    client = session.get(Client, client_id)
    if client is None or client.deleted_at is not None:
        return False
    sealed, now = encrypt(state), utcnow()
    session.execute(insert(ClientSession).values(
        client_id=client_id, organization_id=client.organization_id, state_encrypted=sealed, updated_at=now,
    ).on_conflict_do_update(index_elements=[ClientSession.client_id],
                            set_={"state_encrypted": sealed, "updated_at": now}))
    return True


def load_session_state(session, client_id: str) -> bytes | None:
    """The login state saved by ``save_session_state``, decrypted (for ``Transport.start(state)``)."""
    sealed = session.scalar(select(ClientSession.state_encrypted).where(ClientSession.client_id == client_id))
    return decrypt_bytes(sealed) if sealed else None


def forget_session_state(session, client_id: str) -> None:
    row = session.get(ClientSession, client_id)
    if row is not None and row.state_encrypted is not None:
        row.state_encrypted, row.updated_at = None, utcnow()


# ------------------------------------------------------------------------------- sim hooks

def _sim(session, principal: Principal, client_id: str):
    from app.inbox.service import InboxSink
    from app.transports.sim import SimTransport

    client = visible_client(session, principal, client_id)
    if client.transport != "sim":
        raise NotFound("Not a sim client: /sim endpoints exist for sim clients only", code="not_found")
    return client, SimTransport(client_info(session, client), InboxSink(session))


def sim_network(session, principal: Principal, client_id: str) -> dict:
    _, sim = _sim(session, principal, client_id)
    return {**sim.network.counts(), "faults": sim.network.faults()}


def sim_fault(session, principal: Principal, client_id: str, *, type: str, count: int = 1,
              permanent: bool = False) -> dict:
    client, sim = _sim(session, principal, client_id)
    if type == "disconnect":
        if client.status not in ("starting", "qr", "ready"):
            raise Conflict(f"The client is not connected ({client.status})", code="client_not_connected",
                           details={"status": client.status})
        sim.inject_disconnect(count)
    elif type == "ban":
        sim.inject_ban()
    elif type == "fail_next":
        sim.inject_fail_next(count, permanent)
    else:
        sim.network.clear_faults()
    audit.record(session, principal, "client.sim_fault", target_type="client", target_id=client.id,
                 changes={"type": type, "count": count, "permanent": permanent})
    return {**sim.network.counts(), "faults": sim.network.faults()}


def sim_scan(session, principal: Principal, client_id: str) -> Client:
    """The simulated phone scans the client's current QR code; it reports ``ready`` (a job)."""
    client, sim = _sim(session, principal, client_id)
    if client.status != "qr":
        raise _not_in_qr(client)
    sim.scan()
    audit.record(session, principal, "client.sim_scan", target_type="client", target_id=client.id)
    return client


def sim_inbound(session, principal: Principal, client_id: str, *, from_: str, text: str) -> dict:
    client, sim = _sim(session, principal, client_id)
    if client.status != "ready":
        raise Conflict(f"The client is not ready ({client.status})", code="client_not_ready",
                       details={"status": client.status})
    return {"external_id": sim.receive(from_, text)}


# ------------------------------------------------------------------------------- helpers

def _enqueue(session, actor_name: str, *args, **options) -> None:
    """``outbox.enqueue`` by actor name, with the configured broker set first: the api process
    imports no actors, and a job must not reach dramatiq's default broker."""
    import workers.broker  # noqa: F401

    outbox.enqueue(session, actor_name, *args, **options)


def _split_config(config: dict) -> tuple[dict, dict]:
    public = {k: v for k, v in config.items() if k not in SECRET_CONFIG_KEYS}
    secrets = {k: v for k, v in config.items() if k in SECRET_CONFIG_KEYS}
    return public, secrets


def _merge_patch(current: dict, patch: dict) -> dict:
    merged = dict(current)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged


def _check_config(transport: str, config: dict) -> None:
    """Run the transport's own config check when it declares one (``validate_config``); the
    stateful ones are not imported in the api (Playwright)."""
    if transport in STATEFUL:
        return
    check = getattr(transport_class(transport), "validate_config", None)
    errors = check(config) if check else {}
    if errors:
        raise ValidationError(details={"config": errors})


def _checked_limits(limits: dict) -> dict:
    errors: dict[str, list[str]] = {}
    if limits["per_hour"] < limits["per_minute"]:
        errors["per_hour"] = [f"Must be at least per_minute ({limits['per_minute']})."]
    if limits["per_day"] < limits["per_hour"]:
        errors["per_day"] = [f"Must be at least per_hour ({limits['per_hour']})."]
    if limits["max_gap_ms"] < limits["min_gap_ms"]:
        errors["max_gap_ms"] = [f"Must be at least min_gap_ms ({limits['min_gap_ms']})."]
    if errors:
        raise ValidationError(details={"limits": errors})
    return {name: limits[name] for name in LIMIT_FIELDS}


def _check_proxy(session, organization_id: str, proxy_id: str) -> None:
    found = session.scalar(scoped_select(Proxy, organization_id).where(Proxy.id == proxy_id))
    if found is None:
        raise ValidationError(details={"proxy_id": ["No such proxy in this organisation."]})


def _text(value, limit: int = 500) -> str | None:
    return str(value)[:limit] if value not in (None, "") else None


def _parse_time(value) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
