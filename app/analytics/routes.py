"""/api/analytics: the overview of a range, time series, breakdowns per client or campaign, and
CSV exports (streamed now, or made by a worker and downloaded later), read from the rollups."""
from urllib.parse import quote

from flask import Response, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from app.analytics import export_jobs, exports, service
from app.analytics.schemas import (
    BreakdownArgs,
    BreakdownSchema,
    ExportArgs,
    ExportListArgs,
    ExportRequestSchema,
    ExportSchema,
    OverviewArgs,
    OverviewSchema,
    SignedDownloadArgs,
    TimeseriesArgs,
    TimeseriesSchema,
)
from app.db import request_session
from app.errors import NotFound
from app.idempotency import idempotent
from app.pagination import page_schema
from app.security.auth import current_principal
from app.security.guard import public, requires
from app.storage import media_storage

blp = Blueprint("analytics", __name__, url_prefix="/api/analytics", description="Analytics")

_UNSEEN_CLIENT_OR_CAMPAIGN = "`client_id` or `campaign_id` is not one the caller may see (`not_found`)"
_UNSEEN_CLIENT = "`client_id` is not a client the caller may see (`not_found`)"


@blp.route("/overview")
class Overview(MethodView):
    @blp.arguments(OverviewArgs, location="query")
    @blp.response(200, OverviewSchema)
    @blp.alt_response(404, description=_UNSEEN_CLIENT_OR_CAMPAIGN)
    @requires("analytics:read")
    def get(self, args):
        """Totals of a range: sent, delivered, read, failed, received, replies, opt-outs

        Counted from the hourly rollups (the messages created in each hour, whatever time their acks
        came), with delivery, read and reply rates, the average response time and the most frequent
        failure codes. `client_id` and `campaign_id` narrow it; agents see their assigned clients only.
        """
        return service.overview(request_session(), current_principal(), **args)


@blp.route("/timeseries")
class Timeseries(MethodView):
    @blp.arguments(TimeseriesArgs, location="query")
    @blp.response(200, TimeseriesSchema)
    @blp.alt_response(404, description=_UNSEEN_CLIENT_OR_CAMPAIGN)
    @requires("analytics:read")
    def get(self, args):
        """One metric per hour or per day of a time zone

        Every hour (UTC) or day (of `tz`, an IANA zone) of the range is a point, zero when nothing
        happened. Hourly series cover at most 31 days, daily ones 400; a longer range or `from`
        after `to` is a 422.
        """
        series = service.timeseries(request_session(), current_principal(), **args)
        # hundreds of points: written directly (what TimeseriesSchema would write, at a fraction of the cost)
        series["points"] = [{"at": p["at"].isoformat(), "value": p["value"]} for p in series["points"]]
        return jsonify(series)


