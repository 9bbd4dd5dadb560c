"""The ``cloud`` transport: Meta's official WhatsApp Cloud API (the Graph API over HTTPS).

Stateless: nothing stays open between calls but a ``requests.Session`` (connection pool) per
transport. ``start`` checks the credentials with a GET of the phone number; ``send`` POSTs to
``/{phone_number_id}/messages`` and returns Meta's ``wamid`` as the external id; acks and inbound
messages arrive later as webhooks (app/clients/meta_service.py), not through this object.

Client config (``clients.config``): ``phone_number_id`` (required), ``waba_id``, ``api_version``
(default ``DEFAULT_API_VERSION``), ``base_url`` (default Meta's; tests point it at a fake),
``timeout_s``, ``template_parameters`` (``named`` | ``positional``), ``media_ids`` (our ``med_`` id
-> a media id already uploaded to Meta). Secrets (``ClientInfo.secrets``): ``access_token``, and
for the webhook ``app_secret`` and ``verify_token``. docs/cloud-transport.md has the set-up.

Every Meta error code this platform treats specially is in ``META_ERRORS``, the one table that
decides retry-or-fail and which client status to report.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from app.security import ssrf
from app.transports.base import (
    ClientInfo,
    EventSink,
    Lookup,
    MediaRef,
    OutboundMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
    Transport,
)
from config import settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 20.0           # read timeout: Meta answers a send well within this
SENT_TTL_S = 7 * 24 * 3600         # how long a resend of one of our message ids is recognised
PHONE_FIELDS = "display_phone_number,verified_name,quality_rating"


# ------------------------------------------------------------------------------- error mapping

@dataclass(frozen=True)
class ErrorRule:
    """What one Meta error means here."""

    retry: bool                       # True: TransientSendError (retry with backoff); False: fail now
    code: str                         # our error code (messages.error_code, acks' error.code)
    retry_after_ms: int | None = None  # backoff before the retry (a Retry-After header can lengthen it)
    report: str | None = None         # client status to report: "failed" (credentials) / "banned" (account)


#: Meta error code -> behaviour. The one place that decides; docs/cloud-transport.md mirrors it.
META_ERRORS: dict[int, ErrorRule] = {
    # throughput: back off and retry
    130429: ErrorRule(True, "rate_limited", 5_000),                 # Cloud API throughput reached
    131056: ErrorRule(True, "pair_rate_limited", 60_000),           # too many to the same recipient
    4: ErrorRule(True, "rate_limited", 60_000),                     # app API-call rate limit
    80007: ErrorRule(True, "rate_limited", 60_000),                 # WABA rate limit
    # Meta having trouble: retry
    1: ErrorRule(True, "provider_unavailable", 10_000),             # API unknown
    2: ErrorRule(True, "provider_unavailable", 10_000),             # API service (downtime, overload)
    131000: ErrorRule(True, "provider_unavailable", 10_000),        # something went wrong
    131016: ErrorRule(True, "provider_unavailable", 30_000),        # service unavailable
    # the 24-hour customer service window: only a template may open it again
    131047: ErrorRule(False, "outside_customer_window"),
    # the recipient: never retried
    131026: ErrorRule(False, "invalid_recipient"),                  # undeliverable (not on WhatsApp, ...)
    131030: ErrorRule(False, "invalid_recipient"),                  # not in the test number's allowed list
    131021: ErrorRule(False, "invalid_recipient"),                  # recipient is the sender
    # the content
    131051: ErrorRule(False, "unsupported_message_type"),
    131052: ErrorRule(False, "media_download_failed"),
    131053: ErrorRule(False, "media_upload_failed"),
    132000: ErrorRule(False, "template_params_mismatch"),
    132001: ErrorRule(False, "template_not_found"),
    132012: ErrorRule(False, "template_params_mismatch"),
    100: ErrorRule(False, "invalid_request"),                       # invalid parameter (see RECIPIENT_PARAMETER)
    131009: ErrorRule(False, "invalid_request"),                    # parameter value not valid (idem)
    131048: ErrorRule(False, "spam_rate_limited"),                  # quality limit: retrying makes it worse
    # credentials and the account: fail the message and report the client
    0: ErrorRule(False, "auth_failed", report="failed"),            # AuthException
    190: ErrorRule(False, "auth_failed", report="failed"),          # access token expired / invalid
    10: ErrorRule(False, "auth_failed", report="failed"),           # permission denied
    133010: ErrorRule(False, "phone_not_registered", report="failed"),
    368: ErrorRule(False, "account_restricted", report="banned"),   # blocked for policy violations
    131031: ErrorRule(False, "account_locked", report="banned"),
}
#: 200-299 are "API permission" errors: as 10
PERMISSION_RANGE = range(200, 300)
#: codes 100 / 131009 about the ``to`` parameter are an invalid recipient, not a malformed request
RECIPIENT_PARAMETER = re.compile(r"""(['"`]to['"`]|\bparam(eter)?\s+to\b|\brecipient\b|phone.number)""", re.I)
INVALID_RECIPIENT = ErrorRule(False, "invalid_recipient")
#: without a known Meta code, by HTTP status (5xx, timeouts and connection errors retry)
HTTP_FALLBACK = {401: ErrorRule(False, "auth_failed", report="failed"), 429: ErrorRule(True, "rate_limited", 5_000)}
SERVER_ERROR = ErrorRule(True, "provider_unavailable", 10_000)
NETWORK_ERROR = ErrorRule(True, "transport_unavailable")
#: base_url (or the proxy) is an address the guard refuses (app/security/ssrf.py): the config is wrong
BLOCKED_ADDRESS = ErrorRule(False, "address_not_allowed", report="failed")
UNKNOWN_ERROR = ErrorRule(False, "provider_error")


def classify(code: int | None, http_status: int | None = None, text: str = "") -> ErrorRule:
    """The rule for a Meta error ``code`` (from a response or a webhook), else by HTTP status."""
    if code is not None:
        rule = META_ERRORS.get(code)
        if rule is None and code in PERMISSION_RANGE:
            rule = META_ERRORS[10]
        if rule is not None:
            if rule.code == "invalid_request" and RECIPIENT_PARAMETER.search(text or ""):
                return INVALID_RECIPIENT
            return rule
    if http_status is not None:
        if http_status in HTTP_FALLBACK:
            return HTTP_FALLBACK[http_status]
        if http_status >= 500:
            return SERVER_ERROR
    return UNKNOWN_ERROR


class GraphError(Exception):
    """A failed Graph API call, already classified."""

    def __init__(self, message: str, rule: ErrorRule, *, meta_code: int | None = None,
                 http_status: int | None = None, retry_after_ms: int | None = None, details: dict | None = None):
        super().__init__(message)
        self.rule, self.meta_code, self.http_status = rule, meta_code, http_status
        self.retry_after_ms = retry_after_ms if retry_after_ms is not None else rule.retry_after_ms
        self.details = {k: v for k, v in {"meta_code": meta_code, "http_status": http_status,
                                           **(details or {})}.items() if v is not None}

    def to_send_error(self) -> TransientSendError | PermanentSendError:
        if self.rule.retry:
            return TransientSendError(str(self), code=self.rule.code, retry_after_ms=self.retry_after_ms,
                                      details=self.details)
        return PermanentSendError(str(self), code=self.rule.code, details=self.details)


def _retry_after_ms(response: requests.Response) -> int | None:
    value = response.headers.get("Retry-After", "")
    return int(value) * 1000 if value.isdigit() else None


def error_from_response(response: requests.Response) -> GraphError:
    """Read Graph's ``{"error": {"code", "message", "error_data": {"details"}, "fbtrace_id"}}``."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), int) else None
    message = str(err.get("message") or f"HTTP {response.status_code} from the Graph API")[:500]
    detail = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    rule = classify(code, response.status_code, f"{message} {detail or ''}")
    header_ms = _retry_after_ms(response)
    retry_ms = max(filter(None, (header_ms, rule.retry_after_ms)), default=None) if rule.retry else None
    return GraphError(message, rule, meta_code=code, http_status=response.status_code, retry_after_ms=retry_ms,
                      details={"details": str(detail)[:500] if detail else None, "fbtrace_id": err.get("fbtrace_id")})


# ------------------------------------------------------------------------------- helpers

def to_e164(number: str | None) -> str | None:
    """Meta's numbers (``15550783881``, ``+1 555-078-3881``) as E.164."""
    digits = re.sub(r"\D", "", number or "")
    return f"+{digits}" if digits else None


def wa_number(e164: str) -> str:
    """Our E.164 ``to`` as the Cloud API writes it (digits only)."""
    return re.sub(r"\D", "", e164 or "")


def proxies_for(client: ClientInfo) -> dict | None:
    """``requests`` proxies for the client's proxy. SOCKS resolves names through the proxy."""
    if client.proxy is None:
        return None
    url = client.proxy.url()
    if client.proxy.scheme == "socks5":
        url = "socks5h" + url[len("socks5"):]
    return {"http": url, "https": url}


class GuardedAdapter(HTTPAdapter):
    """requests' adapter with every direct connection through the address guard, and the proxy's
    address checked before it is used (a proxy connects onwards for us: base_url is checked at
    start, ``CloudTransport._config_problem``)."""

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        self.poolmanager = ssrf.GuardedPoolManager(num_pools=connections, maxsize=maxsize, block=block,
                                                   **pool_kwargs)

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        parts = urlsplit(proxy)
        ssrf.resolve(parts.hostname or "", parts.port or 1080)  # BlockedAddress (an OSError) when refused
        return super().proxy_manager_for(proxy, **proxy_kwargs)


def guarded_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy or CA bundle from the environment: only the client's own proxy
    adapter = GuardedAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def template_components(template: dict, parameter_format: str | None = None) -> list[dict]:
    """Meta ``components`` for a template: given ones as they are, else one ``body`` component with
    a text parameter per variable. Variables named ``1``, ``2``... (or ``parameter_format``
    ``positional``) are positional in that order; other names are Meta's named parameters."""
    if template.get("components"):
        return list(template["components"])
    variables = template.get("variables") or {}
    if not variables:
        return []
    names = list(variables)
    positional = parameter_format == "positional" or (
        parameter_format != "named" and all(str(n).isdigit() for n in names))
    if positional:
        if all(str(n).isdigit() for n in names):
            names.sort(key=lambda n: int(n))
        params = [{"type": "text", "text": str(variables[n])} for n in names]
    else:
        params = [{"type": "text", "parameter_name": str(n), "text": str(variables[n])} for n in names]
    return [{"type": "body", "parameters": params}]


def _is_meta_url(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host == "facebook.com" or host.endswith(".facebook.com"))


MEDIA_TYPES = ("image", "video", "audio", "document")
CAPTIONED = ("image", "video", "document")


# ------------------------------------------------------------------------------- the transport

class CloudTransport(Transport):
    name = "cloud"
    stateful = False

    def __init__(self, client: ClientInfo, events: EventSink):
        super().__init__(client, events)
        config = client.config or {}
        self.phone_number_id = str(config.get("phone_number_id") or "")
        self.base_url = str(config.get("base_url") or DEFAULT_BASE_URL).rstrip("/")
        self.api_version = str(config.get("api_version") or DEFAULT_API_VERSION)
        self.timeout = (CONNECT_TIMEOUT_S, float(config.get("timeout_s") or DEFAULT_TIMEOUT_S))
        self.proxies = proxies_for(client)
        self.http = guarded_session()
        self.http.headers.update({"Authorization": f"Bearer {(client.secrets or {}).get('access_token', '')}",
                                  "User-Agent": "whatsapp-service/cloud"})
        self._uploaded: dict[str, str] = {}

    # --- lifecycle

    def start(self, state: bytes | None = None) -> None:
        """Validate the credentials: ``ready`` with the display phone, ``failed`` with the reason
        (``disconnected`` when Meta cannot be reached, so the platform tries again with backoff)."""
        problem = self._config_problem()
        if problem:
            self.events.status(self.client, "failed", {"reason": problem, "code": "invalid_config"})
            return
        try:
            info = self._call("GET", self.phone_number_id, params={"fields": PHONE_FIELDS})
        except GraphError as exc:
            status = exc.rule.report or ("disconnected" if exc.rule.retry else "failed")
            self.events.status(self.client, status, {"reason": str(exc), "code": exc.rule.code, **exc.details})
            return
        self.events.status(self.client, "ready", {
            "phone": to_e164(info.get("display_phone_number")), "verified_name": info.get("verified_name"),
            "quality_rating": info.get("quality_rating")})

    def stop(self) -> None:
        """Nothing runs between calls: close the connection pool. The platform records ``stopped``."""
        self.http.close()

    def logout(self) -> None:
        """The Cloud API has no session to log out of (deregistering the number would take it off
        WhatsApp): close the pool and leave the credentials be. The platform records the status."""
        self.http.close()

    # --- sending

    def send(self, message: OutboundMessage) -> SendResult:
        problem = self._config_problem()
        if problem:
            raise PermanentSendError(problem, code="invalid_config")
        known = self._already_sent(message.message_id)
        if known:
            return SendResult(external_id=known)
        try:
            payload = self.build_payload(message)
            data = self._call("POST", f"{self.phone_number_id}/messages", json=payload)
        except GraphError as exc:
            if exc.rule.report:
                self.events.status(self.client, exc.rule.report, {"reason": str(exc), "code": exc.rule.code,
                                                                  **exc.details})
            raise exc.to_send_error() from exc
        try:
            wamid = data["messages"][0]["id"]
        except (KeyError, IndexError, TypeError):
            raise TransientSendError("the Graph API accepted the send without a message id",
                                     code="provider_error") from None
        self._remember_sent(message.message_id, wamid)
        return SendResult(external_id=wamid, status="sent")

    def build_payload(self, message: OutboundMessage) -> dict:
        """The JSON body of ``POST /{phone_number_id}/messages`` (uploads a local media file first)."""
        payload = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": wa_number(message.to),
                   "biz_opaque_callback_data": message.message_id}
        if message.type == "text":
            if not message.text:
                raise PermanentSendError("a text message needs text", code="invalid_request")
            payload.update(type="text", text={"preview_url": bool(self.client.config.get("preview_url")),
                                              "body": message.text})
        elif message.type in MEDIA_TYPES:
            if message.media is None:
                raise PermanentSendError(f"a {message.type} message needs media", code="invalid_request")
            obj = self._media_object(message.media, message.type)
            if message.caption and message.type in CAPTIONED:
                obj["caption"] = message.caption
            if message.type == "document" and message.media.filename:
                obj["filename"] = message.media.filename
            payload.update(type=message.type, **{message.type: obj})
        elif message.type == "template":
            tpl = message.template or {}
            if not tpl.get("name"):
                raise PermanentSendError("a template message needs the template's name", code="invalid_request")
            body = {"name": tpl["name"], "language": {"code": tpl.get("language") or "en"}}
            components = template_components(tpl, self.client.config.get("template_parameters"))
            if components:
                body["components"] = components
            payload.update(type="template", template=body)
        else:
            raise PermanentSendError(f"the cloud transport cannot send {message.type!r}",
                                     code="unsupported_message_type")
        return payload

    def _media_object(self, media: MediaRef, kind: str) -> dict:
        """By ``link`` when Meta can fetch it, else by an uploaded media ``id``: one the operator
        mapped in ``config.media_ids``, or one we upload now from the stored file."""
        if media.url:
            return {"link": media.url}
        mapped = (self.client.config.get("media_ids") or {}).get(media.media_id)
        if mapped:
            return {"id": str(mapped)}
        if media.path:
            return {"id": self.upload_media(media)}
        raise PermanentSendError(f"{kind} {media.media_id} has no link, no uploaded id and no file",
                                 code="media_unavailable")

    def upload_media(self, media: MediaRef) -> str:
        """``POST /{phone_number_id}/media`` (multipart) -> Meta's media id (kept for this transport)."""
        if media.media_id in self._uploaded:
            return self._uploaded[media.media_id]
        try:
            fh = open(media.path, "rb")
        except OSError as exc:
            raise PermanentSendError(f"media file unreadable: {exc.strerror}", code="media_unavailable") from None
        with fh:
            data = self._call("POST", f"{self.phone_number_id}/media",
                              data={"messaging_product": "whatsapp", "type": media.mime_type},
                              files={"file": (media.filename or media.media_id, fh, media.mime_type)})
        media_id = str(data.get("id") or "")
        if not media_id:
            raise GraphError("the media upload returned no id", SERVER_ERROR)
        self._uploaded[media.media_id] = media_id
        return media_id

    def download_media(self, meta_media_id: str) -> tuple[bytes, str]:
        """An inbound message's media (webhooks carry only Meta's media id): look up its short-lived
        URL, then fetch it with the same token. Returns (content, mime_type); raises GraphError."""
        info = self._call("GET", meta_media_id)
        try:
            resp = self.http.get(info["url"], timeout=self.timeout, proxies=self.proxies)
        except (KeyError, TypeError):
            raise GraphError("the media lookup returned no url", UNKNOWN_ERROR) from None
        except (requests.RequestException, ssrf.BlockedAddress) as exc:
            blocked = ssrf.find_blocked(exc)
            if blocked is not None:
                raise GraphError(f"media download refused: {blocked}", BLOCKED_ADDRESS) from None
            raise GraphError(f"media download failed: {exc.__class__.__name__}", NETWORK_ERROR) from None
        if resp.status_code >= 400:
            raise error_from_response(resp)
        return resp.content, str(info.get("mime_type") or resp.headers.get("Content-Type") or "")

    # --- plumbing

    def _config_problem(self) -> str | None:
        if not self.phone_number_id:
            return "config.phone_number_id is missing"
        if settings.is_production and not _is_meta_url(self.base_url):
            # a tenant's base_url must not point our workers (and the token) at another host
            return "config.base_url must be an https://*.facebook.com URL in production"
        problem = ssrf.check_url(self.base_url)
        if problem:
            return f"config.base_url: {problem}"
        if not (self.client.secrets or {}).get("access_token"):
            return "the access_token secret is missing"
        return None

    def _call(self, method: str, path: str, **kwargs) -> dict:
        """One Graph API call; any failure becomes a classified GraphError."""
        url = f"{self.base_url}/{self.api_version}/{path}"
        try:
            resp = self.http.request(method, url, timeout=self.timeout, proxies=self.proxies, **kwargs)
        except requests.Timeout:
            raise GraphError("the Graph API timed out", NETWORK_ERROR) from None
        except (requests.RequestException, ssrf.BlockedAddress) as exc:
            blocked = ssrf.find_blocked(exc)
            if blocked is not None:
                raise GraphError(f"the Graph API address is refused: {blocked}", BLOCKED_ADDRESS) from None
            raise GraphError(f"cannot reach the Graph API ({exc.__class__.__name__})", NETWORK_ERROR) from None
        if resp.status_code >= 400:
            exc = error_from_response(resp)
            log.warning("graph api %s %s -> %s (meta code %s, %s)", method, path.split("/")[-1], resp.status_code,
                        exc.meta_code, exc.rule.code, extra={"client_id": self.client.id})
            raise exc
        try:
            data = resp.json()
        except ValueError:
            raise GraphError("the Graph API answered with something that is not JSON", SERVER_ERROR) from None
        return data if isinstance(data, dict) else {}

    def lookup(self, message_id: str, attempted_at=None) -> Lookup | None:
        """Meta accepted ``message_id`` if its wamid was remembered; otherwise nobody can tell
        (the Cloud API has no lookup by our id): Meta's status callback will, since it carries our
        id back (``biz_opaque_callback_data``)."""
        known = self._already_sent(message_id)
        return Lookup(sent=True, external_id=known, status="sent") if known else None

    def _sent_key(self, message_id: str) -> str:
        return f"wa:cloud:sent:{self.client.id}:{message_id}"

    def _already_sent(self, message_id: str) -> str | None:
        """A resend of a message Meta already accepted (the worker died before recording it)
        returns the first wamid instead of sending twice. Best effort: Redis down -> send."""
        try:
            from app.kv import redis_client

            raw = redis_client().get(self._sent_key(message_id))
        except Exception:
            log.warning("cannot check for an earlier send", exc_info=True)
            return None
        return raw.decode() if raw else None

    def _remember_sent(self, message_id: str, wamid: str) -> None:
        try:
            from app.kv import redis_client

            redis_client().set(self._sent_key(message_id), wamid, ex=SENT_TTL_S)
        except Exception:
            log.warning("cannot record a send for resend protection", exc_info=True)
