"""Statuses of an analytics export made by a worker (how one moves: app/analytics/exports.py)."""
from __future__ import annotations

from typing import Literal, get_args

ExportStatus = Literal["queued", "running", "ready", "failed", "expired"]
EXPORT_STATUSES: tuple[str, ...] = get_args(ExportStatus)
#: not finished yet: what the per-organisation limit of open exports counts
OPEN_EXPORT_STATUSES = ("queued", "running")
EXPORT_KINDS = ("rollups", "messages")
