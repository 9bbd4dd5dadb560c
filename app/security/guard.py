"""Where the permission policy meets requests: the route decorators and the request hooks.

A route is either ``@requires("perm")`` or ``@public``; the test suite walks the OpenAPI document
and fails on a route that is neither. The check runs twice: ``authorize_request`` (a
before_request hook installed by ``init_app``) authenticates and checks the route's permission
before the body is parsed, so a caller without the right gets 401/403 rather than a validation
error about a body it may not send; the decorator checks again when the view is called (cheap:
the principal is cached on ``flask.g``), so a view is safe even where the hook is not installed.
"""
from __future__ import annotations

import functools

from flask import Flask, current_app, request

from app.security.auth import current_principal, run_after_refusal
from app.security.permissions import MATRIX, check


def requires(permission: str):
    """Route decorator: authenticate, then check ``permission`` against the matrix (403 if not held)."""
    if permission not in MATRIX:
        raise KeyError(f"unknown permission {permission!r}")

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            check(current_principal().role, permission)
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
    500 (fail closed, logged); tests/security/test_permissions.py catches such a route before it ships.
    """
    if request.method == "OPTIONS":
        return
    handler = handler_for_request(current_app)
    if handler is None:
        return
    if not hasattr(handler, "permission"):
        if getattr(current_app.view_functions.get(request.endpoint), "view_class", None) is None:
            return  # a plain function view of a library (the OpenAPI document, Swagger UI)
        raise RuntimeError(f"route {request.endpoint} ({request.method}) declares no permission: "
                           "decorate it with @requires(...) or @public (app/security/guard.py)")
    permission = handler.permission
    if permission is None:
        return
    check(current_principal().role, permission)


def init_app(app: Flask) -> None:
    """Install the request hooks: the permission check before the view, and the writes that must
    outlive a refused request (``auth.run_after_refusal``)."""
    app.before_request(authorize_request)
    app.teardown_request(run_after_refusal)
