"""The permission matrix, declared once: which role holds which permission (pure policy).

API.md roles: ``admin`` everything; ``manager`` team, clients, campaigns, webhooks, audit (not org
settings, not admin-role keys); ``agent`` send, contacts, media — only on assigned clients;
``viewer`` read-only, analytics, exports. A route is either ``@requires("perm")`` or ``@public``;
the test suite walks the OpenAPI document and fails on a route that is neither.

``app/security/guard.py`` applies it to requests: the route decorators and the request hooks.
"""
from __future__ import annotations

from typing import Literal, get_args

from app.errors import Forbidden

Role = Literal["admin", "manager", "agent", "viewer"]
#: every role, most rights first
ROLES: tuple[str, ...] = get_args(Role)
ALL = frozenset(ROLES)
STAFF = frozenset({"admin", "manager"})
WRITERS = frozenset({"admin", "manager", "agent"})
ADMIN = frozenset({"admin"})

#: permission -> roles that hold it
MATRIX: dict[str, frozenset[str]] = {
    # organisation
    "org:read": ALL,
    "org:settings": ADMIN,
    # team
    "users:read": STAFF,
    "users:write": STAFF,
    "users:assign_clients": STAFF,
    # API keys: managers may create keys up to their own role (services enforce the ceiling)
    "apikeys:read": STAFF,
    "apikeys:write": STAFF,
    "audit:read": STAFF,
    # WhatsApp accounts
    "clients:read": ALL,
    "clients:write": STAFF,
    "clients:operate": STAFF,  # start / stop / logout / qr
    "proxies:read": STAFF,
    "proxies:write": STAFF,
    # messaging
    "messages:read": ALL,
    "messages:send": WRITERS,
    "contacts:read": ALL,
    "contacts:write": WRITERS,
    "templates:read": ALL,
    "templates:write": STAFF,
    "media:read": ALL,
    "media:write": WRITERS,
    "campaigns:read": ALL,
    "campaigns:write": STAFF,
    "automations:read": ALL,
    "automations:write": STAFF,
    "webhooks:read": STAFF,
    "webhooks:write": STAFF,
    "analytics:read": ALL,
    "analytics:export": frozenset({"admin", "manager", "viewer"}),
    # the simulator's test hooks (sim transport only)
    "sim:drive": WRITERS,
}


def allowed(role: str, permission: str) -> bool:
    try:
        return role in MATRIX[permission]
    except KeyError:
        raise KeyError(f"unknown permission {permission!r}; declare it in app/security/permissions.py") from None


def check(role: str, permission: str) -> None:
    """Raise Forbidden unless ``role`` holds ``permission``."""
    if not allowed(role, permission):
        raise Forbidden(f"Your role ({role}) may not do this", code="forbidden",
                        details={"required_permission": permission})
