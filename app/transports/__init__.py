"""WhatsApp transports behind one interface (``base.Transport``): sim, cloud, web."""
from __future__ import annotations

import importlib

from app.transports.base import Transport

#: transport name -> "module:Class"; modules are imported on first use (web pulls in Playwright)
REGISTRY = {
    "sim": "app.transports.sim:SimTransport",
    "cloud": "app.transports.cloud:CloudTransport",
    "web": "app.transports.web:WebTransport",
}

#: transports whose session lives in one process (a session host of the `sessions` pool)
STATEFUL = {"web"}
#: transports whose ``lookup`` also tells how far a message got (its receipts): a ``sent`` message
#: whose receipts are overdue is asked about
KNOWS_RECEIPTS = {"sim"}


def transport_class(name: str) -> type[Transport]:
    try:
        module, _, cls = REGISTRY[name].partition(":")
    except KeyError:
        raise KeyError(f"unknown transport {name!r}") from None
    return getattr(importlib.import_module(module), cls)
