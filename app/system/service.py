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
