"""/health and /metrics: never rate limited; /health is public, /metrics limited to the addresses of
``METRICS_ALLOW`` and, when set, the bearer token ``METRICS_TOKEN``."""
from flask import Response, jsonify
from flask.views import MethodView
from flask_smorest import Blueprint

from app.security.guard import public
from app.system import service
from app.system.schemas import HealthSchema

blp = Blueprint("system", __name__, description="Health and metrics")


@blp.route("/health")
class Health(MethodView):
    @blp.doc(security=[], responses={
        "200": {"description": "`ok` or `degraded`", "content": {"application/json": {"schema": HealthSchema}}},
        "503": {"description": "PostgreSQL or Redis is down (`status: down`)",
                "content": {"application/json": {"schema": HealthSchema, "example": {"status": "down", "checks": {
                    "database": {"status": "down", "error": "OperationalError"},
                    "redis": {"status": "ok", "latency_ms": 0.3},
                    "workers": {"status": "unknown", "error": "OperationalError"}}}}}}})
    @public
    def get(self):
        """Health of the database, Redis and the worker pools

        For load balancers and monitoring: `ok` when PostgreSQL, Redis, every worker pool and the
        scheduler answer; `degraded` (still 200) when a pool or the scheduler is missing; 503 when
        PostgreSQL or Redis is down. Never rate limited, no credentials needed.
        """
        body, status = service.health()
        resp = jsonify(body)
        resp.status_code = status
        if status == 503:
            resp.headers["Retry-After"] = "10"
        resp.headers["Cache-Control"] = "no-store"
        return resp


@blp.route("/metrics")
class Metrics(MethodView):
    @blp.doc(security=[], responses={
        "200": {"description": "Prometheus text format", "content": {"text/plain": {
            "schema": {"type": "string"},
            "example": 'http_requests_total{method="GET",route="/api/messages",status="200"} 42.0\n'}}}})
    @public
    def get(self):
        """Prometheus metrics: requests, queues, workers, jobs, messages, webhooks, clients, campaigns

        Metrics in the Prometheus text format: requests by route and status of every api process,
        queue depths (dead letters included) and live workers per pool, jobs by pool, actor and
        outcome, and the business metrics (messages, send latency, pacing, webhook deliveries,
        clients, campaigns, outbox) listed in docs/operations.md. Never rate limited. Open to the
        addresses of `METRICS_ALLOW` (loopback and private ranges by default: 403 otherwise) and,
        when `METRICS_TOKEN` is set, only with `Authorization: Bearer <token>` (401 otherwise).
        """
        from flask import request
        from prometheus_client.exposition import choose_encoder

        from app.system.metrics import registry

        service.check_metrics_access(request.remote_addr, request.headers.get("Authorization"))

        # the format the scraper asks for (Prometheus text 0.0.4 unless it accepts OpenMetrics);
        # content_type is sent as is (mimetype= would append a second charset)
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry()), content_type=content_type, headers={"Vary": "Accept"})
