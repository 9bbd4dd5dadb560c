"""Access tokens: HS256 JWTs with iss/aud/exp/iat/jti checked. Refresh tokens are opaque random
strings stored hashed (see app/auth/service.py).

An access token issued at login carries ``sid``, the id of its refresh token family, so that
logging out or detecting a stolen refresh token can refuse the family's access tokens too.
"""
from __future__ import annotations

import hashlib
import secrets
import time

import jwt

from app.errors import Unauthorized
from config import settings

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub", "jti", "org"]
_secret: str | None = None


def secret_key() -> str:
    """SECRET_KEY, read once: it signs access tokens and keys request fingerprints (idempotency)."""
    global _secret
    if _secret is None:
        _secret = settings.secret("SECRET_KEY", 48)
    return _secret


def issue_access_token(user_id: str, organization_id: str, role: str, *,
                       session_id: str | None = None) -> tuple[str, int]:
    """A signed access token and its lifetime in seconds. ``role`` is informative only: the
    user's current role is re-read on every request."""
    now = int(time.time())
    ttl = settings.ACCESS_TOKEN_TTL
    claims = {"iss": settings.JWT_ISSUER, "aud": settings.JWT_AUDIENCE, "sub": user_id, "org": organization_id,
              "role": role, "iat": now, "nbf": now, "exp": now + ttl, "jti": secrets.token_urlsafe(16)}
    if session_id:
        claims["sid"] = session_id
    return jwt.encode(claims, secret_key(), algorithm=ALGORITHM), ttl


def decode_access_token(token: str) -> dict:
    try:
        return jwt.decode(token, secret_key(), algorithms=[ALGORITHM], audience=settings.JWT_AUDIENCE,
                          issuer=settings.JWT_ISSUER, leeway=5, options={"require": REQUIRED_CLAIMS})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("Access token expired", code="token_expired") from None
    except jwt.InvalidTokenError:
        raise Unauthorized("Invalid access token", code="invalid_token") from None


def new_refresh_token() -> str:
    return "rt_" + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    # refresh tokens are 256-bit random values: a plain SHA-256 is enough to make a DB leak useless
    return hashlib.sha256(token.encode()).hexdigest()
