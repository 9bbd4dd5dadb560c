"""The interface every WhatsApp transport implements, and what flows in and out of it.

A transport is built for one client (``ClientInfo``: ids, non-secret config, decrypted secrets,
proxy). It never touches the database: everything it learns — QR codes, status changes, acks,
inbound messages — it reports to an ``EventSink``; the platform's sink records each report in
Postgres before it returns (``app/inbox``), so a report survives whatever happens to the broker.
Sends return at once with the transport's message id or raise ``TransientSendError`` (it was not
sent: retry with backoff) / ``PermanentSendError`` (fail now, with a code). Any other exception
means the transport cannot tell whether the message went out; ``lookup`` is then asked.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

# client statuses a transport may report (API.md): the platform records the rest itself
REPORTED_STATUSES = ("starting", "qr", "ready", "disconnected", "banned", "logged_out", "failed")
ACK_STATUSES = ("sent", "delivered", "read", "failed")


@dataclass(frozen=True)
class ProxyInfo:
    scheme: str  # http | https | socks5
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def url(self, with_credentials: bool = True) -> str:
        auth = ""
        if with_credentials and self.username:
            from urllib.parse import quote

            auth = f"{quote(self.username, safe='')}:{quote(self.password or '', safe='')}@"
        return f"{self.scheme}://{auth}{self.host}:{self.port}"


@dataclass(frozen=True)
class ClientInfo:
    id: str
    organization_id: str
    transport: str
    config: dict = field(default_factory=dict)   # non-secret settings (e.g. phone_number_id, scan_after_ms)
    secrets: dict = field(default_factory=dict)  # decrypted secrets (e.g. access_token, app_secret)
    proxy: ProxyInfo | None = None
    phone: str | None = None


@dataclass(frozen=True)
class MediaRef:
    media_id: str
    mime_type: str
    filename: str | None = None
    path: str | None = None   # local file of the stored media (web, sim)
    url: str | None = None    # a link the provider can fetch (cloud)
    size: int | None = None


@dataclass(frozen=True)
class OutboundMessage:
    message_id: str           # our msg_ id: transports must make a resend of the same id harmless
    to: str                   # E.164
    #: text | template | image | video | audio | document | sticker (image/webp) | voice (a voice
    #: note: audio, usually audio/ogg opus); only image, video and document carry a caption
    type: str
    text: str | None = None
    caption: str | None = None
    media: MediaRef | None = None
    template: dict | None = None  # {"name", "language", "body" (rendered), "variables": {...}, "components": [...]}


@dataclass(frozen=True)
class SendResult:
    external_id: str          # the transport's id for the message; acks refer to it
    status: str = "sent"      # "sent" when the network accepted it


#: how far a sent message got
Receipt = Literal["sent", "delivered", "read"]


@dataclass(frozen=True)
class Lookup:
    """What a transport knows of one of our messages (``Transport.lookup``): ``sent`` False when
    it is certain the message never reached WhatsApp; else its id and the furthest status known
    (``sent``, ``delivered``, ``read``) with when each happened."""

    sent: bool
    external_id: str | None = None
    status: Receipt | None = None
    times: dict = field(default_factory=dict)   # status -> datetime


@dataclass(frozen=True)
class InboundMessage:
    external_id: str
    from_phone: str           # E.164
    type: str = "text"
    text: str | None = None
    media: dict | None = None  # {"mime_type", "url"|"data_b64", "filename", "caption"}
    timestamp: datetime | None = None
    contact_name: str | None = None


class SendError(Exception):
    def __init__(self, message: str, *, code: str = "transport_error", details: dict | None = None):
        super().__init__(message)
        self.code, self.details = code, details or {}


class TransientSendError(SendError):
    """Try again later (network trouble, throughput limits). ``retry_after_ms`` when the provider says."""

    def __init__(self, message: str, *, code: str = "transport_unavailable", retry_after_ms: int | None = None,
                 details: dict | None = None):
        super().__init__(message, code=code, details=details)
        self.retry_after_ms = retry_after_ms


class PermanentSendError(SendError):
    """Sending this message will never work (invalid recipient, outside the window, ...)."""


class EventSink(Protocol):
    """Where a transport reports what happens. ``delay_ms`` lets a transport (the sim) report
    something in the future without keeping a thread alive for it."""

    def status(self, client: ClientInfo, status: str, detail: dict | None = None, *, delay_ms: int = 0) -> None:
        """``status`` in REPORTED_STATUSES; for ``qr`` detail has ``qr`` and ``expires_at`` (ISO);
        for ``ready`` detail may have ``phone``; for ``banned``/``failed``/``disconnected`` a ``reason``."""

    def ack(self, client: ClientInfo, external_id: str, status: str, *, error: dict | None = None,
            at: datetime | None = None, delay_ms: int = 0, message_id: str | None = None) -> None:
        """A message this client sent moved to ``status`` (ACK_STATUSES). ``message_id`` (our
        ``msg_`` id) when the transport knows it: the ack then finds a message whose transport id
        was never recorded (its sender died right after the send)."""

    def inbound(self, client: ClientInfo, message: InboundMessage, *, delay_ms: int = 0) -> None:
        """A contact wrote to this client."""

    def session_state(self, client: ClientInfo, state: bytes) -> None:
        """Login state to persist (encrypted) so the session survives restarts (web)."""


class Transport(ABC):
    name: str = ""
    #: stateful transports keep a live session in one process (a session host)
    stateful: bool = False

    def __init__(self, client: ClientInfo, events: EventSink):
        self.client, self.events = client, events

    @abstractmethod
    def start(self, state: bytes | None = None) -> None:
        """Begin connecting; report ``qr`` / ``ready`` / ``failed`` through the sink. ``state`` is the
        last login state saved through ``session_state`` (stateful transports)."""

    @abstractmethod
    def stop(self) -> None:
        """Close the session, keeping the login (a later start needs no QR)."""

    @abstractmethod
    def logout(self) -> None:
        """Log the account out (a later start needs a new QR)."""

    @abstractmethod
    def send(self, message: OutboundMessage) -> SendResult:
        """Send one message now. Pacing has already happened; typing indicators (web) happen here."""

    def lookup(self, message_id: str, attempted_at: datetime | None = None) -> Lookup | None:
        """Whether our message ``message_id`` (whose send was attempted at ``attempted_at``)
        reached WhatsApp, when the platform cannot tell (its sender died, or the send raised
        something unexpected). None: this transport cannot know (the message then waits as
        ``unknown`` for an ack that tells)."""
        return None

    def healthy(self) -> bool:
        return True


class SilentSink:
    """An event sink that reports nothing: for calls outside a session (template management,
    downloading a medium), where the transport has nothing to report."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
