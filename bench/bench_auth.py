"""What authentication costs per request: an API key check against no authentication at all.

    python bench/bench_auth.py [--requests 3000] [--warmup 300]

Uses DATABASE_URL / REDIS_URL from the environment when set (a temporary organisation is created
and deleted again), otherwise starts an embedded Postgres and Redis in a temporary directory, like
the test suite. Serves the real app with gunicorn (one gthread worker, keep-alive) on loopback,
plus two bench-only routes that answer the same tiny body, one ``@public`` and one
``@requires("org:read")``, so that their difference is the authentication alone. Requests are
sent one at a time, interleaved across the scenarios so that drift hits them all alike, and a
table of requests/s and p50/p99 latency is printed. Rate limiting is off in the server (it is a
separate layer with its own Redis round trip); the goal here is the key check under 1 ms at p50.
"""
from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def bench_app():
    """The gunicorn entry point: the real app plus the two bench-only routes."""
    from flask.views import MethodView
    from flask_smorest import Blueprint

    from app import create_app
    from app.security.permissions import public, requires

    app = create_app()
    blp = Blueprint("bench", __name__, url_prefix="/bench")

    @blp.route("/public")
    class Public(MethodView):
        @public
        def get(self):
            return {"ok": True}

    @blp.route("/key")
    class Key(MethodView):
        @requires("org:read")
        def get(self):
            return {"ok": True}

    app.extensions["smorest_api"].register_blueprint(blp)
    return app


# ----------------------------------------------------------------------------- services


def services(tmp: Path) -> tuple[str, str, list]:
    """(database url, redis url, things to stop): the environment's, or embedded ones."""
    from config import settings

    cleanup = []
    db, rd = settings.DATABASE_URL, settings.REDIS_URL
    if not db or not rd:
        from workers.embedded import start_postgres, start_redis, stop_redis

        if not db:
            db, server = start_postgres(tmp, database="wa_bench_auth")
            cleanup.append(server.cleanup)
        if not rd:
            rd, proc = start_redis(tmp)
            cleanup.append(lambda: stop_redis(proc, 5))
    return db, rd, cleanup


def prepare(db_url: str, redis_url: str) -> dict:
    """Schema, a temporary organisation with an admin and an API key. Returns credentials."""
    from app.schema import apply_schema
    from config import settings

    settings.override(DATABASE_URL=db_url, REDIS_URL=redis_url)
    apply_schema(db_url)
    from app.apikeys.service import create_api_key
    from app.db import job_session
    from app.security.principal import SystemPrincipal
    from app.security.tokens import issue_access_token
    from app.team.service import create_organization

    suffix = secrets.token_hex(4)
    with job_session() as session:
        org, user = create_organization(session, name=f"bench-auth-{suffix}", admin_email=f"bench-{suffix}@bench.test",
                                        admin_password=secrets.token_urlsafe(16))
        _, key = create_api_key(session, SystemPrincipal(org.id), name="bench", role="admin")
        org_id, user_id = org.id, user.id
    token, _ = issue_access_token(user_id, org_id, "admin")
    return {"org_id": org_id, "key": key, "token": token}


def drop_org(org_id: str) -> None:
    from app.db import job_session
    from app.team.models import Organization

    with job_session() as session:
        org = session.get(Organization, org_id)
        if org is not None:
            session.delete(org)


# ----------------------------------------------------------------------------- server and client


def start_server(env: dict) -> tuple[subprocess.Popen, int]:
    from workers.embedded import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
         "--worker-class", "gthread", "--threads", "1", "--keep-alive", "30", "--log-level", "warning",
         "--no-control-socket", "bench.bench_auth:bench_app()"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn exited:\n{proc.stdout.read().decode(errors='replace')}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/bench/public")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.2)
    stop_server(proc)
    raise SystemExit("gunicorn did not answer within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(port: int, scenarios: list[tuple[str, str, dict, int]], n: int, warmup: int) -> dict[str, list[float]]:
    """Round-robin over the scenarios on one keep-alive connection each; latencies in ms."""
    conns = {name: http.client.HTTPConnection("127.0.0.1", port, timeout=10) for name, *_ in scenarios}
    samples: dict[str, list[float]] = {name: [] for name, *_ in scenarios}
    for i in range(warmup + n):
        for name, path, headers, expected in scenarios:
            conn = conns[name]
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            elapsed = (time.perf_counter() - start) * 1000
            if resp.status != expected:
                raise SystemExit(f"{name}: HTTP {resp.status}, expected {expected}")
            if i >= warmup:
                samples[name].append(elapsed)
    for conn in conns.values():
        conn.close()
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per scenario")
    parser.add_argument("--warmup", type=int, default=300, help="unmeasured requests per scenario first")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and services on the way out

    tmp = Path(tempfile.mkdtemp(prefix="wa-bench-auth-"))
    from config import settings

    embedded = not settings.DATABASE_URL or not settings.REDIS_URL
    data_dir = str(tmp) if embedded else str(settings.data_dir)  # the server must share the secrets
    settings.override(DATA_DIR=data_dir)
    db_url, redis_url, cleanup = services(tmp)
    creds = prepare(db_url, redis_url)
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "DATA_DIR": data_dir,
           "RATE_LIMIT_ENABLED": "false", "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    proc = None
    try:
        proc, port = start_server(env)
        key, bearer = {"X-API-Key": creds["key"]}, {"Authorization": f"Bearer {creds['token']}"}
        scenarios = [
            ("no auth: GET /bench/public", "/bench/public", {}, 200),
            ("API key: GET /bench/key", "/bench/key", key, 200),
            ("API key: GET /api/auth/me", "/api/auth/me", key, 200),
            ("JWT: GET /api/auth/me", "/api/auth/me", bearer, 200),
            ("no auth: GET /health", "/health", {}, 200),
        ]
        samples = run(port, scenarios, args.requests, args.warmup)
    finally:
        if proc is not None:
            stop_server(proc)
        if not embedded:
            drop_org(creds["org_id"])
        for stop in cleanup:
            stop()
        if embedded:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nauth benchmark: {args.requests} sequential requests per scenario (after {args.warmup} warm-up), "
          f"gunicorn gthread x1 on loopback, {'embedded' if embedded else 'configured'} Postgres/Redis\n")
    print(f"| {'scenario':<28} | {'req/s':>7} | {'p50 ms':>7} | {'p99 ms':>7} |")
    print(f"|{'-' * 30}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    p50 = {}
    for name, *_ in scenarios:
        values = samples[name]
        p50[name] = statistics.median(values)
        rps = 1000 / statistics.fmean(values)
        print(f"| {name:<28} | {rps:>7.0f} | {p50[name]:>7.3f} | {percentile(values, 99):>7.3f} |")
    key_cost = p50["API key: GET /bench/key"] - p50["no auth: GET /bench/public"]
    me_cost = p50["API key: GET /api/auth/me"] - p50["no auth: GET /bench/public"]
    verdict = "under" if key_cost < 1.0 else "OVER"
    print(f"\nAPI key check at p50: {key_cost:+.3f} ms over no auth ({verdict} the 1 ms goal)")
    print(f"GET /api/auth/me with a key at p50: {me_cost:+.3f} ms over the unauthenticated route")


if __name__ == "__main__":
    main()
