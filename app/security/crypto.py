"""Field encryption: AES-256-GCM, a random 96-bit nonce per value, and the key id in the value so
keys can be rotated.

``APP_ENCRYPTION_KEYS`` is ``kid:base64key[,kid:base64key...]``, newest first (parsed by
``config.parse_encryption_keys``). New values are sealed with the newest key; values sealed with
any listed key still open. ``python -m app encryption rotate`` re-seals every stored value under
the newest key. Stored format: ``v1:<kid>:<urlsafe base64 of nonce | ciphertext+tag>``.

Values of ``*_encrypted`` columns are sealed without ``aad``: the rotation command (which finds
those columns by name, app/security/rotation.py) re-seals them without knowing their rows.
"""
from __future__ import annotations

import base64
import json
import os
import threading

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from config import settings

VERSION = "v1"
_lock = threading.Lock()
_keys: list[tuple[str, AESGCM]] | None = None


class DecryptionError(Exception):
    """A value that cannot be opened: unknown key id, tampered or malformed."""


def _load() -> list[tuple[str, AESGCM]]:
    global _keys
    with _lock:
        if _keys is None:
            _keys = [(kid, AESGCM(raw)) for kid, raw in settings.encryption_keys()]
        return _keys


def reset_keys() -> None:
    """Forget cached keys (tests, after changing settings)."""
    global _keys
    with _lock:
        _keys = None


def current_kid() -> str:
    return _load()[0][0]


def key_ids() -> list[str]:
    """The configured key ids, newest first."""
    return [kid for kid, _ in _load()]


def encrypt(plaintext: str | bytes, *, aad: bytes = b"") -> str:
    kid, aead = _load()[0]
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, data, aad or None)
    return f"{VERSION}:{kid}:{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt_bytes(value: str, *, aad: bytes = b"") -> bytes:
    try:
        version, kid, b64 = value.split(":", 2)
    except (ValueError, AttributeError):
        raise DecryptionError("malformed encrypted value") from None
    if version != VERSION:
        raise DecryptionError(f"unknown format {version!r}")
    aead = dict(_load()).get(kid)
    if aead is None:
        raise DecryptionError(f"no key with id {kid!r} in APP_ENCRYPTION_KEYS")
    try:
        raw = base64.urlsafe_b64decode(b64)
        return aead.decrypt(raw[:12], raw[12:], aad or None)
    except Exception:
        raise DecryptionError("encrypted value failed authentication") from None


def decrypt(value: str, *, aad: bytes = b"") -> str:
    return decrypt_bytes(value, aad=aad).decode()


def key_id_of(value: str) -> str | None:
    parts = (value or "").split(":", 2)
    return parts[1] if len(parts) == 3 else None


def reseal(value: str) -> str | None:
    """``value`` sealed again under the newest key, or None when it already is (rotation)."""
    if key_id_of(value) == current_kid() and value.startswith(VERSION + ":"):
        return None
    return encrypt(decrypt_bytes(value))


def encrypt_json(obj) -> str:
    return encrypt(json.dumps(obj, separators=(",", ":")))


def decrypt_json(value: str | None):
    return json.loads(decrypt(value)) if value else None
