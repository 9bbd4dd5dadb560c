"""The permission matrix, declared once, and the decorator every route uses.

API.md roles: ``admin`` everything; ``manager`` team, clients, campaigns, webhooks, audit (not org
settings, not admin-role keys); ``agent`` send, contacts, media — only on assigned clients;
``viewer`` read-only, analytics, exports. A route is either ``@requires("perm")`` or ``@public``;
the test suite walks the OpenAPI document and fails on a route that is neither.
"""
from __future__ import annotations

import functools

from app.errors import Forbidden

ALL = frozenset({"admin", "manager", "agent", "viewer"})
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


def requires(permission: str):
    """Route decorator: authenticate, then check ``permission`` against the matrix (403 if not held)."""
    if permission not in MATRIX:
        raise KeyError(f"unknown permission {permission!r}")

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            from app.security.auth import current_principal

            principal = current_principal()
            if not allowed(principal.role, permission):
                raise Forbidden(f"Your role ({principal.role}) may not do this", code="forbidden",
                                details={"required_permission": permission})
            return fn(*args, **kwargs)

        wrapper.permission = permission
        return wrapper

    return decorate


def public(fn):
    """Route decorator: no authentication (login, register, health, inbound provider webhooks)."""
    fn.permission = None
    fn.is_public = True
    return fn
