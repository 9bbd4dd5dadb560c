"""/health and /metrics: public, unauthenticated, never rate limited."""
from flask import Response, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from app.security.permissions import public
from app.system import service

blp = Blueprint("system", __name__, description="Health and metrics")


@blp.route("/health")
class Health(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "ok or degraded"}, "503": {"description": "Postgres or Redis down"}})
    @public
    def get(self):
        """Health of the database, Redis and the worker pools"""
        body, status = service.health()
        resp = jsonify(body)
        resp.status_code = status
        if status == 503:
            resp.headers["Retry-After"] = "10"
        resp.headers["Cache-Control"] = "no-store"
        return resp


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[], responses={"200": {"description": "Prometheus text format"}})
    @public
    def get(self):
        """Prometheus metrics: requests of every api process, queue depths, live workers"""
        from flask import request
        from prometheus_client.exposition import choose_encoder

        from app.system.metrics import registry

        # the format the scraper asks for (Prometheus text 0.0.4 unless it accepts OpenMetrics);
        # content_type is sent as is (mimetype= would append a second charset)
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry()), content_type=content_type, headers={"Vary": "Accept"})
