"""How long a campaign takes: its recipients spread over its clients, each at its own limits
(gap, per minute / hour / day), within its send window. Shown before it starts and while it runs."""
from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.campaigns import windows
from app.campaigns.models import Campaign, clients_of
from app.campaigns.statuses import DROPPED_OUT
from app.clients.models import Client
from app.db import utcnow
from app.messages.pacing import Limits


def client_rate(client: Client) -> tuple[float, float]:
    """(sends a second in a burst, sends a day) the client's limits allow."""
    limits = Limits.of(client)
    if limits is None:
        return 50.0, float("inf")
    gap_s = max(0.001, (limits.min_gap_ms + limits.max_gap_ms) / 2000)
    rate = min(1 / gap_s, limits.per_minute / 60, limits.per_hour / 3600)
    return rate, float(limits.per_day)


def seconds_for(n: int, rate: float, per_day: float, open_s: float) -> float:
    """How long ``n`` sends take at ``rate`` a second, at most ``per_day`` a day, ``open_s``
    seconds a day (the send window)."""
    if n <= 0:
        return 0.0
    daily = min(per_day, rate * open_s)
    if daily <= 0:
        return float("inf")
    full_days = int((n - 1) // daily)
    return full_days * 86_400 + (n - full_days * daily) / rate


def eta(session: Session, campaign: Campaign, recipients: int, start: datetime | None = None) -> dict:
    """``{recipients, seconds, finishes_at, clients: [{client_id, recipients, seconds}]}``: the
    recipients spread evenly over the sending clients that have not dropped out, each at its own
    limits, within the send window."""
    clients = [c for c in clients_of(session, campaign.id) if c.deleted_at is None and c.status not in DROPPED_OUT]
    open_s = windows.open_seconds_per_day(campaign.send_window)
    per_client: list[dict] = []
    for i, client in enumerate(sorted(clients, key=lambda c: c.id)):
        share = recipients // len(clients) + (1 if i < recipients % len(clients) else 0)
        rate, per_day = client_rate(client)
        per_client.append({"client_id": client.id, "recipients": share,
                           "seconds": round(seconds_for(share, rate, per_day, open_s), 1)})
    seconds: float | None = max((float(p["seconds"]) for p in per_client), default=None) if recipients else 0.0
    begins = start or (campaign.scheduled_at if campaign.status in ("draft", "scheduled") and campaign.scheduled_at
                       and campaign.scheduled_at > utcnow() else utcnow())
    finite = seconds is not None and seconds != float("inf")
    finishes = begins + timedelta(seconds=seconds) if finite and seconds is not None else None
    return {"recipients": recipients, "seconds": seconds if seconds != float("inf") else None,
            "finishes_at": finishes, "clients": per_client}
