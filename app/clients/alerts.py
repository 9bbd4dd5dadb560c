"""Alerts an organisation should see: bans, logouts from the phone, given-up reconnects, dead proxies."""
from __future__ import annotations

from sqlalchemy.orm import Session

from app.clients.models import BanAlert


def raise_alert(session: Session, organization_id: str, kind: str, client_id: str | None, details: dict) -> BanAlert:
    """Record an alert for the organisation (a ban, a logout from the phone, a dead proxy, ...)."""
    alert = BanAlert(organization_id=organization_id, client_id=client_id, kind=kind,
                     details={k: v for k, v in details.items() if v is not None})
    session.add(alert)
    return alert


def alert_detail(detail: dict) -> dict:
    """What of a transport's report an alert keeps."""
    return {k: detail[k] for k in ("code",) if k in detail}
