"""Prometheus metrics served at /metrics: the api's requests (summed over every gunicorn worker
process, see app/system/gunicorn_conf.py) and, read from Redis at scrape time, the depth of every
job queue (dead letters included) and the live worker processes of every pool; the business
metrics (app/system/collectors.py) and the workers' job counters (app/system/counters.py) too.
docs/operations.md lists them all."""
import logging

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from config import prometheus_multiproc_dir

log = logging.getLogger(__name__)

REQUESTS = Counter("http_requests_total", "HTTP requests handled", ["method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["method", "route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def observe(method: str, route: str | None, status: int, seconds: float) -> None:
    """Record one request; ``route`` is the URL rule (bounded cardinality), not the raw path."""
    route = route or "unmatched"
    REQUESTS.labels(method, route, str(status)).inc()
    LATENCY.labels(method, route).observe(seconds)


class QueueCollector:
    """Queue depths (ready, delayed, dead) and live workers per pool, read when scraped."""

    def describe(self):
        return []  # registering must not read Redis; the names are checked at scrape time

    def collect(self):
        from app.kv import redis_client
        from app.queues import POOLS
        from app.system.heartbeats import live_heartbeats
        from workers.broker import queue_counts

        depth = GaugeMetricFamily("wa_queue_messages", "Jobs in a queue, by state", labels=["queue", "state"])
        workers = GaugeMetricFamily("wa_workers_live", "Worker processes with a live heartbeat", labels=["pool"])
        try:
            r = redis_client()
            for pool in POOLS.values():
                for queue in pool.queues:
                    counts = queue_counts(r, queue)
                    for state in ("ready", "delayed", "dead"):
                        depth.add_metric([queue, state], counts[state])
            beats = live_heartbeats(r, "pool")
            for name in POOLS:
                workers.add_metric([name], sum(1 for b in beats if b.get("name") == name))
        except Exception:  # Redis down: /health says so; the request metrics are still served
            log.warning("metrics: queue depths unavailable", exc_info=True)
            return
        yield depth
        yield workers


def registry() -> CollectorRegistry:
    """What /metrics serves: every api process's samples in multiprocess mode (the directory
    gunicorn_conf sets, which prometheus_client reads itself), else this one's."""
    from prometheus_client import REGISTRY, multiprocess

    if prometheus_multiproc_dir():
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        for collector in _collectors():
            reg.register(collector)
        return reg
    global _registered
    if not _registered:  # once per process
        for collector in _collectors():
            REGISTRY.register(collector)
        _registered = True
    return REGISTRY


def _collectors() -> list:
    from app.system.collectors import DatabaseCollector, WorkerCountersCollector

    global _business
    if _business is None:
        _business = [DatabaseCollector(), WorkerCountersCollector()]
    return [QUEUES, *_business]


QUEUES = QueueCollector()
_business: list | None = None
_registered = False
