"""The permission matrix, declared once, and the decorator every route uses.

API.md roles: ``admin`` everything; ``manager`` team, clients, campaigns, webhooks, audit (not org
settings, not admin-role keys); ``agent`` send, contacts, media — only on assigned clients;
``viewer`` read-only, analytics, exports. A route is either ``@requires("perm")`` or ``@public``;
the test suite walks the OpenAPI document and fails on a route that is neither.

The check runs twice: ``authorize_request`` (a before_request hook installed by
``app.security.auth.init_app``) authenticates and checks the route's permission before the body
is parsed, so a caller without the right gets 401/403 rather than a validation error about a body
it may not send; the decorator checks again when the view is called (cheap: the principal is
cached on ``flask.g``), so a view is safe even where the hook is not installed.
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


def handler_for_request(app):
    """The function that answers the current request: the MethodView method for its verb, or the
    view function itself. None when no route matched."""
    from flask import request

    if request.url_rule is None:
        return None
    view = app.view_functions.get(request.endpoint)
    view_class = getattr(view, "view_class", None)
    if view_class is None:
        return view
    method = request.method.lower()
    handler = getattr(view_class, method, None)
    if handler is None and method == "head":
        handler = getattr(view_class, "get", None)
    return handler


def authorize_request() -> None:
    """before_request: authenticate and check the permission of the route about to run.

    A MethodView method that declares neither ``@requires`` nor ``@public`` is refused with a
    500 (fail closed, logged); tests/test_permissions.py catches such a route before it ships.
    """
    from flask import current_app, request

    if request.method == "OPTIONS":
        return
    handler = handler_for_request(current_app)
    if handler is None:
        return
    if not hasattr(handler, "permission"):
        if getattr(current_app.view_functions.get(request.endpoint), "view_class", None) is None:
            return  # a plain function view of a library (the OpenAPI document, Swagger UI)
        raise RuntimeError(f"route {request.endpoint} ({request.method}) declares no permission: "
                           "decorate it with @requires(...) or @public (app/security/permissions.py)")
    permission = handler.permission
    if permission is None:
        return
    from app.security.auth import current_principal

    principal = current_principal()
    if not allowed(principal.role, permission):
        raise Forbidden(f"Your role ({principal.role}) may not do this", code="forbidden",
                        details={"required_permission": permission})
