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
    Setting("HOST", "127.0.0.1", "Address the api listens on (`make run`, `python -m app serve`): this machine only by default; `0.0.0.0` to accept connections from the network (the Docker image sets it)."),
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
    Setting("LOGIN_FAILURES_PER_ACCOUNT", "5 per 15 minutes", "Failed logins allowed per email address from one client address; beyond it login from that address answers 429 with `Retry-After` until the window ends. Others' failures never lock the owner out."),
    Setting("LOGIN_FAILURES_PER_IP", "20 per 15 minutes", "Failed logins allowed per client IP; beyond it login answers 429 with `Retry-After` until the window ends."),
    Setting("MAX_CLIENTS_PER_ORG", "50", "WhatsApp accounts (clients, not deleted) one organisation may have; a started `web` client is a Chromium session. Above it: 422 `limit_reached`.", "int"),
    Setting("MAX_API_KEYS_PER_ORG", "100", "Live (not revoked) API keys one organisation may have.", "int"),
    Setting("MAX_PROXIES_PER_ORG", "100", "Proxies one organisation may have.", "int"),
    Setting("MAX_USERS_PER_ORG", "500", "Users (not deleted) one organisation may have.", "int"),
    Setting("MAX_CONTACTS_PER_ORG", "100000", "Contacts one organisation may create through the API and imports (contacts the pipeline adds for new numbers are not refused).", "int"),
    Setting("MAX_REQUEST_BYTES", "1048576", "Largest JSON request body accepted (413 above).", "int"),
    Setting("MAX_UPLOAD_BYTES", "16777216", "Largest media upload accepted (413 above).", "int"),
    Setting("CORS_ORIGINS", "", "Comma-separated origins allowed by CORS (empty: same-origin only; `*` in development only)."),
    Setting("RATE_LIMIT_PUBLIC", "100 per 15 minutes", "Per-IP limit on unauthenticated and auth endpoints."),
    Setting("RATE_LIMIT_API", "6000 per minute", "Limit on the authenticated API for each organisation, and for each of its keys/users unless `RATE_LIMIT_PRINCIPAL` is set."),
    Setting("RATE_LIMIT_PRINCIPAL", "", "Limit on the authenticated API for each API key or user (empty: `RATE_LIMIT_API`). Lower it so one key cannot use its organisation's whole budget."),
    Setting("RATE_LIMIT_ENABLED", "true", "Turns request rate limiting on or off.", "bool"),
    Setting("TRUSTED_PROXIES", "127.0.0.1/32,::1/128", "CIDRs of reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (client IP for rate limits and audit, HTTPS for HSTS): loopback only by default. Behind a proxy on another host, list exactly that proxy's address or network (compose sets its own network). Empty: trust none.", "list"),
    Setting("LOG_LEVEL", "INFO", "Log level of every process (JSON logs to stdout)."),
    Setting("LOG_FORMAT", "json", "`json` (one object per line, for log shippers) or `text` (`make run` uses it)."),
    Setting("WORKER_HEARTBEAT_TTL", "15", "Seconds after which a silent worker counts as gone in `/health`.", "int"),
    Setting("OUTBOX_SWEEP_AFTER", "30", "Seconds after commit before the sweeper re-sends a job nobody dispatched.", "int"),
    Setting("SCHEDULER_LOCK_ID", "727274", "Postgres advisory lock id held by the leading scheduler.", "int"),
    Setting("WORKER_POOL", "", "Set by `python -m workers run --pool NAME` for its worker processes; not set by hand."),
    Setting("WORKER_PROCESSES", "1", "Processes per worker pool started by `python -m workers run` unless `--processes` is given.", "int"),
    Setting("WEBHOOK_ALLOW_PRIVATE", "", "Which non-public addresses the connections tenants choose may reach (webhook URLs, proxy hosts and their health checks, the cloud transport's `base_url`): `false` none, `loopback` this machine only, `true` every private range. Empty: `loopback` when `APP_ENV=development` and `HOST` is a loopback address, else `false`."),
    Setting("WEBHOOK_TIMEOUT", "15", "Seconds a webhook delivery may take to connect and to answer before it counts as failed.", "float"),
    Setting("WEBHOOK_MAX_IN_FLIGHT", "8", "Deliveries to one webhook endpoint running at the same time, across every worker (the others wait their turn without holding a thread), so a slow endpoint cannot take every thread. 0: no limit.", "int"),
    Setting("WEBHOOK_TIME_SCALE", "1", "Multiplies webhook retry delays, `Retry-After` waits and the 5-day disable window. Keep 1; tests and demos shrink time with e.g. 0.001.", "float"),
    Setting("DEFAULT_TRANSPORT", "sim", "Transport used by clients created without one."),
    Setting("CHROMIUM_PATH", "/usr/bin/chromium", "Chromium used by the `web` transport."),
    Setting("WEB_URL", "https://web.whatsapp.com", "Address of WhatsApp Web the `web` transport opens (tests point it at a fixture page)."),
    Setting("WEB_HEADLESS", "true", "Run the session hosts' Chromium headless.", "bool"),
    Setting("WEB_NAV_TIMEOUT", "60", "Seconds the `web` transport waits for WhatsApp Web to load, a chat to open or a sent message to appear.", "float"),
    Setting("WEB_QR_TIMEOUT", "300", "Seconds a `web` session shows (and reloads) QR codes without a scan before it gives up as `failed`.", "int"),
    Setting("WEB_STATE_SAVE_INTERVAL", "300", "Seconds between two saves of a ready `web` session's login state (also saved at login and at stop).", "int"),
    Setting("WEB_TYPING_MAX_MS", "45000", "Longest typing indicator of one `web` message (60-100 ms per character); the rest of a longer text is pasted, so a send stays well below `MESSAGE_SENDING_TIMEOUT`.", "int"),
    Setting("SESSION_LEASE_TTL", "30", "Seconds a session host's lease on a `web` client lasts without renewal; another host takes the session over after it expires.", "int"),
    Setting("SESSION_HEARTBEAT_INTERVAL", "10", "Seconds between two lease renewals (and orphan checks) of a session host.", "float"),
    Setting("PACING_SLACK_MS", "500", "Pad (ms) added to the minimum gap and to the windows of paced sends: the time a granted send has to reach the transport (a send later than that is paced again).", "int"),
    Setting("WORKER_POLL_MS", "100", "Longest idle poll of a worker's queue consumers: a delayed job (a pacing slot) starts at most about twice this late.", "int"),
    Setting("MESSAGE_PARK_AFTER", "60", "Seconds: a message due later than this (its pacing slot or `scheduled_at`) waits parked in Redis, not in the broker, until the feeder releases it this long before its time; keeps workers' delay queues small whatever the backlog.", "int"),
    Setting("MESSAGE_SENDING_TIMEOUT", "120", "Seconds after which the sweeper marks a message stuck in `sending` (its worker died mid-send) `unknown` with code `interrupted` and asks the transport what became of it; it is never resent unless the transport is certain it never got it.", "int"),
    Setting("MESSAGE_LOST_AFTER", "300", "Seconds past its due time after which the sweeper re-enqueues a `queued` message whose job was lost.", "int"),
    Setting("MESSAGE_SWEEP_EVERY", "30", "Seconds between two runs of the message sweeper (interrupted sends, lost jobs, expired idempotency keys).", "int"),
    Setting("MESSAGE_MAX_ATTEMPTS", "5", "Transport attempts of one message on transient errors before it fails.", "int"),
    Setting("OPT_OUT_CONFIRMATION", "You have been unsubscribed and will receive no more messages. Reply START to subscribe again.", "The one message sent to a contact who opts out (STOP)."),
    Setting("INBOX_REDISPATCH_AFTER", "30", "Seconds a transport report (status, ack, inbound message) may stay unapplied past its time before its job is sent again (the broker lost it).", "int"),
    Setting("IDEMPOTENCY_IN_FLIGHT_TIMEOUT", "60", "Seconds after which a request holding an `Idempotency-Key` that never finished (its process died) is abandoned, and the key may be used again.", "int"),
    Setting("CLIENT_RECONNECT_BASE_MS", "2000", "First reconnect delay of a client that disconnected; it doubles with each failed attempt.", "int"),
    Setting("CLIENT_RECONNECT_MAX_MS", "300000", "Longest delay between two reconnect attempts of a client.", "int"),
    Setting("CLIENT_RECONNECT_ATTEMPTS", "8", "Reconnect attempts in a row before a disconnected client is marked `failed` (with an alert).", "int"),
    Setting("PROXY_CHECK_INTERVAL", "300", "Seconds between two health checks of every proxy.", "int"),
    Setting("PROXY_CHECK_TIMEOUT", "5", "Seconds a proxy health check waits for the proxy to answer.", "float"),
    Setting("PROXY_CHECK_TARGET", "web.whatsapp.com:443", "`host:port` the proxy health check opens a tunnel to (HTTP CONNECT or SOCKS5)."),
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
        built = cls(values)
        if not values["DATABASE_URL"] or not values["REDIS_URL"]:
            # a shell next to `make run`: use the embedded servers it started
            running = running_services(built.data_dir)
            for name in ("DATABASE_URL", "REDIS_URL"):
                if not values[name] and running.get(name):
                    values[name] = running[name]
        return built

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
    def private_targets(self) -> str:
        """``WEBHOOK_ALLOW_PRIVATE`` resolved: ``all``, ``loopback`` or ``none`` (ValueError if bad).

        Unset, this machine's own addresses are allowed only in development with the api listening
        on loopback: then only this machine's users can register targets at all."""
        raw = self.WEBHOOK_ALLOW_PRIVATE
        if isinstance(raw, bool):  # tests override the setting with a bool
            return "all" if raw else "none"
        value = str(raw or "").strip().lower()
        if value in ("1", "true", "yes", "on", "all"):
            return "all"
        if value in ("0", "false", "no", "off", "none"):
            return "none"
        if value == "loopback":
            return "loopback"
        if value in ("", "auto"):
            return "loopback" if self.APP_ENV == "development" and is_loopback_host(self.HOST) else "none"
        raise ValueError(f"{raw!r} is not one of true, loopback, false")

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


