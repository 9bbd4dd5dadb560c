"""What ``python -m workers run`` hands ``dramatiq`` as its broker (``workers.worker:setup``): the
configured broker (workers/broker.py), plus the session-host runtime in the ``sessions`` pool."""
from __future__ import annotations

import dramatiq

from workers import session_host
from workers.broker import get_broker
from workers.state import current_pool


def setup() -> dramatiq.Broker:
    broker = get_broker()
    if current_pool() == "sessions":
        session_host.install(broker)
    return broker
