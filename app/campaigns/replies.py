"""Replies to campaigns: a contact's message after a campaign message counts as its reply
(``progress.replied``)."""
from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from config import settings


def record_reply(session: Session, organization_id: str, contact_id: str) -> None:
    """A contact wrote: its latest campaign message of the last ``CAMPAIGN_REPLY_DAYS`` days that
    reached it (sent, delivered or read) counts as replied, once."""
    session.execute(text("""
        UPDATE campaign_recipients SET replied_at = now(), updated_at = now()
         WHERE id = (SELECT id FROM campaign_recipients
                      WHERE organization_id = :org AND contact_id = :contact AND replied_at IS NULL
                        AND status IN ('sent', 'delivered', 'read')
                        AND updated_at > now() - make_interval(days => :days)
                      ORDER BY id DESC LIMIT 1)
    """), {"org": organization_id, "contact": contact_id, "days": settings.CAMPAIGN_REPLY_DAYS})
