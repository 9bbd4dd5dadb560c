"""Health of the platform's dependencies and worker pools."""
from __future__ import annotations

import time

from sqlalchemy import text

from app.queues import POOLS


def check_database() -> dict:
    from app.db import get_engine

    started = time.perf_counter()
    try:
        with get_engine().connect() as conn:
            conn.execute(text("SELECT 1"))
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    except Exception as exc:
        return {"status": "down", "error": exc.__class__.__name__}


HEALTH_PROBE_KEY = "wa:health:probe"


def check_redis() -> dict:
    """Redis must take a write, not only answer PING: a full Redis (``maxmemory`` with
    ``noeviction``) answers PING and refuses every job. Also reports its memory use."""
    from app.kv import redis_client

    started = time.perf_counter()
    client = redis_client()
    try:
        client.set(HEALTH_PROBE_KEY, str(time.time()), px=60_000)
    except Exception as exc:
        status = "full" if "OOM" in str(exc) or exc.__class__.__name__ == "OutOfMemoryError" else "down"
        return {"status": status, "error": exc.__class__.__name__}
    out = {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    try:
        memory = client.info("memory")
        if memory.get("maxmemory"):
            out["memory_used_ratio"] = round(memory["used_memory"] / memory["maxmemory"], 3)
    except Exception:
        pass
    return out


def check_workers() -> dict:
    """Live workers per pool from their Redis heartbeats; a pool with none is ``down``."""
    from app.kv import redis_client
    from app.system.heartbeats import live_heartbeats

    try:
        beats = live_heartbeats(redis_client())
    except Exception as exc:
        return {"status": "unknown", "error": exc.__class__.__name__}
    pools = {}
    for name in POOLS:
        n = sum(1 for b in beats if b["kind"] == "pool" and b["name"] == name)
        pools[name] = {"status": "ok" if n else "down", "live": n}
    scheduler = [b for b in beats if b["kind"] == "scheduler"]
    return {
        "status": "ok" if all(p["status"] == "ok" for p in pools.values()) else "degraded",
        "pools": pools,
        "scheduler": {"status": "ok" if any(b.get("leader") for b in scheduler) else "down",
                      "processes": len(scheduler)},
    }


def health() -> tuple[dict, int]:
    """``ok`` when everything is up; ``degraded`` when a pool or the scheduler is missing (200);
    503 when Postgres or Redis is down, or Redis refuses writes (full)."""
    checks = {"database": check_database(), "redis": check_redis(), "workers": check_workers()}
    if checks["database"]["status"] != "ok" or checks["redis"]["status"] != "ok":
        return {"status": "down", "checks": checks}, 503
    ok = checks["workers"]["status"] == "ok" and checks["workers"]["scheduler"]["status"] == "ok"
    return {"status": "ok" if ok else "degraded", "checks": checks}, 200


def check_metrics_access(remote_addr: str | None, authorization: str | None) -> None:
    """Who may read /metrics: an address in ``METRICS_ALLOW`` (any when empty; else 403), with the
    bearer token ``METRICS_TOKEN`` when one is set (else 401)."""
    import hmac
    import ipaddress

    from app.errors import Forbidden, Unauthorized
    from config import settings

    if settings.METRICS_ALLOW:
        try:
            ip = ipaddress.ip_address((remote_addr or "").strip())
        except ValueError:
            ip = None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip is None or not any(ip.version == net.version and ip in net for net in settings.METRICS_ALLOW):
            raise Forbidden("This address may not read the metrics", code="metrics_forbidden")
    if settings.METRICS_TOKEN:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                 settings.METRICS_TOKEN.encode()):
            raise Unauthorized("The metrics need a bearer token", code="metrics_unauthorized",
                               headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
