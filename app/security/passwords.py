"""Password hashing (bcrypt) and the password policy.

The policy: 10 characters to 72 bytes, not the email address, not one of the 10,000 most common
passwords, and not "very guessable" by zxcvbn's estimate (score 0 or 1: under a million guesses,
e.g. ``password1234``, ``qwertyuiop1``, the user's own name with digits). zxcvbn ships its lists,
so nothing is fetched.
"""
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


COMMON_COUNT = 10_000


@functools.cache
def _common_passwords() -> frozenset[str]:
    from zxcvbn.frequency_lists import FREQUENCY_LISTS

    return frozenset(FREQUENCY_LISTS["passwords"][:COMMON_COUNT])


def _guessable(password: str, user_inputs: list[str]) -> str | None:
    """Why zxcvbn finds ``password`` very guessable, or None."""
    from zxcvbn import zxcvbn

    result = zxcvbn(password, user_inputs=user_inputs)
    if result["score"] >= 2:
        return None
    warning = (result.get("feedback") or {}).get("warning") or "It would be guessed quickly."
    return f"Too easy to guess: {warning.rstrip('.')}. Use a few unrelated words, or a longer passphrase."


def check_policy(password: str, email: str | None = None, name: str | None = None) -> None:
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"Must be at least {MIN_LENGTH} characters.")
    if len(password.encode()) > MAX_LENGTH:
        problems.append(f"Must be at most {MAX_LENGTH} bytes.")
    if email and password.strip().lower() == email.strip().lower():
        problems.append("Must not be the email address.")
    if password and not password.strip():
        problems.append("Must not be only spaces.")
    if not problems:
        if password.lower() in _common_passwords():
            problems.append("Is one of the most common passwords: choose another.")
        else:
            local = (email or "").split("@")[0]
            parts = [p.replace(".", " ").replace("_", " ").replace("-", " ").split() for p in (local, name or "")]
            inputs = [v for v in (email, local, name, *("".join(p) for p in parts), *sum(parts, [])) if v]
            guessable = _guessable(password, inputs)
            if guessable:
                problems.append(guessable)
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
