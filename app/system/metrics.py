"""Prometheus metrics of the api process (served at /metrics)."""
from prometheus_client import Counter, Histogram

REQUESTS = Counter("http_requests_total", "HTTP requests handled", ["method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def observe(method: str, route: str | None, status: int, seconds: float) -> None:
    """Record one request; ``route`` is the URL rule (bounded cardinality), not the raw path."""
    route = route or "unmatched"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)
