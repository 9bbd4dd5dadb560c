"""All settings, read from the environment once.

No other module reads ``os.environ``: import ``settings`` from here (prometheus_client's own
``PROMETHEUS_MULTIPROC_DIR`` is read live by ``prometheus_multiproc_dir``). Every setting is one field of
``Settings``, declared with its default (the text one would set in the environment) and its
description; the field's type says how that text is parsed, once, at start, so a malformed value
stops the process with a message naming the setting instead of failing a request later. The
README's configuration table is generated from the class and checked by a test, so a new setting
without documentation fails the suite.

This module imports nothing from the application (``app/``, ``jobs/``, ``workers/``): they all
import it.
"""
from __future__ import annotations

import base64
import ipaddress
import json
import os
import secrets
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple, Union

ROOT = Path(__file__).resolve().parent

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Networks = tuple[Network, ...]
RateLimit = tuple[int, int]  # (requests allowed, window in seconds)
RateLimits = tuple[RateLimit, ...]
EncryptionKeys = list[tuple[str, bytes]]  # (key id, 32-byte AES key), newest first


def setting(default: str, doc: str) -> Any:
    """A field of ``Settings``: ``default`` is the text used when the variable is unset (the README
    shows it), parsed like a value from the environment."""
    return field(metadata={"default": default, "doc": doc})


