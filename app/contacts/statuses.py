"""Contact import statuses in one place (how an import moves: app/contacts/imports.py).

``queued`` (waiting for a worker, also after a crashed worker's import is handed on) -> ``running``
(a worker holds its lease) -> ``completed`` or ``failed``.
"""
from __future__ import annotations

from typing import Literal, get_args

ImportStatus = Literal["queued", "running", "completed", "failed"]
IMPORT_STATUSES: tuple[str, ...] = get_args(ImportStatus)
#: statuses a worker may still change
ACTIVE_IMPORT_STATUSES = ("queued", "running")
