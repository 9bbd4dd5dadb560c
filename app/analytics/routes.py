"""/api/analytics: the overview of a range, time series and CSV exports, read from the rollups."""
from flask import Response
from flask.views import MethodView
from flask_smorest import Blueprint

from app.analytics import service
from app.analytics.schemas import ExportArgs, OverviewArgs, OverviewSchema, TimeseriesArgs, TimeseriesSchema
from app.db import request_session
from app.security.auth import current_principal
from app.security.guard import requires

blp = Blueprint("analytics", __name__, url_prefix="/api/analytics", description="Analytics")


@blp.route("/overview")
class Overview(MethodView):
    @blp.arguments(OverviewArgs, location="query")
    @blp.response(200, OverviewSchema)
    @blp.alt_response(404, description="`client_id` or `campaign_id` is not one the caller may see (`not_found`)")
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
    @blp.alt_response(404, description="`client_id` or `campaign_id` is not one the caller may see (`not_found`)")
    @requires("analytics:read")
    def get(self, args):
        """One metric per hour or per day of a time zone

        Every hour (UTC) or day (of `tz`, an IANA zone) of the range is a point, zero when nothing
        happened. Hourly series cover at most 31 days, daily ones 400; a longer range or `from`
        after `to` is a 422.
        """
        return service.timeseries(request_session(), current_principal(), **args)


@blp.route("/export")
class Export(MethodView):
    @blp.arguments(ExportArgs, location="query")
    @blp.doc(responses={"200": {"description": "The CSV file (`Content-Disposition: attachment`), streamed",
                                "content": {"text/csv": {"schema": {"type": "string"}}}}})
    @blp.alt_response(404, description="`client_id` is not a client the caller may see (`not_found`)")
    @requires("analytics:export")
    def get(self, args):
        """Export the rollups (one row per day and client) or the raw messages as CSV

        Streamed as it is read, so any range downloads in flat memory. `what=rollups` (default) gives
        one row per UTC day and client of the range's days; `what=messages` the messages created in
        the range, oldest first, without their text. docs/analytics.md lists the columns.
        """
        lines = service.export(request_session(), current_principal(), **args)
        return Response(lines, mimetype="text/csv", headers={
            "Content-Disposition": f'attachment; filename="analytics-{args["what"]}.csv"'})
