"""What transports reported (app/inbox): the transport_events rows, oldest first."""
from __future__ import annotations

from sqlalchemy import select

from app.inbox.models import TransportEvent


def reported(session, kind: str | None = None, client_id: str | None = None) -> list[TransportEvent]:
    session.flush()
    stmt = select(TransportEvent).order_by(TransportEvent.id)
    if kind:
        stmt = stmt.where(TransportEvent.kind == kind)
    if client_id:
        stmt = stmt.where(TransportEvent.client_id == client_id)
    return list(session.scalars(stmt.execution_options(populate_existing=True)))
