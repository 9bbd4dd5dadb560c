"""The simulator's hooks on a sim client (``/api/clients/{id}/sim/...``): its network's counts and
faults, a scan of the QR code by the simulated phone, an inbound message from a simulated contact."""
from __future__ import annotations

from sqlalchemy.orm import Session

from app.audit import service as audit
from app.clients.info import client_info
from app.clients.models import Client
from app.clients.service import not_in_qr, visible_client
from app.errors import Conflict, NotFound, ValidationError
from app.inbox.service import InboxSink
from app.security.principal import Principal
from app.transports.sim import SimTransport


def _sim(session: Session, principal: Principal, client_id: str) -> tuple[Client, SimTransport]:
    client = visible_client(session, principal, client_id)
    if client.transport != "sim":
        raise NotFound("Not a sim client: /sim endpoints exist for sim clients only", code="not_found")
    return client, SimTransport(client_info(session, client), InboxSink(session))


def sim_network(session: Session, principal: Principal, client_id: str) -> dict:
    _, sim = _sim(session, principal, client_id)
    return {**sim.network.counts(), "faults": sim.network.faults()}


def sim_fault(session: Session, principal: Principal, client_id: str, *, type: str, count: int = 1,
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


def sim_scan(session: Session, principal: Principal, client_id: str) -> Client:
    """The simulated phone scans the client's current QR code; it reports ``ready`` (a job)."""
    client, sim = _sim(session, principal, client_id)
    if client.status != "qr":
        raise not_in_qr(client)
    sim.scan()
    audit.record(session, principal, "client.sim_scan", target_type="client", target_id=client.id)
    return client


def sim_inbound(session: Session, principal: Principal, client_id: str, *, from_: str, text: str | None = None,
                media_id: str | None = None, kind: str | None = None) -> dict:
    """A simulated contact writes ``text``, or sends a copy of the organisation's medium
    ``media_id`` (as a ``kind`` message: default the medium's kind; ``text`` is its caption)."""
    client, sim = _sim(session, principal, client_id)
    media = None
    if media_id is not None:
        media, kind = _sim_media(session, principal, media_id, kind)
    elif not text:
        raise ValidationError(details={"text": ["Give the text, or a media_id."]})
    if client.status != "ready":
        raise Conflict(f"The client is not ready ({client.status})", code="client_not_ready",
                       details={"status": client.status})
    return {"external_id": sim.receive(from_, text, kind=kind or "text", media=media)}


SIM_MEDIA_MAX_BYTES = 16 * 1024 * 1024


def _sim_media(session: Session, principal: Principal, media_id: str, kind: str | None) -> tuple[dict, str]:
    """What the simulated contact sends of a medium: its bytes, as WhatsApp Web reports a file."""
    import base64

    from app.media.service import get_media, readable
    from app.storage import media_storage

    try:
        medium = get_media(session, principal, media_id)
    except NotFound:
        raise ValidationError(details={"media_id": ["No such media in this organisation."]}) from None
    readable(medium)
    if medium.size_bytes > SIM_MEDIA_MAX_BYTES:
        raise ValidationError(details={"media_id": ["The simulator sends files of at most 16 MB."]})
    with media_storage().open(medium.storage_key) as fh:
        data = base64.b64encode(fh.read()).decode()
    return ({"mime_type": medium.mime_type, "filename": medium.filename, "data_b64": data},
            kind or medium.kind)
