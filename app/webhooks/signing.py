"""Standard Webhooks signing (https://www.standardwebhooks.com/).

A secret is ``whsec_`` + base64 of 32 random bytes; the HMAC key is the decoded bytes. Each request
carries ``webhook-id`` (the event id, the same on every retry), ``webhook-timestamp`` (unix seconds
of this attempt) and ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``,
one per active secret, space-separated (during a rotation the old secret signs too).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def generate_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secrets start with whsec_")
    return base64.b64decode(secret[len(SECRET_PREFIX):])


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """One ``v1,<base64>`` signature."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: a signature per secret, newest first, space-separated."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets)


def user_agent() -> str:
    from app.version import API_VERSION

    return f"WhatsAppService-Webhooks/{API_VERSION}"


def request_headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict:
    """Every header of a delivery request."""
    return {
        "Content-Type": "application/json",
        "User-Agent": user_agent(),
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
    }
