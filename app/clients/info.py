"""What a transport is built from: a client's ids, config, decrypted secrets and proxy."""
from __future__ import annotations

from sqlalchemy.orm import Session

from app.clients.models import Client, Proxy
from app.clients.proxy_service import proxy_info
from app.errors import NotFound
from app.security.crypto import decrypt_json
from app.transports.base import ClientInfo


def load_client_info(session: Session, client_id: str) -> ClientInfo:
    """What a transport is built from: ids, non-secret config, decrypted secrets and proxy.

    Platform-internal (no principal, no tenant check) and it also loads soft-deleted clients, so
    a logout can still run after a delete: callers decide what ``deleted_at`` means to them."""
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound("client not found")
    return client_info(session, client)


def client_info(session: Session, client: Client) -> ClientInfo:
    """``load_client_info`` of a loaded row."""
    proxy = session.get(Proxy, client.proxy_id) if client.proxy_id else None
    return ClientInfo(
        id=client.id, organization_id=client.organization_id, transport=client.transport,
        config=dict(client.config or {}), secrets=decrypt_json(client.secrets_encrypted) or {},
        proxy=proxy_info(proxy) if proxy is not None and proxy.deleted_at is None else None,
        phone=client.phone,
    )
