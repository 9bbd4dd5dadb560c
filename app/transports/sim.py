"""``sim``: a WhatsApp network simulator, so the product runs and is tested without WhatsApp.

Stateless in-process: everything the simulated network remembers lives in Redis (``SimNetwork``,
app/transports/sim_network.py),
so any worker process can build a ``SimTransport`` for a client and carry on where another left
off. Nothing sleeps: what happens "later" (the phone scanning the QR, delivery and read receipts,
contacts replying) is reported at once through the sink with ``delay_ms``, and waits in the broker.

The simulated network per client (Redis, ``wa:sim:<client_id>:*``):

- ``session``   the live session's token; every status report carries it as ``detail["session"]``
                so a delayed report of a session stopped since is recognised as stale
                (``SimTransport.is_current_session``) and ignored by ``clients.on_status``;
- ``linked_at`` when the simulated phone scanned the QR (epoch ms): a later start needs no QR,
                ``logout`` and a ban forget it;
- ``banned``, ``refuse`` (reconnects to refuse), ``fail_next`` (sends to fail): injected faults;
- ``received`` / ``ids``: every send by message id (``GET /api/clients/{id}/sim/network``);
- ``sent_at``: when each message id first arrived (epoch ms), so ``lookup`` can tell what happened
  to a message whose sender died.

Config knobs (``clients.config``) are listed in ``DEFAULTS``; docs/clients.md explains them.
Every random choice is a hash of ``seed`` (default: the client id) and the message id, so a run is
reproducible.
"""
from __future__ import annotations

import base64
import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from app.transports.base import (
    ClientInfo,
    EventSink,
    InboundMessage,
    Lookup,
    OutboundMessage,
    PermanentSendError,
    Receipt,
    SendResult,
    TransientSendError,
    Transport,
)
from app.transports.sim_network import SimNetwork, now_ms

DEFAULTS: dict = {
    "phone": None,             # E.164 the account "has"; default a fake +1555... number derived from the client id
    "scan_after_ms": 1000,     # the simulated phone scans the QR this long after start
    "auto_scan": True,         # false: the phone never scans (the QR rotates, then the start fails: qr_timeout)
    "qr_ttl_ms": 20000,        # each QR code is valid this long, then a new one is shown
    "qr_rotations": 6,         # QR codes shown before the start fails with reason qr_timeout
    "connect_after_ms": 100,   # a start with the login kept (after stop or a disconnect) is ready after this
    "deliver_after_ms": 300,   # delivered ack this long after a send
    "read_after_ms": 1500,     # read ack this long after a send (for the read_rate share of messages)
    "read_rate": 1.0,          # share of messages read (0..1)
    "reply_rate": 0.0,         # share of messages the contact replies to (0..1)
    "reply_after_ms": 2000,    # the reply comes this long after the send
    "reply_text": "Thanks, got it: {text}",  # the reply; {text} is the message's text
    "fail_rate": 0.0,          # share of sends refused at once as invalid_recipient (0..1)
    "seed": None,              # seed of every random choice; default the client id
}

_MS_KEYS = ("scan_after_ms", "qr_ttl_ms", "connect_after_ms", "deliver_after_ms", "read_after_ms", "reply_after_ms")
_RATE_KEYS = ("read_rate", "reply_rate", "fail_rate")
_MAX_MS = 24 * 3600 * 1000
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
#: how long the simulated network remembers a client that stopped writing to it


def refused_before_running(exc: BaseException) -> bool:
    """Whether a Redis error means a MULTI/EXEC block certainly did not run: the server refused it
    (full, read-only, loading) or no connection could be made. Any other failure (a connection
    reset, a timeout) may come after it ran."""
    import redis

    if isinstance(exc, (redis.exceptions.OutOfMemoryError, redis.exceptions.ExecAbortError,
                        redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError)):
        return True
    return isinstance(exc, redis.exceptions.ConnectionError) and isinstance(
        exc.__cause__ or exc.__context__, ConnectionRefusedError)


def validate_config(config: dict) -> dict[str, list[str]]:
    """Field errors of a sim client's (non-secret) config; empty when it is valid."""
    errors: dict[str, list[str]] = {}
    for key, value in config.items():
        if key not in DEFAULTS:
            errors[key] = [f"Unknown sim setting; known: {', '.join(sorted(DEFAULTS))}."]
        elif key == "auto_scan":
            if not isinstance(value, bool):
                errors[key] = ["Must be true or false."]
        elif key in _MS_KEYS or key == "qr_rotations":
            low, high = (1, 100) if key == "qr_rotations" else (1000 if key == "qr_ttl_ms" else 0, _MAX_MS)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                errors[key] = [f"Must be an integer between {low} and {high}."]
        elif key in _RATE_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                errors[key] = ["Must be a number between 0 and 1."]
        elif key == "phone":
            if not isinstance(value, str) or not _E164.match(value):
                errors[key] = ["Must be a phone number in E.164 (+14155550123)."]
        elif key == "reply_text":
            if not isinstance(value, str) or not 1 <= len(value) <= 1000:
                errors[key] = ["Must be a text of 1 to 1000 characters."]
        elif key == "seed":
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))
                                      or len(str(value)) > 200):
                errors[key] = ["Must be a string or an integer (at most 200 characters)."]
    return errors


