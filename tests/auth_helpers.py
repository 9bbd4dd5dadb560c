"""Credentials for tests: a user or an API key of a given role in an organisation.

    headers = principal_headers(session, org, "manager")          # Authorization: Bearer ...
    headers = api_key_headers(session, org, "viewer")             # X-API-Key: sk_...
    user, headers = user_with_headers(session, org, "agent", client_ids=[client.id])

``org`` is an Organization or its id. Nothing here goes through bcrypt or the login endpoint
(fast); use ``make_user_with_password`` for tests that log in.
"""
from __future__ import annotations

from app.security.passwords import hash_password
from app.security.principal import SystemPrincipal
from app.security.tokens import issue_access_token
from tests import factories as f

PASSWORD = "correct horse battery staple"
_HASH_CACHE: dict[str, str] = {}


def _org_id(org) -> str:
    return org if isinstance(org, str) else org.id


def bearer(user) -> dict:
    """Headers with a fresh access token for ``user``."""
    token, _ = issue_access_token(user.id, user.organization_id, user.role)
    return {"Authorization": f"Bearer {token}"}


def user_with_headers(session, org, role: str, *, client_ids=(), **overrides):
    """A new active user of ``role`` in ``org`` (an agent assigned ``client_ids``) and its headers."""
    user = f.make_user(session, organization_id=_org_id(org), role=role, **overrides)
    for client_id in client_ids:
        f.make_user_client(session, user_id=user.id, client_id=client_id)
    return user, bearer(user)


def principal_headers(session, org, role: str, *, client_ids=(), **overrides) -> dict:
    """Bearer headers of a new user of ``role`` in ``org``."""
    return user_with_headers(session, org, role, client_ids=client_ids, **overrides)[1]


def api_key_with_headers(session, org, role: str, **fields):
    """A new API key of ``role`` in ``org`` (created by the platform) and its ``X-API-Key`` headers."""
    from app.apikeys.service import create_api_key

    row, secret = create_api_key(session, SystemPrincipal(_org_id(org)), name=fields.pop("name", f"test {role} key"),
                                 role=role, **fields)
    return row, {"X-API-Key": secret}


def api_key_headers(session, org, role: str, **fields) -> dict:
    return api_key_with_headers(session, org, role, **fields)[1]


def make_user_with_password(session, password: str = PASSWORD, **overrides):
    """A user whose password really is ``password`` (bcrypt once per password per test run)."""
    if password not in _HASH_CACHE:
        _HASH_CACHE[password] = hash_password(password)
    return f.make_user(session, password_hash=_HASH_CACHE[password], **overrides)
