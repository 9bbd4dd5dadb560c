"""What an automation matches, without the database: keyword triggers (exact, contains, or a regular
expression run with a time limit), business hours, conditions on the client and the contact's tags,
and the variables a reply is rendered with.

Regular expressions use the ``regex`` package, whose ``timeout`` stops a catastrophic pattern (one
that backtracks exponentially on some text) after ``REGEX_BUDGET_S`` for all the keywords of one
automation: the worker thread goes on with the next automation instead of hanging.
"""
from __future__ import annotations

import functools
import re as stdlib_re
import time
import zoneinfo
from datetime import date, datetime

import regex

from app.automations.statuses import DAYS
from app.templates.rendering import attribute_variables

#: time all the regular expressions of one automation may take on one message, in seconds
REGEX_BUDGET_S = 0.1
MAX_PATTERN = 500
#: the product of every counted repeat's bound in a pattern (as if they were all nested)
MAX_UNROLLED = 10_000
_REPEAT = stdlib_re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
HHMM = stdlib_re.compile(r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")


class RegexTimeout(Exception):
    """A keyword pattern ran out of time on a message."""


# ----------------------------------------------------------------------------- validation helpers

@functools.lru_cache(maxsize=1024)
def compiled(pattern: str, case_sensitive: bool) -> regex.Pattern:
    return regex.compile(pattern, 0 if case_sensitive else regex.IGNORECASE)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable regular expression, or None. Counted repeats are bounded
    before compiling: ``regex`` unrolls them when it compiles (``(?:a{1000}){1000}`` is a million
    steps, one more level and compiling never ends), and compiling has no time limit."""
    if len(pattern) > MAX_PATTERN:
        return f"At most {MAX_PATTERN} characters."
    unrolled = 1
    for low, high in _REPEAT.findall(pattern):
        if len(low) > 6 or len(high) > 6:
            return f"Counted repeats ({{m,n}}) may unroll to at most {MAX_UNROLLED} steps in all."
        unrolled *= max(int(low or 0), int(high or 0), 1)
        if unrolled > MAX_UNROLLED:
            return f"Counted repeats ({{m,n}}) may unroll to at most {MAX_UNROLLED} steps in all."
    try:
        compiled(pattern, True)
    except (regex.error, ValueError, OverflowError, RecursionError) as exc:
        return f"Not a valid regular expression: {exc}."
    return None


@functools.cache
def _zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) | {"UTC"}


def timezone_problem(name: str) -> str | None:
    if name not in _zones():
        return "Not an IANA time zone (e.g. Europe/Paris, America/New_York, UTC)."
    return None


def minutes(hhmm: str, *, end: bool = False) -> int | None:
    """``"09:30"`` -> 570; ``"24:00"`` only as the end of a range; None when malformed."""
    if end and hhmm == "24:00":
        return 24 * 60
    if not isinstance(hhmm, str) or not HHMM.match(hhmm):
        return None
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def hours_problems(hours: dict) -> dict:
    """Field errors of a business-hours object ``{tz, days: {mon: [[start, end], ...]}, holidays?}``."""
    errors: dict = {}
    if (problem := timezone_problem(hours.get("tz", ""))) is not None:
        errors["tz"] = [problem]
    day_errors: dict = {}
    for day, ranges in (hours.get("days") or {}).items():
        if day not in DAYS:
            day_errors[day] = [f"Days are {', '.join(DAYS)}."]
            continue
        for i, pair in enumerate(ranges):
            start = minutes(pair[0]) if len(pair) == 2 else None
            stop = minutes(pair[1], end=True) if len(pair) == 2 else None
            if start is None or stop is None:
                day_errors.setdefault(day, {})[i] = ['Give ["HH:MM", "HH:MM"] (00:00 to 24:00).']
            elif start >= stop:
                day_errors.setdefault(day, {})[i] = ["The start must be before the end."]
    if day_errors:
        errors["days"] = day_errors
    bad_days = {}
    for i, day in enumerate(hours.get("holidays") or []):
        try:
            date.fromisoformat(day)
        except (TypeError, ValueError):
            bad_days[i] = ["Give a date as YYYY-MM-DD."]
    if bad_days:
        errors["holidays"] = bad_days
    return errors


# ----------------------------------------------------------------------------- matching

def message_text(text: str | None, caption: str | None) -> str:
    return text or caption or ""


def keyword_matches(trigger: dict, text: str) -> bool:
    """Whether ``text`` matches one of the trigger's keywords; RegexTimeout when its patterns ran
    out of time (``REGEX_BUDGET_S`` for all of them)."""
    if not text:
        return False
    mode = trigger.get("match") or "contains"
    case_sensitive = bool(trigger.get("case_sensitive"))
    keywords = trigger.get("keywords") or []
    if mode == "regex":
        budget = REGEX_BUDGET_S
        for pattern in keywords:
            if budget <= 0:
                raise RegexTimeout(pattern)
            started = time.monotonic()
            try:
                if compiled(pattern, case_sensitive).search(text, timeout=budget) is not None:
                    return True
            except TimeoutError:
                raise RegexTimeout(pattern) from None
            budget -= time.monotonic() - started
        return False

    def norm(value: str) -> str:
        value = " ".join(value.split())
        return value if case_sensitive else value.casefold()

    said = norm(text)
    if mode == "exact":
        return any(said == norm(k) for k in keywords)
    return any(norm(k) in said for k in keywords)


def outside_hours(hours: dict, at: datetime) -> bool:
    """Whether ``at`` falls outside the business hours: on a holiday, or in no range of its weekday
    (in the hours' time zone; a day not listed is closed)."""
    local = at.astimezone(zoneinfo.ZoneInfo(hours.get("tz") or "UTC"))
    if local.date().isoformat() in set(hours.get("holidays") or []):
        return True
    now = local.hour * 60 + local.minute + local.second / 60
    for pair in (hours.get("days") or {}).get(DAYS[local.weekday()], []):
        start, stop = minutes(pair[0]), minutes(pair[1], end=True)
        if start is not None and stop is not None and start <= now < stop:
            return False
    return True


def conditions_hold(conditions: dict, client_id: str, tags: list[str]) -> bool:
    """The automation's conditions on the client the message came to and the contact's tags."""
    conditions = conditions or {}
    has = set(tags or [])
    if conditions.get("client_ids") and client_id not in conditions["client_ids"]:
        return False
    if conditions.get("tags_any") and not has & set(conditions["tags_any"]):
        return False
    if conditions.get("tags_all") and not set(conditions["tags_all"]) <= has:
        return False
    if conditions.get("tags_none") and has & set(conditions["tags_none"]):
        return False
    return True


# ----------------------------------------------------------------------------- replies

def reply_variables(*, contact_name: str | None, phone: str, attributes: dict, message_id: str,
                    text: str) -> dict[str, str]:
    """What ``{{placeholders}}`` of a reply can name: ``name`` / ``contact.name``, ``phone`` /
    ``contact.phone``, ``attributes.<key>`` / ``contact.attributes.<key>`` (texts and numbers),
    ``message.text`` and ``message.id``. A contact without a name gives an empty name."""
    out = {"name": contact_name or "", "contact.name": contact_name or "", "phone": phone, "contact.phone": phone,
           "message.text": text, "message.id": message_id}
    out.update(attribute_variables(attributes, booleans=True))
    return out
