"""Request and response schemas of analytics."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.analytics.service import GRANULARITIES, METRICS
from app.fields import UtcDateTime

_RANGE = ("Times in ISO 8601 (UTC without an offset). The range is `[from, to)`: the hours whose start falls "
          "in it. Default: the 7 days before `to`; `to` defaults to now.")


class RangeArgs(ma.Schema):
    from_ = UtcDateTime(data_key="from", attribute="start", metadata={"description": _RANGE})
    to = UtcDateTime(attribute="end", metadata={"description": "The end of the range (excluded)."})
    client_id = fields.String(validate=validate.Length(max=64), metadata={
        "description": "Only this client's (agents: one of their assigned clients; by default all of them)."})


class OverviewArgs(RangeArgs):
    campaign_id = fields.String(validate=validate.Length(max=64), metadata={
        "description": "Only the messages of this campaign."})


class TimeseriesArgs(OverviewArgs):
    metric = fields.String(required=True, validate=validate.OneOf(METRICS))
    granularity = fields.String(load_default="day", validate=validate.OneOf(GRANULARITIES), metadata={
        "description": "`hour` (UTC hours, ranges up to 31 days) or `day` (days of `tz`, ranges up to 400 days)."})
    tz = fields.String(load_default="UTC", validate=validate.Length(max=64), metadata={
        "description": "An IANA time zone (`Europe/Paris`) the days of `granularity=day` are counted in."})


class ExportArgs(RangeArgs):
    format = fields.String(load_default="csv", validate=validate.OneOf(("csv",)))
    what = fields.String(load_default="rollups", validate=validate.OneOf(("rollups", "messages")), metadata={
        "description": "`rollups`: one row per UTC day x client; `messages`: the raw messages created in the range."})


class FailureCountSchema(ma.Schema):
    code = fields.String(metadata={"description": "The error code of the failed messages ('unknown' without one)."})
    count = fields.Integer()


class OverviewSchema(ma.Schema):
    from_ = fields.DateTime(data_key="from", attribute="from")
    to = fields.DateTime()
    sent = fields.Integer(metadata={"description": "Outbound messages that reached the transport."})
    delivered = fields.Integer()
    read = fields.Integer()
    failed = fields.Integer()
    received = fields.Integer(metadata={"description": "Inbound messages."})
    replied = fields.Integer(metadata={"description": "Outbound messages the contact answered within the window."})
    opted_out = fields.Integer(metadata={"description": "Contacts who opted out by a keyword (STOP)."})
    delivery_rate = fields.Float(allow_none=True, metadata={"description": "delivered / sent (null: none sent)."})
    read_rate = fields.Float(allow_none=True, metadata={"description": "read / sent (null: none sent)."})
    reply_rate = fields.Float(allow_none=True, metadata={"description": "replied / sent (null: none sent)."})
    avg_response_seconds = fields.Float(allow_none=True, metadata={
        "description": "Average time from an inbound message to our first outbound message after it."})
    avg_delivery_seconds = fields.Float(allow_none=True)
    avg_read_seconds = fields.Float(allow_none=True)
    top_failures = fields.List(fields.Nested(FailureCountSchema), metadata={
        "description": "The most frequent failure codes (at most 10), most frequent first."})


class PointSchema(ma.Schema):
    at = fields.DateTime(metadata={"description": "The start of the hour (UTC) or of the day (in `tz`)."})
    value = fields.Integer()


class TimeseriesSchema(ma.Schema):
    metric = fields.String()
    granularity = fields.String()
    tz = fields.String()
    points = fields.List(fields.Nested(PointSchema))
