"""All settings, read from the environment once.

No other module reads ``os.environ``: import ``settings`` from here. Every setting is declared
once in ``SETTINGS`` with its default and a description; the README's configuration table is
checked against this list by a test, so a new setting without documentation fails the suite.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    doc: str
    kind: str = "str"  # str | int | float | bool | list


SETTINGS: list[Setting] = [
    Setting("APP_ENV", "development", "`development`, `test` or `production`. Production refuses to start without secrets."),
    Setting("PORT", "3002", "HTTP port of the api (and of `make run`).", "int"),
    Setting("DATA_DIR", "./var", "Where embedded Postgres/Redis, generated dev keys and media files live."),
    Setting("DATABASE_URL", "", "PostgreSQL URL. Empty: `make run` starts an embedded Postgres under `DATA_DIR`."),
    Setting("REDIS_URL", "", "Redis URL (broker, pacing, rate limits). Empty: `make run` starts an embedded Redis."),
    Setting("DB_POOL_SIZE", "10", "SQLAlchemy connection pool size per process.", "int"),
    Setting("SECRET_KEY", "", "Signs access tokens (HS256). Required in production; generated into `DATA_DIR` in development."),
    Setting("APP_ENCRYPTION_KEYS", "", "Comma-separated `kid:base64key` AES-256 keys for field encryption, newest first. Required in production."),
    Setting("API_KEY_PEPPER", "", "Server-side pepper for API key HMACs. Required in production; generated in development."),
    Setting("ACCESS_TOKEN_TTL", "900", "Access token lifetime in seconds.", "int"),
    Setting("REFRESH_TOKEN_TTL", "2592000", "Refresh token lifetime in seconds.", "int"),
    Setting("JWT_ISSUER", "whatsapp-service", "`iss` claim of access tokens."),
    Setting("JWT_AUDIENCE", "whatsapp-service-api", "`aud` claim of access tokens."),
    Setting("ALLOW_SIGNUP", "true", "Whether `POST /api/auth/register` is open.", "bool"),
    Setting("MAX_REQUEST_BYTES", "1048576", "Largest JSON request body accepted (413 above).", "int"),
    Setting("MAX_UPLOAD_BYTES", "16777216", "Largest media upload accepted (413 above).", "int"),
    Setting("CORS_ORIGINS", "", "Comma-separated origins allowed by CORS (empty: same-origin only; `*` in development only)."),
    Setting("RATE_LIMIT_PUBLIC", "100 per 15 minutes", "Per-IP limit on unauthenticated and auth endpoints."),
    Setting("RATE_LIMIT_API", "6000 per minute", "Per-organisation/key limit on the authenticated API."),
    Setting("RATE_LIMIT_ENABLED", "true", "Turns request rate limiting on or off.", "bool"),
    Setting("LOG_LEVEL", "INFO", "Log level of every process (JSON logs to stdout)."),
    Setting("LOG_FORMAT", "json", "`json` (one object per line, for log shippers) or `text` (`make run` uses it)."),
    Setting("WORKER_HEARTBEAT_TTL", "15", "Seconds after which a silent worker counts as gone in `/health`.", "int"),
    Setting("OUTBOX_SWEEP_AFTER", "30", "Seconds after commit before the sweeper re-sends a job nobody dispatched.", "int"),
    Setting("SCHEDULER_LOCK_ID", "727274", "Postgres advisory lock id held by the leading scheduler.", "int"),
    Setting("WORKER_POOL", "", "Set by `python -m workers run --pool NAME` for its worker processes; not set by hand."),
    Setting("WORKER_PROCESSES", "1", "Processes per worker pool started by `python -m workers run` unless `--processes` is given.", "int"),
    Setting("WEBHOOK_ALLOW_PRIVATE", "false", "Allow webhook targets on private/loopback addresses (development only).", "bool"),
    Setting("DEFAULT_TRANSPORT", "sim", "Transport used by clients created without one."),
    Setting("CHROMIUM_PATH", "/usr/bin/chromium", "Chromium used by the `web` transport."),
]

_BY_NAME = {s.name: s for s in SETTINGS}


def _parse(setting: Setting, raw: str):
    if setting.kind == "int":
        return int(raw)
    if setting.kind == "float":
        return float(raw)
    if setting.kind == "bool":
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if setting.kind == "list":
        return [p.strip() for p in raw.split(",") if p.strip()]
    return raw


@dataclass
class Settings:
    """Typed view of the environment. Built once at import; tests may build their own."""

    values: dict = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict | None = None) -> "Settings":
        env = os.environ if env is None else env
        values = {}
        for s in SETTINGS:
            raw = env.get(s.name, s.default)
            try:
                values[s.name] = _parse(s, raw)
            except ValueError:
                raise SystemExit(f"config: {s.name}={raw!r} is not a valid {s.kind}")
        return cls(values)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def override(self, **changes) -> None:
        """Change settings in place (tests, CLI flags)."""
        for k, v in changes.items():
            if k not in _BY_NAME:
                raise KeyError(k)
            self.values[k] = v

    @property
    def is_production(self) -> bool:
        return self.APP_ENV == "production"

    @property
    def data_dir(self) -> Path:
        p = Path(self.DATA_DIR)
        return p if p.is_absolute() else (ROOT / p)

    def secret(self, name: str, nbytes: int = 32) -> str:
        """A secret setting; in development/test generated once into DATA_DIR if unset."""
        value = self.values.get(name) or ""
        if value:
            return value
        if self.is_production:
            raise SystemExit(f"config: {name} must be set when APP_ENV=production")
        path = self.data_dir / "secrets" / name.lower()
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        import base64

        value = base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")
        if name == "APP_ENCRYPTION_KEYS":
            value = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path.read_text().strip()


settings = Settings.from_env()


def child_env(**overrides: str) -> dict:
    """The environment for a child process we start (``workers run``, ``make run``), with overrides."""
    env = dict(os.environ)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def settings_table() -> str:
    """The README's configuration table (``python -c 'import config; print(config.settings_table())'``)."""
    rows = ["| Variable | Default | Description |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "—"
        rows.append(f"| `{s.name}` | {default} | {s.doc} |")
    return "\n".join(rows)
