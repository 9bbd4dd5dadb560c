"""Send windows: the hours of the day (in the recipient's time zone) a campaign may send in.

A window is ``{"start": "09:00", "end": "20:00", "days": ["mon", ...], "timezone": "Europe/Lisbon"}``
(``days`` optional: every day; ``timezone`` is the default for recipients without a ``timezone``
attribute, filled from the organisation's when the campaign starts). ``start`` is before ``end``:
a window does not cross midnight.
"""
from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
CLOCK = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def zone(name: str | None) -> ZoneInfo | None:
    """The time zone called ``name``, or None when there is no such zone."""
    if not isinstance(name, str) or not name or len(name) > 64:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def problems(window: dict) -> list[str]:
    """What is wrong with a window (empty: nothing)."""
    out = []
    start, end = window.get("start"), window.get("end")
    if not (isinstance(start, str) and CLOCK.match(start)) or not (isinstance(end, str) and CLOCK.match(end)):
        out.append("start and end are times of the day, HH:MM (09:00, 20:00).")
    elif start >= end:
        out.append("start is before end (a window does not cross midnight).")
    days = window.get("days")
    if days is not None and (not isinstance(days, list) or not days or any(d not in DAYS for d in days)):
        out.append(f"days are some of {', '.join(DAYS)}.")
    if window.get("timezone") is not None and zone(window["timezone"]) is None:
        out.append(f"Unknown time zone {window['timezone']!r} (an IANA name such as Europe/Lisbon).")
    return out


def _clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def next_open(window: dict, tz_name: str | None, now: datetime) -> datetime:
    """``now`` if the window is open at ``now`` in the recipient's zone (``tz_name``, else the
    window's, else UTC), else the moment it next opens (UTC)."""
    tz = zone(tz_name) or zone(window.get("timezone")) or UTC
    local = now.astimezone(tz)
    start, end = _clock(window["start"]), _clock(window["end"])
    days = window.get("days") or DAYS
    for ahead in range(8):
        day = (local + timedelta(days=ahead)).date()
        if DAYS[day.weekday()] not in days:
            continue
        opens = datetime.combine(day, start, tz)
        closes = datetime.combine(day, end, tz)
        if ahead == 0 and opens <= local < closes:
            return now
        if opens > local:
            return opens.astimezone(UTC)
    return now  # unreachable with at least one day


def open_seconds_per_day(window: dict | None) -> float:
    """Seconds a day the window is open, on average over a week (a whole day without one)."""
    if not window:
        return 86_400.0
    length = (datetime.combine(datetime.min, _clock(window["end"])) -
              datetime.combine(datetime.min, _clock(window["start"]))).total_seconds()
    return length * len(window.get("days") or DAYS) / 7