@blp.route("/export")
class Export(MethodView):
    @blp.arguments(ExportArgs, location="query")
    @blp.doc(responses={"200": {"description": "The CSV file (`Content-Disposition: attachment`), streamed",
                                "content": {"text/csv": {"schema": {"type": "string"}}}}})
    @blp.alt_response(404, description=_UNSEEN_CLIENT)
    @requires("analytics:export")
    def get(self, args):
        """Export the rollups (one row per day and client) or the raw messages as CSV

        Streamed as it is read, so any range downloads in flat memory. `what=rollups` (default) gives
        one row per UTC day and client of the range's days; `what=messages` the messages created in
        the range, oldest first, without their text. docs/analytics.md lists the columns. For a
        download to fetch later (or by another system), `POST /api/analytics/exports`.
        """
        lines = exports.export(request_session(), current_principal(), **args)
        return Response(lines, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="analytics-{args["what"]}.csv"'})


@blp.route("/breakdown")
class Breakdown(MethodView):
    @blp.arguments(BreakdownArgs, location="query")
    @blp.response(200, BreakdownSchema)
    @blp.alt_response(404, description=_UNSEEN_CLIENT_OR_CAMPAIGN)
    @requires("analytics:read")
    def get(self, args):
        """The figures of a range per client or per campaign, most sent first

        The overview's numbers and rates for each client (`by=client`) or campaign
        (`by=campaign`; the messages sent outside campaigns are one row with `id` null) of the
        range, read from the rollups. Agents see their assigned clients only.
        """
        return service.breakdown(request_session(), current_principal(), **args)


_EXPORT = {"id": "exp_01JDQ5B1C2D3E4F5G6H7J8K9M0", "what": "messages", "format": "csv", "status": "ready",
           "from": "2026-11-01T00:00:00+00:00", "to": "2026-12-01T00:00:00+00:00", "client_id": None,
           "rows": 1250000, "size_bytes": 187500000, "error": None, "attempts": 1,
           "created_at": "2026-12-01T08:00:00+00:00", "finished_at": "2026-12-01T08:01:12+00:00",
           "expires_at": "2026-12-08T08:01:12+00:00",
           "download_url": "https://wa.acme.test/api/analytics/exports/exp_01JDQ5B1C2D3E4F5G6H7J8K9M0/signed-download"
                           "?token=WyJleHAi...", "download_expires_at": "2026-12-01T09:01:12+00:00"}
_QUEUED = {**_EXPORT, "status": "queued", "rows": None, "size_bytes": None, "attempts": 0, "finished_at": None,
           "expires_at": None, "download_url": None, "download_expires_at": None}


@blp.route("/exports")
class ExportCollection(MethodView):
    @idempotent
    @blp.arguments(ExportRequestSchema, example={"what": "messages", "from": "2026-11-01T00:00:00Z",
                                                 "to": "2026-12-01T00:00:00Z"})
    @blp.response(202, ExportSchema, example=_QUEUED)
    @blp.alt_response(404, description=_UNSEEN_CLIENT)
    @blp.alt_response(429, description="Three exports of the organisation are already queued or running, or "
                                       "twenty are kept (`too_many_exports`)")
    @requires("analytics:export")
    def post(self, args):
        """Have a worker write an export to a file, to download when it is ready

        The same CSV as `GET /api/analytics/export`, written by a worker: answer 202 at once, then
        poll `GET /api/analytics/exports/{export_id}` until `status` is `ready` (or `failed`); it
        then has `rows`, `size_bytes` and a signed `download_url`. The file is kept
        ANALYTICS_EXPORT_TTL seconds. At most three exports of an organisation run at once.
        """
        session = request_session()
        row = export_jobs.create_export(session, current_principal(), **args)
        return export_jobs.describe(row)

    @blp.arguments(ExportListArgs, location="query")
    @blp.response(200, page_schema(ExportSchema), example={"items": [_EXPORT], "next_cursor": None})
    @requires("analytics:export")
    def get(self, args):
        """The organisation's exports made by a worker, newest first

        Every export still recorded (ready, running, failed or expired), newest first and
        cursor-paginated; a ready one carries a fresh signed `download_url`.
        """
        return export_jobs.list_exports(request_session(), current_principal(), **args)


@blp.route("/exports/<export_id>")
class ExportItem(MethodView):
    @blp.response(200, ExportSchema, example=_EXPORT)
    @requires("analytics:export")
    def get(self, export_id):
        """One export: its status, its size once written and its download link

        `status` moves `queued` -> `running` -> `ready` (or `failed`, with `error`), and `expired`
        once the file was deleted. A ready export has a signed `download_url` that works without
        credentials until `download_expires_at`; asking again gives a fresh one.
        """
        return export_jobs.describe(export_jobs.get_export(request_session(), current_principal(), export_id))

    @blp.response(204)
    @requires("analytics:export")
    def delete(self, export_id):
        """Delete an export and its file

        The file is deleted from storage at once and the export disappears from the list; an
        export still being written stops there (its partial file is thrown away).
        """
        export_jobs.delete_export(request_session(), current_principal(), export_id)


@blp.route("/exports/<export_id>/download")
class ExportDownload(MethodView):
    @blp.doc(responses={"200": {"description": "The CSV file (`Content-Disposition: attachment`), streamed",
                                "content": {"text/csv": {"schema": {"type": "string"}}}}})
    @blp.alt_response(409, description="The export is not ready yet (`export_not_ready`)")
    @requires("analytics:export")
    def get(self, export_id):
        """Download a ready export's file with your credentials

        Streams the CSV file a worker wrote; 409 while the export is queued or running, 404 once
        it has expired. `download_url` does the same without credentials.
        """
        return _file(export_jobs.get_export(request_session(), current_principal(), export_id))


@blp.route("/exports/<export_id>/signed-download")
class ExportSignedDownload(MethodView):
    @blp.arguments(SignedDownloadArgs, location="query")
    @blp.doc(security=[], responses={
        "200": {"description": "The CSV file", "content": {"text/csv": {"schema": {"type": "string"}}}},
        "403": {"description": "The link was altered (`invalid_link`)"},
        "410": {"description": "The link has expired (`link_expired`)"}})
    @blp.alt_response(409, description="The export is not ready (`export_not_ready`)")
    @public
    def get(self, args, export_id):
        """Download an export through its signed link (no credentials)

        What an export's `download_url` points to: the file while the link is valid, 410 once the
        link expired, 403 when it was altered, 404 when the export was deleted or has expired.
        """
        return _file(export_jobs.export_of_link(request_session(), export_id, args["token"]))


def _file(row) -> Response:
    key = export_jobs.readable(row)
    files = media_storage()
    size = files.size(key)
    if size is None:
        raise NotFound("the export's file is no longer in storage")
    response = Response(files.read_range(key, 0, size), mimetype="text/csv", direct_passthrough=True)
    response.headers["Content-Length"] = str(size)
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(export_jobs.file_name(row))}"
    return response