@dataclass
class Settings:
    """Typed view of the environment. Built once at import (``settings``); tests may build their
    own with ``Settings.from_env({...})`` and change the shared one with ``override``."""

    APP_ENV: str = setting("development", "`development`, `test` or `production`. Production refuses to start without secrets.")
    HOST: str = setting("127.0.0.1", "Address the api listens on (`make run`, `python -m app serve`): this machine only by default; `0.0.0.0` to accept connections from the network (the Docker image sets it).")
    PORT: int = setting("3002", "HTTP port of the api (and of `make run`).")
    DATA_DIR: str = setting("./var", "Where embedded Postgres/Redis, generated dev keys and media files live.")
    DATABASE_URL: str = setting("", "PostgreSQL URL. Empty: `make run` starts an embedded Postgres under `DATA_DIR`.")
    REDIS_URL: str = setting("", "Redis URL (broker, pacing, rate limits). Empty: `make run` starts an embedded Redis.")
    DB_POOL_SIZE: int = setting("10", "SQLAlchemy connection pool size per process.")
    SECRET_KEY: str = setting("", "Signs access tokens (HS256). Required in production; generated into `DATA_DIR` in development.")
    APP_ENCRYPTION_KEYS: str = setting("", "Comma-separated `kid:base64key` AES-256 keys for field encryption, newest first. Required in production.")
    API_KEY_PEPPER: str = setting("", "Server-side pepper for API key HMACs. Required in production; generated in development.")
    ACCESS_TOKEN_TTL: int = setting("900", "Access token lifetime in seconds.")
    REFRESH_TOKEN_TTL: int = setting("2592000", "Refresh token lifetime in seconds.")
    JWT_ISSUER: str = setting("whatsapp-service", "`iss` claim of access tokens.")
    JWT_AUDIENCE: str = setting("whatsapp-service-api", "`aud` claim of access tokens.")
    ALLOW_SIGNUP: bool = setting("true", "Whether `POST /api/auth/register` is open.")
    LOGIN_FAILURES_PER_ACCOUNT: RateLimit = setting("5 per 15 minutes", "Failed logins allowed per email address from one client address; beyond it login from that address answers 429 with `Retry-After` until the window ends. Others' failures never lock the owner out.")
    LOGIN_FAILURES_PER_IP: RateLimit = setting("20 per 15 minutes", "Failed logins allowed per client IP; beyond it login answers 429 with `Retry-After` until the window ends.")
    MAX_CLIENTS_PER_ORG: int = setting("50", "WhatsApp accounts (clients, not deleted) one organisation may have; a started `web` client is a Chromium session. Above it: 422 `limit_reached`.")
    MAX_API_KEYS_PER_ORG: int = setting("100", "Live (not revoked) API keys one organisation may have.")
    MAX_PROXIES_PER_ORG: int = setting("100", "Proxies one organisation may have.")
    MAX_USERS_PER_ORG: int = setting("500", "Users (not deleted) one organisation may have.")
    MAX_CONTACTS_PER_ORG: int = setting("100000", "Contacts one organisation may create through the API and imports (contacts the pipeline adds for new numbers are not refused).")
    MAX_REQUEST_BYTES: int = setting("1048576", "Largest JSON request body accepted (413 above).")
    MAX_UPLOAD_BYTES: int = setting("104857600", "Largest media upload accepted (413 above, before any byte is read); each kind has WhatsApp's own lower limit, enforced while the file streams in.")
    PUBLIC_URL: str = setting("", "The address users and Meta reach this server at (e.g. `https://wa.example.com`), for signed media links in webhook events and links handed to Meta. Empty: `http://HOST:PORT` (links then work on this machine only, and `cloud` clients upload media to Meta instead of linking them).")
    MEDIA_QUOTA_BYTES: int = setting("1073741824", "Bytes of media one organisation may keep (422 `media_quota_exceeded` above); an organisation's own `media_quota_bytes` setting overrides it.")
    MEDIA_QUOTA_FILES: int = setting("10000", "Media files one organisation may keep; an organisation's own `media_quota_files` setting overrides it.")
    MEDIA_URL_TTL: int = setting("3600", "Seconds a signed media download link (`POST /api/media/{id}/link`, webhook events, links handed to Meta) stays valid.")
    MEDIA_FETCH_TIMEOUT: float = setting("60", "Seconds a worker may take to fetch a medium from a URL (`POST /api/media` with `url`) or from a transport (inbound media) before it fails.")
    MEDIA_RETENTION_DAYS: int = setting("90", "Days a medium is kept after it was created; then the retention job deletes it (never one a message still waiting to be sent, a template or an unfinished campaign uses). 0: keep media forever.")
    MEDIA_EXPIRE_EVERY: int = setting("3600", "Seconds between two runs of the media retention job.")
    MEDIA_STORAGE: str = setting("local", "Where media files live: `local` (under `DATA_DIR/media`; every process must share that directory) or `s3` (any S3-compatible store: AWS S3, MinIO, ...; the `S3_*` settings).")
    S3_ENDPOINT_URL: str = setting("", "S3 API address for `MEDIA_STORAGE=s3` (e.g. `http://minio:9000`); empty: AWS S3 of `S3_REGION`.")
    S3_BUCKET: str = setting("whatsapp-media", "Bucket holding media with `MEDIA_STORAGE=s3` (created at first use when missing).")
    S3_REGION: str = setting("us-east-1", "Region of the S3 bucket.")
    S3_ACCESS_KEY_ID: str = setting("", "Access key of the S3 store (empty: the usual AWS credential chain).")
    S3_SECRET_ACCESS_KEY: str = setting("", "Secret key of the S3 store.")
    CONTACT_IMPORT_MAX_BYTES: int = setting("134217728", "Largest CSV file `POST /api/contacts/import` accepts (413 above); the upload is streamed to `DATA_DIR`, never held in memory.")
    CONTACT_IMPORT_MAX_ROWS: int = setting("1000000", "Most rows (lines below the header) one contact import may have (422 above).")
    CONTACT_IMPORT_DEFAULT_REGION: str = setting("", "Region (ISO 3166 code, e.g. `US`, `DE`) of the numbers a contact import finds written without `+` and country code; an import may name its own. Empty: such numbers are invalid rows.")
    CONTACT_IMPORT_BATCH_ROWS: int = setting("2000", "Rows a contact import writes per transaction: its progress (and where a crashed import resumes) moves on by this much.")
    CONTACT_IMPORT_LEASE: int = setting("120", "Seconds a running contact import may go without committing a batch before the sweeper hands it to another worker (its worker died); after 5 such takeovers it fails.")
    CORS_ORIGINS: str = setting("", "Comma-separated origins allowed by CORS (empty: same-origin only; `*` in development only).")
    RATE_LIMIT_PUBLIC: RateLimits = setting("100 per 15 minutes", "Per-IP limit on unauthenticated and auth endpoints.")
    RATE_LIMIT_API: RateLimits = setting("6000 per minute", "Limit on the authenticated API for each organisation, and for each of its keys/users unless `RATE_LIMIT_PRINCIPAL` is set.")
    RATE_LIMIT_PRINCIPAL: RateLimits | None = setting("", "Limit on the authenticated API for each API key or user (empty: `RATE_LIMIT_API`). Lower it so one key cannot use its organisation's whole budget.")
    RATE_LIMIT_ENABLED: bool = setting("true", "Turns request rate limiting on or off.")
    TRUSTED_PROXIES: Networks = setting("127.0.0.1/32,::1/128", "CIDRs of reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed (client IP for rate limits and audit, HTTPS for HSTS): loopback only by default. Behind a proxy on another host, list exactly that proxy's address or network (compose sets its own network). Empty: trust none.")
    METRICS_FLUSH_MS: int = setting("1000", "Milliseconds a worker process adds up its job and webhook counters in memory before writing them to Redis for /metrics, in one round trip (a process killed loses at most that much of its counts); 0 writes each at once.")
    METRICS_TOKEN: str = setting("", "Bearer token `/metrics` requires (`Authorization: Bearer <token>`; Prometheus' `authorization` scrape setting). Empty: no token needed.")
    METRICS_ALLOW: Networks = setting("127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7", "CIDRs of the addresses that may read `/metrics` (the client address, as `TRUSTED_PROXIES` finds it): loopback and private ranges by default; others get 403. Empty: any address (then set `METRICS_TOKEN`).")
    LOG_LEVEL: str = setting("INFO", "Log level of every process (JSON logs to stdout).")
    LOG_FORMAT: str = setting("json", "`json` (one object per line, for log shippers) or `text` (`make run` uses it).")
    WORKER_HEARTBEAT_TTL: int = setting("15", "Seconds after which a silent worker counts as gone in `/health`.")
    OUTBOX_SWEEP_AFTER: int = setting("30", "Seconds after commit before the sweeper re-sends a job nobody dispatched.")
    SCHEDULER_LOCK_ID: int = setting("727274", "Postgres advisory lock id held by the leading scheduler.")
    WORKER_POOL: str = setting("", "Set by `python -m workers run --pool NAME` for its worker processes; not set by hand.")
    WORKER_PROCESSES: int = setting("1", "Processes per worker pool started by `python -m workers run` unless `--processes` is given.")
    WEBHOOK_ALLOW_PRIVATE: str = setting("", "Which non-public addresses the connections tenants choose may reach (webhook URLs, proxy hosts and their health checks, the cloud transport's `base_url`): `false` none, `loopback` this machine only, `true` every private range. Empty: `loopback` when `APP_ENV=development` and `HOST` is a loopback address, else `false`.")
    WEBHOOK_TIMEOUT: float = setting("15", "Seconds a webhook delivery may take to connect and to answer before it counts as failed.")
    WEBHOOK_MAX_IN_FLIGHT: int = setting("8", "Deliveries to one webhook endpoint running at the same time, across every worker (the others wait their turn without holding a thread), so a slow endpoint cannot take every thread. 0: no limit.")
    WEBHOOK_TIME_SCALE: float = setting("1", "Multiplies webhook retry delays, `Retry-After` waits and the 5-day disable window. Keep 1; tests and demos shrink time with e.g. 0.001.")
    DEFAULT_TRANSPORT: str = setting("sim", "Transport used by clients created without one.")
    CHROMIUM_PATH: str = setting("/usr/bin/chromium", "Chromium used by the `web` transport.")
    WEB_URL: str = setting("https://web.whatsapp.com", "Address of WhatsApp Web the `web` transport opens (tests point it at a fixture page).")
    WEB_HEADLESS: bool = setting("true", "Run the session hosts' Chromium headless.")
    WEB_NAV_TIMEOUT: float = setting("60", "Seconds the `web` transport waits for WhatsApp Web to load, a chat to open or a sent message to appear.")
    WEB_QR_TIMEOUT: int = setting("300", "Seconds a `web` session shows (and reloads) QR codes without a scan before it gives up as `failed`.")
    WEB_STATE_SAVE_INTERVAL: int = setting("300", "Seconds between two saves of a ready `web` session's login state (also saved at login and at stop).")
    WEB_TYPING_MAX_MS: int = setting("45000", "Longest typing indicator of one `web` message (60-100 ms per character); the rest of a longer text is pasted, so a send stays well below `MESSAGE_SENDING_TIMEOUT`.")
    SESSION_LEASE_TTL: int = setting("30", "Seconds a session host's lease on a `web` client lasts without renewal; another host takes the session over after it expires.")
    SESSION_HEARTBEAT_INTERVAL: float = setting("10", "Seconds between two lease renewals (and orphan checks) of a session host.")
    PACING_SLACK_MS: int = setting("500", "Pad (ms) added to the minimum gap and to the windows of paced sends: the time a granted send has to reach the transport (a send later than that is paced again).")
    WORKER_POLL_MS: int = setting("100", "Longest idle poll of a worker's queue consumers: a delayed job (a pacing slot) starts at most about twice this late.")
    MESSAGE_PARK_AFTER: int = setting("60", "Seconds: a message due later than this (its pacing slot or `scheduled_at`) waits parked in Redis, not in the broker, until the feeder releases it this long before its time; keeps workers' delay queues small whatever the backlog.")
    MESSAGE_SENDING_TIMEOUT: int = setting("120", "Seconds after which the sweeper marks a message stuck in `sending` (its worker died mid-send) `unknown` with code `interrupted` and asks the transport what became of it; it is never resent unless the transport is certain it never got it.")
    MESSAGE_LOST_AFTER: int = setting("300", "Seconds past its due time after which the sweeper re-enqueues a `queued` message whose job was lost.")
    MESSAGE_SWEEP_EVERY: int = setting("30", "Seconds between two runs of the message sweeper (interrupted sends, lost jobs, expired idempotency keys).")
    CAMPAIGN_TICK_EVERY: int = setting("5", "Seconds between two campaign ticks: scheduled campaigns due are started, finished ones completed, a stalled fan-out sent again, queued messages of clients that dropped out moved to the campaign's other clients.")
    CAMPAIGN_FANOUT_CHUNK: int = setting("2000", "Recipients a campaign's fan-out writes per transaction (a fan-out that dies goes on from its last chunk).")
    CAMPAIGN_FANOUT_STALLED_AFTER: int = setting("60", "Seconds without progress after which a running campaign's unfinished fan-out is sent again (its worker died).")
    CAMPAIGN_REPLY_DAYS: int = setting("7", "Days after a campaign message during which the contact's next message counts as a reply (`progress.replied`).")
    TEMPLATE_SYNC_EVERY: int = setting("900", "Seconds between two syncs of every submitted template's status from Meta (a verdict whose `message_template_status_update` webhook was lost).")
    ANALYTICS_ROLLUP_EVERY: int = setting("60", "Seconds between two runs of the analytics rollup (`analytics.rollup`), which folds new message status changes into the hourly and daily numbers.")
    ANALYTICS_REPLY_WINDOW: int = setting("86400", "Seconds after one of our outbound messages during which the contact's next inbound message on that client counts it as replied, and after an inbound message during which our first outbound one counts as the response (docs/analytics.md).")
    ANALYTICS_EXPORT_TTL: int = setting("604800", "Seconds the file of an export made by a worker (`POST /api/analytics/exports`) is kept after it is ready; then it is deleted and the export shows `expired`.")
    CUSTOMER_WINDOW_HOURS: int = setting("24", "Hours after a contact's last message during which a `cloud` client may send it free-form messages; outside them only templates (422 `outside_customer_window`), as Meta rules.")
    MESSAGE_SEND_BATCH: int = setting("100", "Messages one transaction claims, and one statement records as sent, for a client that is not paced (`pacing: false`) on a stateless transport (sim, cloud); paced clients send one message per job.")
    MESSAGE_MAX_ATTEMPTS: int = setting("5", "Transport attempts of one message on transient errors before it fails.")
    OPT_OUT_CONFIRMATION: str = setting("You have been unsubscribed and will receive no more messages. Reply START to subscribe again.", "The one message sent to a contact who opts out (STOP).")
    AUTOMATION_REPLIES_PER_MINUTE: int = setting("3", "Automatic replies (automations' `reply` actions) one contact may get per minute across every automation; beyond it an automation that would reply is skipped (`reply_limit`). Stops two bots from talking to each other forever.")
    INBOX_REDISPATCH_AFTER: int = setting("30", "Seconds a transport report (status, ack, inbound message) may stay unapplied past its time before its job is sent again (the broker lost it).")
    IDEMPOTENCY_IN_FLIGHT_TIMEOUT: int = setting("60", "Seconds after which a request holding an `Idempotency-Key` that never finished (its process died) is abandoned, and the key may be used again.")
    CLIENT_RECONNECT_BASE_MS: int = setting("2000", "First reconnect delay of a client that disconnected; it doubles with each failed attempt.")
    CLIENT_RECONNECT_MAX_MS: int = setting("300000", "Longest delay between two reconnect attempts of a client.")
    CLIENT_RECONNECT_ATTEMPTS: int = setting("8", "Reconnect attempts in a row before a disconnected client is marked `failed` (with an alert).")
    PROXY_CHECK_INTERVAL: int = setting("300", "Seconds between two health checks of every proxy.")
    PROXY_CHECK_TIMEOUT: float = setting("5", "Seconds a proxy health check waits for the proxy to answer.")
    PROXY_CHECK_TARGET: str = setting("web.whatsapp.com:443", "`host:port` the proxy health check opens a tunnel to (HTTP CONNECT or SOCKS5).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings ``env`` (default ``os.environ``) gives; exits naming a malformed one."""
        env = os.environ if env is None else env
        built = cls(**{s.name: s.parse(env.get(s.name, s.default)) for s in SETTINGS})
        if not built.DATABASE_URL or not built.REDIS_URL:
            # a shell next to `make run`: use the embedded servers it started
            running = running_services(built.data_dir)
            for name in ("DATABASE_URL", "REDIS_URL"):
                if not getattr(built, name) and running.get(name):
                    setattr(built, name, running[name])
        return built

    def override(self, **changes: object) -> None:
        """Change settings in place (tests, CLI flags). A value is text as in the environment or
        one already parsed (what ``getattr`` gave before, to restore it); KeyError for an unknown
        name, exit for a malformed value, and then nothing is changed."""
        unknown = [name for name in changes if name not in _BY_NAME]
        if unknown:
            raise KeyError(unknown[0])
        parsed = {name: _BY_NAME[name].parse(value) for name, value in changes.items()}
        for name, value in parsed.items():
            setattr(self, name, value)

    @property
    def is_production(self) -> bool:
        return self.APP_ENV == "production"

    @property
    def private_targets(self) -> str:
        """``WEBHOOK_ALLOW_PRIVATE`` resolved: ``all``, ``loopback`` or ``none`` (ValueError if bad).

        Unset, this machine's own addresses are allowed only in development with the api listening
        on loopback: then only this machine's users can register targets at all."""
        value = self.WEBHOOK_ALLOW_PRIVATE.strip().lower()
        if value in ("1", "true", "yes", "on", "all"):
            return "all"
        if value in ("0", "false", "no", "off", "none"):
            return "none"
        if value == "loopback":
            return "loopback"
        if value in ("", "auto"):
            return "loopback" if self.APP_ENV == "development" and is_loopback_host(self.HOST) else "none"
        raise ValueError(f"{self.WEBHOOK_ALLOW_PRIVATE!r} is not one of true, loopback, false")

    @property
    def data_dir(self) -> Path:
        p = Path(self.DATA_DIR)
        return p if p.is_absolute() else (ROOT / p)

    def secret(self, name: str, nbytes: int = 32) -> str:
        """A secret setting; in development/test generated once into DATA_DIR if unset."""
        value: str = getattr(self, name) or ""
        if value:
            return value
        if self.is_production:
            raise SystemExit(f"config: {name} must be set when APP_ENV=production")
        path = self.data_dir / "secrets" / name.lower()
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        value = base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode().rstrip("=")
        if name == "APP_ENCRYPTION_KEYS":
            value = "k1:" + base64.b64encode(secrets.token_bytes(32)).decode()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path.read_text().strip()

    def encryption_keys(self) -> EncryptionKeys:
        """``APP_ENCRYPTION_KEYS`` parsed (generated in development, see ``secret``)."""
        return parse_encryption_keys(self.secret("APP_ENCRYPTION_KEYS"))


# ----------------------------------------------------------------------------- parsing
# Each parser takes the environment's text, or a value it already returned (``override`` restoring
# an earlier value), and raises ValueError or TypeError on anything else.


def _text(value: object) -> str:
    if isinstance(value, bool):  # override(WEBHOOK_ALLOW_PRIVATE=True): the environment's spelling
        return "true" if value else "false"
    return str(value)


def _flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def parse_networks(value: object) -> Networks:
    """``"10.0.0.0/8,::1/128"`` (or a list of such CIDRs) -> the networks; host bits are ignored."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"{value!r} is not a list of networks")
    return tuple(item if isinstance(item, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                 else ipaddress.ip_network(str(item).strip(), strict=False)
                 for item in items if not isinstance(item, str) or item.strip())


def parse_rate_limits(value: object) -> RateLimits:
    """``"100 per 15 minutes"`` (or several joined by ``;``) -> ((100, 900),)."""
    if isinstance(value, tuple):
        return value
    from limits import parse_many

    return tuple((item.amount, int(item.get_expiry())) for item in parse_many(str(value)))


def parse_rate_limit(value: object) -> RateLimit:
    """``"5 per 15 minutes"`` -> (5, 900): the first limit of the text."""
    if isinstance(value, tuple):
        return value
    return parse_rate_limits(value)[0]


def parse_encryption_keys(spec: str) -> EncryptionKeys:
    """``kid:base64key[,kid:base64key...]``, newest first -> [(kid, 32-byte key), ...]."""
    keys: EncryptionKeys = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        kid, sep, b64 = part.partition(":")
        if not sep or not kid or ":" in kid:
            raise ValueError("APP_ENCRYPTION_KEYS entries look like kid:base64key")
        raw = base64.b64decode(b64 + "=" * (-len(b64) % 4))
        if len(raw) != 32:
            raise ValueError(f"encryption key {kid!r} must be 32 bytes (AES-256), got {len(raw)}")
        if any(kid == seen for seen, _ in keys):
            raise ValueError(f"encryption key id {kid!r} is listed twice")
        keys.append((kid, raw))
    if not keys:
        raise ValueError("APP_ENCRYPTION_KEYS is empty")
    return keys


class Kind(NamedTuple):
    """How the values of one field type are parsed, and what ``config:`` calls a malformed one."""

    name: str
    parse: Callable[[Any], Any]


KINDS: dict[Any, Kind] = {
    str: Kind("str", _text),
    int: Kind("int", int),
    float: Kind("float", float),
    bool: Kind("bool", _flag),
    Networks: Kind("list of CIDRs like '10.0.0.0/8,::1/128'", parse_networks),
    RateLimits: Kind("rate limit like '100 per 15 minutes'", parse_rate_limits),
    RateLimit: Kind("rate limit like '5 per 15 minutes'", parse_rate_limit),
}


def _kind_of(annotation: Any) -> Kind:
    """The kind of a field's type; ``X | None`` is X, or None for empty text."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (Union, types.UnionType) and type(None) in args:
        [inner] = [a for a in args if a is not type(None)]
        kind = KINDS[inner]
        return Kind(kind.name, lambda value: None if value is None or str(value).strip() == "" else kind.parse(value))
    return KINDS[annotation]


@dataclass(frozen=True)
class SettingSpec:
    """One setting: its name, default text and description (the README's row), and how its text
    is parsed (the kind of its field's type)."""

    name: str
    default: str
    doc: str
    kind: Kind

    def parse(self, raw: object) -> Any:
        try:
            return self.kind.parse(raw)
        except (ValueError, TypeError):
            raise SystemExit(f"config: {self.name}={raw!r} is not a valid {self.kind.name}") from None


def _specs() -> tuple[SettingSpec, ...]:
    hints = typing.get_type_hints(Settings)
    return tuple(SettingSpec(f.name, f.metadata["default"], f.metadata["doc"], _kind_of(hints[f.name]))
                 for f in fields(Settings))


#: every setting, in the order of the class (and of the README's table)
SETTINGS = _specs()
_BY_NAME = {s.name: s for s in SETTINGS}

#: written by `make run` under DATA_DIR while it runs: the URLs of the servers it uses
RUN_FILE = "run.json"


def running_services(data_dir: Path) -> dict:
    """What a live `make run` on ``data_dir`` wrote to ``RUN_FILE`` ({} when none runs): its pid,
    ``DATABASE_URL``, ``REDIS_URL`` and ``api`` (the api's base URL)."""
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
    Called at the start of every process (create_app, workers run, workers scheduler).
    Secrets are checked here, not at load, so that the message never shows their value."""
    s = s or settings
    problems = []
    if s.is_production:
        missing = [name for name in PRODUCTION_SECRETS if not getattr(s, name).strip()]
        if missing:
            problems.append(f"{', '.join(missing)} must be set when APP_ENV=production "
                            "(see .env.example for how to generate them)")
        if s.SECRET_KEY and len(s.SECRET_KEY) < 32:
            problems.append("SECRET_KEY must be at least 32 characters")
        if s.API_KEY_PEPPER and len(s.API_KEY_PEPPER) < 16:
            problems.append("API_KEY_PEPPER must be at least 16 characters")
    try:
        s.private_targets  # noqa: B018  (reading it checks WEBHOOK_ALLOW_PRIVATE)
    except ValueError as exc:
        problems.append(f"WEBHOOK_ALLOW_PRIVATE: {exc}")
    if not 1 <= s.MESSAGE_SEND_BATCH <= 1000:
        problems.append(f"MESSAGE_SEND_BATCH must be between 1 and 1000, got {s.MESSAGE_SEND_BATCH}")
    if s.APP_ENCRYPTION_KEYS.strip():
        try:
            parse_encryption_keys(s.APP_ENCRYPTION_KEYS)
        except ValueError as exc:
            problems.append(f"APP_ENCRYPTION_KEYS: {exc}")
    if problems:
        raise SystemExit("config: refusing to start: " + "; ".join(problems))


#: prometheus_client's switch for multiprocess mode. The library reads it from the environment
#: itself, so it is never copied into ``settings``: these read and set the live variable.
PROMETHEUS_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def prometheus_multiproc_dir() -> str | None:
    """Where every api process writes its metrics samples, when gunicorn_conf has set it."""
    return os.environ.get(PROMETHEUS_MULTIPROC_DIR) or None


def ensure_prometheus_multiproc_dir() -> str:
    """The multiprocess directory, a fresh temporary one unless set (app/system/gunicorn_conf.py
    calls it in gunicorn's master, before the workers fork and import prometheus_client)."""
    if not prometheus_multiproc_dir():
        import tempfile

        os.environ[PROMETHEUS_MULTIPROC_DIR] = tempfile.mkdtemp(prefix="wa-prometheus-")
    return os.environ[PROMETHEUS_MULTIPROC_DIR]


#: OpenTelemetry's own variables (``OTEL_*``). Its SDK reads them from the environment itself
#: (service name, resource, sampler, exporter endpoint and headers), so they are never copied into
#: ``settings``; this only tells whether they ask for tracing, and with which exporters
#: (docs/operations.md, Tracing).
def otel_trace_exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The span exporters asked for, none (tracing off) unless the standard variables ask: those
    ``OTEL_TRACES_EXPORTER`` names other than ``none``, or ``otlp`` when only an OTLP endpoint is
    set (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``..._TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true``
    wins over both."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if named:
        return [n for n in dict.fromkeys(named) if n != "none"]
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
    return ["otlp"] if endpoint.strip() else []


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