#: written by `make run` under DATA_DIR while it runs: the URLs of the servers it uses
RUN_FILE = "run.json"


def running_services(data_dir: Path) -> dict:
    """What a live `make run` on ``data_dir`` wrote to ``RUN_FILE`` ({} when none runs): its pid,
    ``DATABASE_URL``, ``REDIS_URL`` and ``api`` (the api's base URL)."""
    import json

    try:
        found = json.loads((data_dir / RUN_FILE).read_text())
        os.kill(int(found["pid"]), 0)  # raises if that process is gone (a `make run` killed hard)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return found if isinstance(found, dict) else {}


def bind_address(host: str, port: int) -> str:
    """gunicorn's ``--bind`` for ``host`` and ``port`` (an IPv6 literal in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def is_loopback_host(host: str) -> bool:
    """Whether a listening address (``HOST``) accepts connections from this machine only."""
    import ipaddress

    host = (host or "").strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


settings = Settings.from_env()

#: secrets every process needs in production (config.secret() generates them elsewhere)
PRODUCTION_SECRETS = ("SECRET_KEY", "APP_ENCRYPTION_KEYS", "API_KEY_PEPPER")


def check_production_settings(s: Settings | None = None) -> None:
    """Exit with a clear message when the settings cannot run safely: in production the secrets
    must be set (they are never generated there); anywhere, APP_ENCRYPTION_KEYS must parse.
    Called at the start of every process (create_app, workers run, workers scheduler)."""
    s = s or settings
    problems = []
    if s.is_production:
        missing = [name for name in PRODUCTION_SECRETS if not (s.values.get(name) or "").strip()]
        if missing:
            problems.append(f"{', '.join(missing)} must be set when APP_ENV=production "
                            "(see .env.example for how to generate them)")
        if (s.values.get("SECRET_KEY") or "") and len(s.SECRET_KEY) < 32:
            problems.append("SECRET_KEY must be at least 32 characters")
        if (s.values.get("API_KEY_PEPPER") or "") and len(s.API_KEY_PEPPER) < 16:
            problems.append("API_KEY_PEPPER must be at least 16 characters")
    try:
        s.private_targets
    except ValueError as exc:
        problems.append(f"WEBHOOK_ALLOW_PRIVATE: {exc}")
    if (s.values.get("APP_ENCRYPTION_KEYS") or "").strip():
        from app.security.crypto import parse_keys

        try:
            parse_keys(s.APP_ENCRYPTION_KEYS)
        except ValueError as exc:
            problems.append(f"APP_ENCRYPTION_KEYS: {exc}")
    if problems:
        raise SystemExit("config: refusing to start: " + "; ".join(problems))


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