def fake_phone(client_id: str) -> str:
    """A stable fake US number in the 555 range for a client without ``config.phone``."""
    digits = int(hashlib.sha256(client_id.encode()).hexdigest(), 16) % 10**7
    return f"+1555{digits:07d}"


def _dt(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


class SimTransport(Transport):
    name = "sim"
    stateful = False
    #: the config check the clients service runs on create/update (a transport may declare one)
    validate_config = staticmethod(validate_config)

    def __init__(self, client: ClientInfo, events: EventSink, *, network: SimNetwork | None = None):
        super().__init__(client, events)
        self.network = network or SimNetwork(client.id)
        self.config = {**DEFAULTS, **{k: v for k, v in (client.config or {}).items() if k in DEFAULTS}}

    # -- helpers ----------------------------------------------------------------------------

    @property
    def seed(self) -> str:
        seed = self.config.get("seed")
        return self.client.id if seed is None else str(seed)

    def chance(self, message_id: str, purpose: str) -> float:
        """A number in [0, 1) fixed by the seed, the message id and what it decides."""
        digest = hashlib.sha256(f"{self.seed}:{message_id}:{purpose}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def phone(self) -> str:
        return self.config.get("phone") or self.client.phone or fake_phone(self.client.id)

    def external_id(self, message_id: str) -> str:
        return "sim_" + hashlib.sha256(f"{self.client.id}:{message_id}".encode()).hexdigest()[:24]

    def qr_payload(self, start_number: int, rotation: int) -> str:
        """What the QR encodes: random, or fixed by the seed when one is configured."""
        if self.config.get("seed") is None:
            raw = secrets.token_bytes(24)
        else:
            raw = hashlib.sha256(f"{self.seed}:qr:{start_number}:{rotation}".encode()).digest()[:24]
        return f"2@sim,{base64.b64encode(raw).decode()},{self.client.id}"

    def _status(self, status: str, detail: dict, token: str | None, delay_ms: int = 0) -> None:
        if token:
            detail = {**detail, "session": token}
        self.events.status(self.client, status, detail, delay_ms=delay_ms)

    @classmethod
    def is_current_session(cls, client_id: str, token: str) -> bool:
        """Whether a report stamped with ``token`` belongs to the client's live session."""
        return SimNetwork(client_id).session() == token

    # -- the interface ----------------------------------------------------------------------

    def start(self, state: bytes | None = None) -> None:
        token, number = self.network.new_session()
        if self.network.banned():
            self._status("banned", {"reason": "the simulated network banned this account"}, token)
            return
        if self.network.take_refusal():
            self._status("disconnected", {"reason": "the simulated network refused the connection"}, token)
            return
        if self.network.linked():
            self._status("ready", {"phone": self.phone()}, token, delay_ms=int(self.config["connect_after_ms"]))
            return
        scan, ttl = self.config["scan_after_ms"], int(self.config["qr_ttl_ms"])
        rotations = int(self.config["qr_rotations"])
        now = now_ms()
        scans = bool(self.config["auto_scan"]) and int(scan) < rotations * ttl
        for i in range(rotations):
            shown_at = i * ttl
            if i > 0 and scans and shown_at >= int(scan):
                break
            self._status("qr", {"qr": self.qr_payload(number, i), "expires_at": _iso(now + shown_at + ttl)},
                         token, delay_ms=shown_at)
        if scans:
            self.network.link_at(now + int(scan))
            self._status("ready", {"phone": self.phone()}, token, delay_ms=int(scan))
        else:
            self._status("failed", {"reason": "qr_timeout: the QR code was not scanned"}, token,
                         delay_ms=rotations * ttl)

    def stop(self) -> None:
        self.network.end_session(forget_login=False)

    def logout(self) -> None:
        self.network.end_session(forget_login=True)

    def send(self, message: OutboundMessage) -> SendResult:
        not_on_network = self.chance(message.message_id, "fail") < float(self.config["fail_rate"])
        try:
            outcome, detail = self.network.send(message.message_id, not_on_network=not_on_network)
        except Exception as exc:
            if refused_before_running(exc):  # the network never took it: safe to try again
                raise TransientSendError(f"the simulated network refused the send ({exc.__class__.__name__})",
                                         code="transport_unavailable") from exc
            raise  # it may have arrived: the platform asks ``lookup`` once it can
        if outcome == "fault" and detail == "1":
            raise PermanentSendError("send refused by an injected sim fault", code="sim_fault")
        if outcome == "fault":
            raise TransientSendError("send failed by an injected sim fault", code="sim_fault")
        if outcome == "banned":
            raise TransientSendError("the simulated network banned this account", code="client_banned")
        if outcome == "not_on_network":
            raise PermanentSendError(f"{message.to} is not on the simulated network", code="invalid_recipient")
        external_id = self.external_id(message.message_id)
        if int(detail) > 1:
            return SendResult(external_id)  # a resend: the network counted it, the contact already has it
        now = datetime.now(UTC)
        for status, after_ms in self._receipts(message.message_id):
            self.events.ack(self.client, external_id, status, at=now + timedelta(milliseconds=after_ms),
                            delay_ms=after_ms, message_id=message.message_id)
        if self.chance(message.message_id, "reply") < float(self.config["reply_rate"]):
            reply_ms = int(self.config["reply_after_ms"])
            text = str(self.config["reply_text"]).replace("{text}", message.text or message.caption or "")
            self.events.inbound(self.client, InboundMessage(
                external_id="sim_in_" + hashlib.sha256(
                    f"{self.seed}:{message.message_id}:reply".encode()).hexdigest()[:24],
                from_phone=message.to, type="text", text=text, timestamp=now + timedelta(milliseconds=reply_ms)),
                delay_ms=reply_ms)
        return SendResult(external_id)

    def _receipts(self, message_id: str) -> list[tuple[Receipt, int]]:
        """The receipts of a message: (status, ms after its arrival), fixed by the seed."""
        deliver_ms = int(self.config["deliver_after_ms"])
        receipts: list[tuple[Receipt, int]] = [("delivered", deliver_ms)]
        if self.chance(message_id, "read") < float(self.config["read_rate"]):
            receipts.append(("read", max(int(self.config["read_after_ms"]), deliver_ms)))
        return receipts

    def lookup(self, message_id: str, attempted_at: datetime | None = None) -> Lookup | None:
        """What the simulated network knows of ``message_id``: when it arrived and which of its
        receipts are due by now, or that it never arrived. The network's memory is the truth of
        the simulation (a contact has what the network delivered), so no trace means not sent."""
        arrived = self.network.sent_at(message_id)
        if arrived is None:
            return Lookup(sent=False)
        times = {"sent": _dt(arrived)}
        status: Receipt = "sent"
        for receipt, after_ms in self._receipts(message_id):
            if arrived + after_ms <= now_ms():
                times[receipt], status = _dt(arrived + after_ms), receipt
        return Lookup(sent=True, external_id=self.external_id(message_id), status=status, times=times)

    # -- test hooks (POST /api/clients/{id}/sim/...) ----------------------------------------

    def scan(self) -> None:
        """The simulated phone scans the QR code shown now (for ``auto_scan: false``): the account
        is linked and ready. A new session token makes this session's pending QR rotations and its
        QR timeout stale, so they are ignored when they come."""
        token, _ = self.network.new_session()
        self.network.link_at(now_ms())
        self._status("ready", {"phone": self.phone(), "reason": "QR code scanned"}, token)

    def inject_disconnect(self, count: int = 1) -> None:
        """Drop the connection; the next ``count - 1`` reconnection attempts are refused too."""
        self.network.refuse_reconnects(count - 1)
        self._status("disconnected", {"reason": "the simulated network dropped the connection"}, self.network.session())

    def inject_ban(self) -> None:
        self.network.ban()
        self._status("banned", {"reason": "the simulated network banned this account"}, self.network.session())

    def inject_fail_next(self, count: int = 1, permanent: bool = False) -> None:
        self.network.fail_next(count, permanent)

    def receive(self, from_phone: str, text: str | None, *, kind: str = "text", media: dict | None = None) -> str:
        """A simulated contact writes to this client (``media``: a file it sends, with its bytes as
        ``data_b64``, as WhatsApp Web reports them); returns the inbound message's external id."""
        external_id = "sim_in_" + secrets.token_hex(12)
        self.events.inbound(self.client, InboundMessage(external_id=external_id, from_phone=from_phone, type=kind,
                                                        text=text if media is None else None,
                                                        media={**media, "caption": text} if media else None,
                                                        timestamp=datetime.now(UTC)))
        return external_id
