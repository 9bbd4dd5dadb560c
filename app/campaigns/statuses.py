"""Campaign and recipient statuses, in one place (how they move: app/campaigns/service.py and
app/campaigns/sending.py; a recipient's follows its message's by a trigger, schema.sql)."""
from __future__ import annotations

from typing import Literal, get_args

CampaignStatus = Literal["draft", "scheduled", "running", "paused", "completed", "cancelled", "failed"]
CAMPAIGN_STATUSES: tuple[str, ...] = get_args(CampaignStatus)
RecipientStatus = Literal["pending", "queued", "sent", "delivered", "read", "failed", "skipped", "cancelled"]
RECIPIENT_STATUSES: tuple[str, ...] = get_args(RecipientStatus)
#: a campaign's content can change only in these
EDITABLE = ("draft", "scheduled")
#: a campaign with work ahead (its template is in use)
ACTIVE = ("scheduled", "running", "paused")
#: a client in one of these (or deleted) has dropped out of its campaigns: its share moves
DROPPED_OUT = ("banned", "stopped", "failed")
