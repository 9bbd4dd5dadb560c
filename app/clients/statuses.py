"""Client (WhatsApp account) and proxy statuses, and the groups the code tests them by, in one place.

docs/clients.md draws the lifecycle: the API moves a client to ``starting`` / ``stopped`` itself,
transports report the rest (``app.transports.base.REPORTED_STATUSES``), and ``ACCEPTS`` says which
report each status takes (anything else is a stale report and is ignored).
"""
from __future__ import annotations

from typing import Literal, get_args

ClientStatus = Literal["created", "starting", "qr", "ready", "disconnected", "banned", "stopped", "failed"]
STATUSES: tuple[str, ...] = get_args(ClientStatus)

#: statuses in which a transport session is (or is about to be) alive
LIVE = ("starting", "qr", "ready", "disconnected")
#: statuses in which a stateful (web) session should be running on some session host
ACTIVE_STATUSES = ("starting", "qr", "ready")
#: statuses in which a stop or logout request still applies (anything else: started again since)
SHUT_STATUSES = ("stopped", "failed", "banned")

#: report -> the statuses that accept it
ACCEPTS: dict[str, set[str]] = {
    "starting": {"starting", "disconnected", "ready"},  # ready: a session host taking a session over
    "qr": {"starting", "qr", "ready", "disconnected"},   # ready/disconnected: the login was lost, scan again
    "ready": {"starting", "qr", "ready", "disconnected"},
    "disconnected": {"starting", "qr", "ready"},
    "logged_out": set(LIVE),
    "failed": set(LIVE),
    "banned": {"starting", "qr", "ready", "disconnected", "stopped", "failed"},
}

#: the webhook event of entering a status (leaving ``ready`` any other way is ``client.disconnected``)
EVENT_FOR_STATUS = {"qr": "client.qr", "ready": "client.connected", "disconnected": "client.disconnected",
                    "banned": "client.banned"}

ProxyStatus = Literal["unchecked", "ok", "failing", "dead"]
PROXY_STATUSES: tuple[str, ...] = get_args(ProxyStatus)
