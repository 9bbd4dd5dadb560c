"""Template review statuses, in one place (how they move: app/templates/reviews.py)."""
from __future__ import annotations

from typing import Literal, get_args

ReviewStatus = Literal["pending", "approved", "rejected", "paused", "disabled", "error"]
REVIEW_STATUSES: tuple[str, ...] = get_args(ReviewStatus)
#: Meta's template statuses (lowercased) as review statuses
META_STATUSES = {"approved": "approved", "rejected": "rejected", "pending": "pending", "paused": "paused",
                 "disabled": "disabled", "in_appeal": "pending", "pending_deletion": "disabled",
                 "deleted": "disabled", "flagged": "approved", "reinstated": "approved", "limit_exceeded": "paused"}
#: the least advanced first: a template's ``meta_status`` over several clients is the first found
LEAST_ADVANCED_FIRST = ("error", "rejected", "disabled", "paused", "pending", "approved")
