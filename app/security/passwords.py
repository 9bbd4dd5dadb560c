"""Password hashing (bcrypt) and the password policy."""
from __future__ import annotations

import bcrypt

from app.errors import ValidationError

MIN_LENGTH = 10
MAX_LENGTH = 72  # bcrypt only reads 72 bytes; refuse longer rather than silently truncate
_ROUNDS = 12
# a real hash of a random password: checked when the email is unknown, so both answers take as long
_DUMMY_HASH = bcrypt.hashpw(b"not-a-real-password-0123456789", bcrypt.gensalt(_ROUNDS))


def check_policy(password: str, email: str | None = None) -> None:
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"Must be at least {MIN_LENGTH} characters.")
    if len(password.encode()) > MAX_LENGTH:
        problems.append(f"Must be at most {MAX_LENGTH} bytes.")
    if email and password.strip().lower() == email.strip().lower():
        problems.append("Must not be the email address.")
    if problems:
        raise ValidationError("Password does not meet the policy", details={"password": problems})


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(_ROUNDS)).decode()


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-ish time whether or not a hash exists (unknown users cost the same)."""
    try:
        candidate = password.encode()[:MAX_LENGTH]
        if not password_hash:
            bcrypt.checkpw(candidate, _DUMMY_HASH)
            return False
        return bcrypt.checkpw(candidate, password_hash.encode())
    except ValueError:
        return False
