"""API key material: ``sk_`` + 43 url-safe chars (32 random bytes), shown once.

Stored as a lookup ``prefix`` (unique index, O(1)) and an HMAC-SHA256 of the whole key under a
server-side pepper. Keys are high-entropy, so a keyed hash is as safe as bcrypt here and costs
microseconds instead of ~250 ms on every request.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from config import settings

KEY_PREFIX = "sk_"
LOOKUP_CHARS = 12  # "sk_" + 9 chars of the random part: unique index lookup


def generate_key() -> tuple[str, str]:
    """A new key and its lookup prefix."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, key[:LOOKUP_CHARS]


def lookup_prefix(key: str) -> str | None:
    if not key.startswith(KEY_PREFIX) or len(key) < LOOKUP_CHARS + 8 or len(key) > 128:
        return None
    return key[:LOOKUP_CHARS]


_pepper: bytes | None = None


def _get_pepper() -> bytes:
    global _pepper
    if _pepper is None:
        _pepper = settings.secret("API_KEY_PEPPER").encode()
    return _pepper


def hash_key(key: str) -> str:
    return hmac.new(_get_pepper(), key.encode(), hashlib.sha256).hexdigest()


def key_matches(key: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(key), stored_hash)
