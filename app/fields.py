"""Marshmallow fields shared by the domains' schemas."""
from __future__ import annotations

from datetime import UTC

from marshmallow import fields


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 time; one without an offset is UTC. Loaded as an aware datetime in UTC, so that
    a time at the edge of the calendar (``0001-01-01T00:00:00+01:00``) is a 422 naming the field
    here rather than an ``OverflowError`` in whatever service compares or shifts it."""

    default_error_messages = {"out_of_range": "Out of range: give a time between 0001-01-01 and 9999-12-31 (UTC)."}

    def __init__(self, **kwargs):
        kwargs.setdefault("default_timezone", UTC)
        super().__init__(**kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        when = super()._deserialize(value, attr, data, **kwargs)
        try:
            return when.astimezone(UTC)
        except OverflowError:
            raise self.make_error("out_of_range") from None
