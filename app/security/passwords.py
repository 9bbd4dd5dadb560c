"""Password hashing (bcrypt) and the password policy."""
from __future__ import annotations

import functools

import bcrypt

from app.errors import ValidationError

MIN_LENGTH = 10
MAX_LENGTH = 72  # bcrypt only reads 72 bytes; refuse longer rather than silently truncate
_ROUNDS = 12


@functools.cache
def _dummy_hash() -> bytes:
    """A real hash of a random password, checked when the email is unknown so that both answers
    cost one bcrypt verification (computed once per process, at the first unknown email)."""
    return bcrypt.hashpw(b"not-a-real-password-0123456789", bcrypt.gensalt(_ROUNDS))


def check_policy(password: str, email: str | None = None) -> None:
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"Must be at least {MIN_LENGTH} characters.")
    if len(password.encode()) > MAX_LENGTH:
        problems.append(f"Must be at most {MAX_LENGTH} bytes.")
    if email and password.strip().lower() == email.strip().lower():
        problems.append("Must not be the email address.")
    if password and not password.strip():
        problems.append("Must not be only spaces.")
    if problems:
        raise ValidationError("Password does not meet the policy", details={"password": problems})


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_ROUNDS)).decode()


def verify_password(password: str, password_hash: str | None) -> bool:
    """One bcrypt verification whether or not a hash exists (unknown users cost the same)."""
    candidate = password.encode()[:MAX_LENGTH]
    try:
        if not password_hash:
            bcrypt.checkpw(candidate, _dummy_hash())
            return False
        return bcrypt.checkpw(candidate, password_hash.encode())
    except ValueError:  # a malformed stored hash: still spend the time of a real check
        bcrypt.checkpw(candidate, _dummy_hash())
        return False
