"""Meta's customer service window (``cloud`` clients): free-form messages only within
``CUSTOMER_WINDOW_HOURS`` (24) of the contact's last message to that client; outside it, only
templates. Checked at intake, at the time the message will be sent, instead of failing at Meta."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text as sqltext
from sqlalchemy.orm import Session

from app.clients.models import Client
from app.errors import ValidationError
from config import settings

_LAST_INBOUND = sqltext("""
    SELECT c.id, (SELECT m.created_at FROM messages m
                  WHERE m.organization_id = :org AND m.contact_id = c.id AND m.client_id = :client
                    AND m.direction = 'inbound' ORDER BY m.id DESC LIMIT 1) AS last_inbound_at
    FROM unnest(CAST(:ids AS text[])) AS c(id)
""")


def customer_windows(session: Session, client: Client, contact_ids: list[str]) -> dict[str, datetime | None]:
    """For a ``cloud`` client (Meta's customer service window), each contact's last message to it
    (None: never wrote); other transports have no window (empty)."""
    if client.transport != "cloud" or not contact_ids:
        return {}
    rows = session.execute(_LAST_INBOUND, {"org": client.organization_id, "client": client.id,
                                           "ids": sorted(set(contact_ids))})
    return {r.id: r.last_inbound_at for r in rows}


def outside_window(last_inbound_at: datetime | None, send_at: datetime) -> ValidationError | None:
    """The 422 for a free-form message sent at ``send_at`` outside the contact's window, or None."""
    hours = settings.CUSTOMER_WINDOW_HOURS
    ends = last_inbound_at + timedelta(hours=hours) if last_inbound_at is not None else None
    if ends is not None and send_at <= ends:
        return None
    why = (f"The contact last wrote at {last_inbound_at.isoformat()}; its {hours}-hour window ended at "
           f"{ends.isoformat()}" if ends is not None else "The contact never wrote to this client")
    return ValidationError(f"{why}: outside the customer service window only a template can be sent",
                           code="outside_customer_window",
                           details={"to": [f"{why}. Send an approved template instead."],
                                    "window_ends_at": ends.isoformat() if ends is not None else None,
                                    "last_inbound_at": last_inbound_at.isoformat() if last_inbound_at else None})
