"""Request and response schemas of analytics."""
from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from app.analytics.service import GRANULARITIES, METRICS
from app.analytics.statuses import EXPORT_KINDS, EXPORT_STATUSES
from app.fields import UtcDateTime
from app.pagination import ListArgs

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
    what = fields.String(load_default="rollups", validate=validate.OneOf(EXPORT_KINDS), metadata={
        "description": "`rollups`: one row per UTC day x client; `messages`: the raw messages created in the range."})


class BreakdownArgs(OverviewArgs):
    by = fields.String(required=True, validate=validate.OneOf(("client", "campaign")), metadata={
        "description": "`client`: one row per client; `campaign`: one per campaign (and one for the rest)."})
    limit = fields.Integer(load_default=100, validate=validate.Range(1, 1000), metadata={
        "description": "At most this many rows, most sent first."})


class ExportListArgs(ListArgs):
    pass


class SignedDownloadArgs(ma.Schema):
    token = fields.String(required=True, validate=validate.Length(max=1024))


class FailureCountSchema(ma.Schema):
    code = fields.String(metadata={"description": "The error code of the failed messages ('unknown' without one)."})
    count = fields.Integer()


class FiguresSchema(ma.Schema):
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
    p90_response_seconds = fields.Float(allow_none=True, metadata={
        "description": "Nine in ten responses came within this many seconds (from the rollups' histogram)."})
    avg_delivery_seconds = fields.Float(allow_none=True)
    avg_read_seconds = fields.Float(allow_none=True)


class OverviewSchema(FiguresSchema):
    from_ = fields.DateTime(data_key="from", attribute="from")
    to = fields.DateTime()
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


class BreakdownRowSchema(FiguresSchema):
    id = fields.String(allow_none=True, metadata={
        "description": "The client's or campaign's id (null: the messages sent outside campaigns)."})
    name = fields.String(allow_none=True)


class BreakdownSchema(ma.Schema):
    by = fields.String()
    from_ = fields.DateTime(data_key="from", attribute="from")
    to = fields.DateTime()
    rows = fields.List(fields.Nested(BreakdownRowSchema))


class ExportRequestSchema(ma.Schema):
    what = fields.String(load_default="rollups", validate=validate.OneOf(EXPORT_KINDS), metadata={
        "description": "`rollups`: one row per UTC day x client; `messages`: the raw messages created in the range."})
    format = fields.String(load_default="csv", validate=validate.OneOf(("csv",)))
    from_ = UtcDateTime(data_key="from", attribute="start", metadata={"description": _RANGE})
    to = UtcDateTime(attribute="end", metadata={"description": "The end of the range (excluded)."})
    client_id = fields.String(validate=validate.Length(max=64), allow_none=True, metadata={
        "description": "Only this client's (by default every client the caller may see)."})


class ExportSchema(ma.Schema):
    id = fields.String()
    what = fields.String()
    format = fields.String()
    status = fields.String(metadata={"description": "One of " + ", ".join(EXPORT_STATUSES) + "."})
    from_ = fields.String(data_key="from", attribute="from", metadata={"description": "The start of the range."})
    to = fields.String()
    client_id = fields.String(allow_none=True)
    rows = fields.Integer(allow_none=True, metadata={"description": "Data rows in the file (the header not counted)."})
    size_bytes = fields.Integer(allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "Why it failed (status failed)."})
    attempts = fields.Integer()
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True, metadata={"description": "When the file will be deleted."})
    download_url = fields.String(allow_none=True, metadata={
        "description": "Ready: downloads the file without credentials until download_expires_at."})
    download_expires_at = fields.String(allow_none=True)
