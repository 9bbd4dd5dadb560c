"""GET /dashboard and its static assets. The page holds no data of its own: after login it calls
the API with a Bearer token kept in the tab's sessionStorage."""
from pathlib import Path

from flask import send_from_directory
from flask.views import MethodView
from flask_smorest import Blueprint

from app.security.permissions import public

STATIC = Path(__file__).resolve().parent / "static"

blp = Blueprint("dashboard", __name__, description="The web dashboard (HTML)")


@blp.route("/dashboard")
class Dashboard(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "the dashboard page (text/html)"}})
    @public
    def get(self):
        """The web dashboard"""
        resp = send_from_directory(STATIC, "index.html", max_age=0)
        resp.headers["Cache-Control"] = "no-cache"
        return resp


@blp.route("/dashboard/assets/<string:name>")
class DashboardAsset(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "a static asset"}})
    @public
    def get(self, name):
        """A static asset of the dashboard"""
        return send_from_directory(STATIC, name, max_age=3600)
