"""GET /dashboard and its static assets. The page holds no data of its own: after login it calls
the API with a Bearer token kept in the tab's sessionStorage."""
from pathlib import Path

from flask import send_from_directory
from flask.views import MethodView
from flask_smorest import Blueprint

from app.security.guard import public

STATIC = Path(__file__).resolve().parent / "static"

blp = Blueprint("dashboard", __name__, description="The web dashboard (HTML)")


@blp.route("/dashboard")
class Dashboard(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "The dashboard page",
                                             "content": {"text/html": {"schema": {"type": "string"}}}}})
    @public
    def get(self):
        """The web dashboard

        The web dashboard page (HTML): sign in, then see clients, messages and webhooks. It holds no
        data of its own and calls this API with the signed-in user's token.
        """
        resp = send_from_directory(STATIC, "index.html", max_age=0)
        resp.headers["Cache-Control"] = "no-cache"
        return resp


@blp.route("/dashboard/assets/<string:name>")
class DashboardAsset(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "The asset (JavaScript, CSS or an image)", "content": {
        "*/*": {"schema": {"type": "string", "format": "binary"}}}}})
    @public
    def get(self, name):
        """A static asset of the dashboard

        A script, style sheet or image of the dashboard.
        """
        return send_from_directory(STATIC, name, max_age=3600)
