"""Column types shared by every domain's ``models.py``.

Ids are text in the "C" collation (byte order: the time-ordered ids of ``app.db.new_id`` sort as
made); times are always ``timestamptz``; a tenant-owned row's organisation goes with it.
"""
from __future__ import annotations

from sqlalchemy import DateTime, ForeignKey, Text

CID = Text(collation="C")
TS = DateTime(timezone=True)


def ORG_FK() -> ForeignKey:
    """``organization_id``: deleted with its organisation."""
    return ForeignKey("organizations.id", ondelete="CASCADE")


def CLIENT_FK() -> ForeignKey:
    """``client_id``: deleted with its WhatsApp account."""
    return ForeignKey("clients.id", ondelete="CASCADE")
