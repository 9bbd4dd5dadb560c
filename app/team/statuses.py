"""A user's statuses (roles are the permission policy's: ``app.security.permissions.ROLES``)."""
from __future__ import annotations

from typing import Literal, get_args

UserStatus = Literal["active", "disabled"]
STATUSES: tuple[str, ...] = get_args(UserStatus)
