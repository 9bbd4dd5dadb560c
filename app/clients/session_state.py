"""Stateful transports' login state (WhatsApp Web), stored encrypted in ``client_sessions``."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.clients.models import Client, ClientSession
from app.db import utcnow
from app.security.crypto import decrypt_bytes, encrypt


def save_session_state(session: Session, client_id: str, state: bytes) -> bool:
    """Store a stateful transport's login state, encrypted (``clients.save_session_state``)."""
    client = session.get(Client, client_id)
    if client is None or client.deleted_at is not None:
        return False
    sealed, now = encrypt(state), utcnow()
    session.execute(insert(ClientSession).values(
        client_id=client_id, organization_id=client.organization_id, state_encrypted=sealed, updated_at=now,
    ).on_conflict_do_update(index_elements=[ClientSession.client_id],
                            set_={"state_encrypted": sealed, "updated_at": now}))
    return True


def load_session_state(session: Session, client_id: str) -> bytes | None:
    """The login state saved by ``save_session_state``, decrypted (for ``Transport.start(state)``)."""
    sealed = session.scalar(select(ClientSession.state_encrypted).where(ClientSession.client_id == client_id))
    return decrypt_bytes(sealed) if sealed else None


def forget_session_state(session: Session, client_id: str) -> None:
    """Drop a client's saved login (logged out): the next start needs a new QR scan."""
    row = session.get(ClientSession, client_id)
    if row is not None and row.state_encrypted is not None:
        row.state_encrypted, row.updated_at = None, utcnow()
