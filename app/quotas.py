"""Per-organisation caps on what a tenant can create (clients, API keys, proxies, users, contacts).

Each cap is a setting (``MAX_<RESOURCE>_PER_ORG``); creating one more than it allows is a 422
``limit_reached`` naming the resource and the limit. The count and the insert are serialised per
organisation and resource by a transaction-scoped advisory lock, so concurrent requests cannot
slip past the cap together; nothing else waits on it (rows referencing the organisation are not
locked). Contacts that the pipeline creates by itself (a send to a new number, an inbound
message) are bounded by pacing and by who writes in, not by this cap; the API's creations and
imports are.
"""
from __future__ import annotations

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from app.errors import ValidationError
from config import settings

#: resource -> the setting that caps it
CAPS = {
    "clients": "MAX_CLIENTS_PER_ORG",
    "api_keys": "MAX_API_KEYS_PER_ORG",
    "proxies": "MAX_PROXIES_PER_ORG",
    "users": "MAX_USERS_PER_ORG",
    "contacts": "MAX_CONTACTS_PER_ORG",
}


def enforce(session: Session, organization_id: str, resource: str, model, *live, adding: int = 1) -> None:
    """422 ``limit_reached`` unless ``adding`` more ``model`` rows of the organisation (those
    matching the ``live`` conditions, e.g. not deleted) stay within the resource's cap."""
    limit = getattr(settings, CAPS[resource])
    serialise(session, organization_id, resource)
    count = session.scalar(select(func.count()).select_from(model)
                           .where(model.organization_id == organization_id, *live))
    if count + adding > limit:
        raise ValidationError(
            f"This organisation has {count} {resource.replace('_', ' ')}, and may have at most {limit} "
            f"(the server's {CAPS[resource]} setting): delete some first, or ask the operator",
            code="limit_reached", details={"resource": resource, "limit": limit, "count": count})


def serialise(session: Session, organization_id: str, resource: str) -> None:
    """Take the lock that serialises counting and adding ``resource`` rows of the organisation
    (until the transaction ends): what ``enforce`` takes, for callers that count themselves (imports)."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                    {"key": f"quota:{resource}:{organization_id}"})
