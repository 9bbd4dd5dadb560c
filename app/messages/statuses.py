"""Message statuses, their order and their events, in one place (how they move: app/messages/tracking.py)."""
from __future__ import annotations

from typing import Literal, get_args

MessageStatus = Literal["queued", "sending", "sent", "delivered", "read", "failed", "cancelled", "received",
                        "unknown"]
STATUSES: tuple[str, ...] = get_args(MessageStatus)
#: outbound statuses in order; an ack never moves a message to a lower rank. ``unknown``: the send
#: may or may not have gone out (its outcome was lost); the first ack tells.
RANK = {"queued": 0, "sending": 1, "unknown": 1, "sent": 2, "delivered": 3, "read": 4}
TERMINAL = ("failed", "cancelled")
#: failures that did not come from the transport: an ack may still prove them wrong
DOUBTFUL_FAILURES = ("interrupted",)
TIMESTAMP_OF = {"queued": "queued_at", "sending": "sending_at", "sent": "sent_at", "delivered": "delivered_at",
                "read": "read_at", "failed": "failed_at", "cancelled": "cancelled_at"}
EVENTS = {"queued", "sent", "delivered", "read", "failed", "received", "unknown"}

#: what one ``messages.send`` job (or a session host's send) did, for its log line and the tests
SendOutcome = Literal["missing", "skipped", "waiting", "held", "forwarded", "repaced", "sent", "failed", "unknown"]
#: what ``messages.reconcile`` found out about a message whose send was in doubt
ReconcileOutcome = Literal["skipped", "unknown", "requeued", "sent", "delivered", "read"]
