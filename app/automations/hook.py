"""Where the inbound path hands a message to automations: one job after commit, only when the
organisation has an enabled automation (one indexed query: ``automations_active_idx``)."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from app import outbox

ACTOR = "automations.on_inbound"

_ANY_ENABLED = text("""SELECT EXISTS (SELECT 1 FROM automations
                                      WHERE organization_id = :org AND enabled AND deleted_at IS NULL)""")


def has_enabled(session: Session, organization_id: str) -> bool:
    return bool(session.scalar(_ANY_ENABLED, {"org": organization_id}))


def after_inbound(session: Session, organization_id: str, message_id: str) -> None:
    """Evaluate the organisation's automations on inbound message ``message_id`` once this
    transaction commits (``automations.on_inbound``, on the default pool)."""
    if has_enabled(session, organization_id):
        outbox.enqueue(session, ACTOR, message_id)
