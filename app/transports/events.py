"""The platform's EventSink: every transport report becomes a job (transports never touch the DB).

Reports are sent by actor name, so a transport can report from any process:
  clients.on_status(client_id, status, detail)         -> jobs/clients.py
  messages.on_ack(client_id, external_id, status, error, at_iso)  -> jobs/messages.py
  messages.on_inbound(client_id, payload)              -> jobs/messages.py
  clients.save_session_state(client_id, state_b64)     -> jobs/clients.py
"""
from __future__ import annotations

import base64
from dataclasses import asdict
from datetime import datetime

import dramatiq

from workers.broker import get_broker  # the configured broker, never dramatiq's implicit default

from app.transports.base import ClientInfo, InboundMessage

EVENTS_QUEUE = "default"


def _send(actor_name: str, args: tuple, delay_ms: int = 0) -> None:
    message = dramatiq.Message(queue_name=EVENTS_QUEUE, actor_name=actor_name, args=args, kwargs={}, options={})
    get_broker().enqueue(message, delay=delay_ms or None)


class JobEventSink:
    def status(self, client: ClientInfo, status: str, detail: dict | None = None, *, delay_ms: int = 0) -> None:
        _send("clients.on_status", (client.id, status, detail or {}), delay_ms)

    def ack(self, client: ClientInfo, external_id: str, status: str, *, error: dict | None = None,
            at: datetime | None = None, delay_ms: int = 0) -> None:
        _send("messages.on_ack", (client.id, external_id, status, error, at.isoformat() if at else None), delay_ms)

    def inbound(self, client: ClientInfo, message: InboundMessage, *, delay_ms: int = 0) -> None:
        payload = asdict(message)
        if message.timestamp:
            payload["timestamp"] = message.timestamp.isoformat()
        _send("messages.on_inbound", (client.id, payload), delay_ms)

    def session_state(self, client: ClientInfo, state: bytes) -> None:
        _send("clients.save_session_state", (client.id, base64.b64encode(state).decode()))
