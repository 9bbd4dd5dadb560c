"""Clients (WhatsApp accounts): what the API does with them (CRUD, start / stop / logout, the QR
code). The status machine the commands and the transports' reports drive is
app/clients/lifecycle.py; what a transport is built from, app/clients/info.py; the sim hooks,
app/clients/sim_service.py. docs/clients.md draws the lifecycle.
"""
from __future__ import annotations

import io

from sqlalchemy.orm import Session

from app import outbox, quotas
from app.audit import service as audit
from app.clients.lifecycle import REQUESTED, set_status
from app.clients.models import Client, ClientStatusHistory, Proxy
from app.clients.schemas import SECRET_CONFIG_KEYS
from app.clients.statuses import LIVE
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, NotFound, ValidationError
from app.pagination import paginate
from app.security.crypto import decrypt_json, encrypt_json
from app.security.principal import Principal
from app.transports import STATEFUL, transport_class
from config import settings

LIMIT_FIELDS = ("per_minute", "per_hour", "per_day", "min_gap_ms", "max_gap_ms")
DEFAULT_LIMITS = {"per_minute": 20, "per_hour": 100, "per_day": 1000, "min_gap_ms": 2000, "max_gap_ms": 5000}


# ------------------------------------------------------------------------------- lookups

def visible_client(session: Session, principal: Principal, client_id: str, *, for_update: bool = False) -> Client:
    """A client of the principal's organisation that the principal may use (agents: assigned ones)."""
    if not principal.can_use_client(client_id):
        raise NotFound("client not found")
    return get_scoped(session, Client, principal.organization_id, client_id, for_update=for_update)


# ------------------------------------------------------------------------------- CRUD

def list_clients(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                 status: str | None = None, transport: str | None = None) -> dict:
    stmt = scoped_select(Client, principal.organization_id)
    if principal.client_ids is not None:
        stmt = stmt.where(Client.id.in_(sorted(principal.client_ids)))
    if status:
        stmt = stmt.where(Client.status == status)
    if transport:
        stmt = stmt.where(Client.transport == transport)
    return paginate(session, stmt, Client.id, limit=limit, cursor=cursor)


def get_client(session: Session, principal: Principal, client_id: str) -> Client:
    return visible_client(session, principal, client_id)


def create_client(session: Session, principal: Principal, *, name: str, transport: str | None = None,
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


def update_client(session: Session, principal: Principal, client_id: str, **fields) -> Client:
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


def delete_client(session: Session, principal: Principal, client_id: str) -> None:
    """Soft delete. A client that ever ran is logged out by a job (which still finds it)."""
    client = visible_client(session, principal, client_id, for_update=True)
    ever_started = client.status != "created"
    if client.status in LIVE:
        set_status(session, client, "stopped", reason="deleted")
    client.deleted_at = client.updated_at = utcnow()
    if ever_started:
        outbox.enqueue(session, "clients.logout", client.id)
    audit.record(session, principal, "client.delete", target_type="client", target_id=client.id,
                 changes={"name": client.name, "status": client.status})


# ------------------------------------------------------------------------------- lifecycle (API)

def start_client(session: Session, principal: Principal, client_id: str) -> Client:
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status in ("starting", "qr", "ready"):
        raise Conflict(f"The client is already {client.status}", code="client_already_running",
                       details={"status": client.status})
    client.last_error = None
    set_status(session, client, "starting", reason=REQUESTED, details={"by": principal.id})
    outbox.enqueue(session, "clients.start", client.id)
    audit.record(session, principal, "client.start", target_type="client", target_id=client.id)
    return client


def stop_client(session: Session, principal: Principal, client_id: str) -> Client:
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status not in (*LIVE, "failed"):
        raise Conflict(f"The client is not running ({client.status})", code="client_not_running",
                       details={"status": client.status})
    set_status(session, client, "stopped", reason="stop requested", details={"by": principal.id})
    outbox.enqueue(session, "clients.stop", client.id)
    audit.record(session, principal, "client.stop", target_type="client", target_id=client.id)
    return client


def logout_client(session: Session, principal: Principal, client_id: str) -> Client:
    """Log the account out: the next start needs a new QR scan."""
    client = visible_client(session, principal, client_id, for_update=True)
    if client.status == "created":
        raise Conflict("The client never started: there is nothing to log out", code="client_not_started",
                       details={"status": client.status})
    set_status(session, client, "stopped", reason="logout requested", details={"by": principal.id})
    outbox.enqueue(session, "clients.logout", client.id)
    audit.record(session, principal, "client.logout", target_type="client", target_id=client.id)
    return client


#: seconds a caller is told to wait for the QR code of a client that is still starting
QR_RETRY_AFTER_S = 1


def not_in_qr(client: Client) -> Conflict:
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


def get_qr(session: Session, principal: Principal, client_id: str) -> dict:
    client = visible_client(session, principal, client_id)
    if client.status != "qr" or not client.qr:
        raise not_in_qr(client)
    return {"qr": client.qr, "expires_at": client.qr_expires_at}


def qr_png(payload: str, *, scale: int = 8, border: int = 4) -> bytes:
    """The QR code of ``payload`` as a PNG (``scale`` pixels per module, ``border`` quiet modules)."""
    import segno

    buf = io.BytesIO()
    segno.make_qr(payload, error="m").save(buf, kind="png", scale=scale, border=border)
    return buf.getvalue()


# ------------------------------------------------------------------------------- helpers

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


def _check_proxy(session: Session, organization_id: str, proxy_id: str) -> None:
    found = session.scalar(scoped_select(Proxy, organization_id).where(Proxy.id == proxy_id))
    if found is None:
        raise ValidationError(details={"proxy_id": ["No such proxy in this organisation."]})
