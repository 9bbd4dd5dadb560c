"""Signed download links: a token that names what it downloads and until when, signed with
SECRET_KEY (a salt per kind of link, so a media link never opens an export). Media files and
analytics exports hand them out; the signed-download routes check them without credentials."""
from __future__ import annotations

import time
from datetime import UTC, datetime

from itsdangerous import BadSignature, URLSafeSerializer

from app.errors import AppError
from config import settings


class LinkExpired(AppError):
    status, code, message = 410, "link_expired", "This download link has expired"


class LinkInvalid(AppError):
    status, code, message = 403, "invalid_link", "This download link is not valid"


def public_base() -> str:
    """The address users reach the API at (PUBLIC_URL), for links handed out."""
    return (settings.PUBLIC_URL or f"http://{settings.HOST}:{settings.PORT}").rstrip("/")


def _serializer(salt: str) -> URLSafeSerializer:
    return URLSafeSerializer(settings.secret("SECRET_KEY", 48), salt=salt)


def sign(salt: str, fields: list, ttl: int) -> tuple[str, str]:
    """A token carrying ``fields`` for ``ttl`` seconds, and its expiry (ISO 8601)."""
    expires = int(time.time()) + int(ttl)
    return _serializer(salt).dumps([*fields, expires]), datetime.fromtimestamp(expires, tz=UTC).isoformat()


def verify(salt: str, token: str, size: int) -> list:
    """The ``size`` fields a token of ``sign(salt, ...)`` carries; 403 when it was altered (or is of
    another kind), 410 when it has expired."""
    try:
        *fields, expires = _serializer(salt).loads(token)
    except (BadSignature, ValueError, TypeError):
        raise LinkInvalid() from None
    if len(fields) != size or not isinstance(expires, int):
        raise LinkInvalid()
    if time.time() > expires:
        raise LinkExpired(details={"expired_at": datetime.fromtimestamp(expires, tz=UTC).isoformat()})
    return fields
