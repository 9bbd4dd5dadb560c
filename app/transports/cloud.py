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

Meta's errors and what each means here: app/transports/cloud_errors.py.
"""
from __future__ import annotations

import logging
import re
from typing import Any
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
from app.transports.cloud_errors import (
    BLOCKED_ADDRESS,
    NETWORK_ERROR,
    SERVER_ERROR,
    UNKNOWN_ERROR,
    ErrorRule,
    GraphError,
    error_from_response,
)
from app.transports.cloud_templates import template_components, template_definition
from config import settings

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
CONNECT_TIMEOUT_S = 5.0
DEFAULT_TIMEOUT_S = 20.0           # read timeout: Meta answers a send well within this
SENT_TTL_S = 7 * 24 * 3600         # how long a resend of one of our message ids is recognised
PHONE_FIELDS = "display_phone_number,verified_name,quality_rating"


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


def _is_meta_url(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host == "facebook.com" or host.endswith(".facebook.com"))


#: our media types -> Meta's message type (a voice note is an audio message with ``voice: true``)
MEDIA_TYPES = {"image": "image", "video": "video", "audio": "audio", "document": "document",
               "sticker": "sticker", "voice": "audio"}
#: the types Meta takes a caption for (it refuses one on audio and stickers)
CAPTIONED = ("image", "video", "document")
STICKER_MIME = "image/webp"


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
        payload: dict[str, Any] = {"messaging_product": "whatsapp", "recipient_type": "individual",
                                   "to": wa_number(message.to), "biz_opaque_callback_data": message.message_id}
        if message.type == "text":
            if not message.text:
                raise PermanentSendError("a text message needs text", code="invalid_request")
            payload.update(type="text", text={"preview_url": bool(self.client.config.get("preview_url")),
                                              "body": message.text})
        elif message.type in MEDIA_TYPES:
            if message.media is None:
                raise PermanentSendError(f"a {message.type} message needs media", code="invalid_request")
            if message.type == "sticker" and message.media.mime_type != STICKER_MIME:
                raise PermanentSendError(f"a sticker must be {STICKER_MIME}, not {message.media.mime_type}",
                                         code="invalid_request")
            kind = MEDIA_TYPES[message.type]
            obj = self._media_object(message.media, message.type)
            if message.caption and message.type in CAPTIONED:
                obj["caption"] = message.caption
            if message.type == "document" and message.media.filename:
                obj["filename"] = message.media.filename
            if message.type == "voice":
                obj["voice"] = True
            payload.update(type=kind, **{kind: obj})
        elif message.type == "template":
            tpl = message.template or {}
            if not tpl.get("name"):
                raise PermanentSendError("a template message needs the template's name", code="invalid_request")
            body = {"name": tpl["name"], "language": {"code": tpl.get("language") or "en"}}
            if tpl.get("header_media_ref") is not None:
                kind = tpl["header_media_ref"][0]
                tpl = {**tpl, "header_media": (kind, self._media_object(tpl["header_media_ref"][1], kind))}
            components = template_components(tpl, self.client.config.get("template_parameters"))
            if components:
                body["components"] = components
            payload.update(type="template", template=body)
        else:
            raise PermanentSendError(f"the cloud transport cannot send {message.type!r}",
                                     code="unsupported_message_type")
        return payload

    # --- templates (Meta's template manager, per WhatsApp Business Account)

    def _waba(self) -> str:
        waba = str(self.client.config.get("waba_id") or "")
        if not waba:
            raise GraphError("config.waba_id is missing: templates live in the WhatsApp Business Account",
                             ErrorRule(False, "invalid_config"))
        return waba

    def submit_template(self, spec: dict) -> dict:
        """Submit a template for review (``POST /{waba_id}/message_templates``), or submit its new
        content when ``spec`` has Meta's ``meta_template_id`` (``POST /{template id}``). Returns
        ``{id, status}`` with Meta's status in lowercase."""
        definition = template_definition(spec)
        if spec.get("meta_template_id"):
            data = self._call("POST", str(spec["meta_template_id"]), json={"components": definition["components"]})
            return {"id": str(spec["meta_template_id"]), "status": "pending" if data.get("success", True) else "error"}
        data = self._call("POST", f"{self._waba()}/message_templates", json=definition)
        return {"id": str(data.get("id") or ""), "status": str(data.get("status") or "PENDING").lower()}

    def template_statuses(self) -> list[dict]:
        """Every template of the account: ``[{id, name, language, status, reason}]`` (status lowercase)."""
        found, path, params = [], f"{self._waba()}/message_templates", {
            "fields": "id,name,language,status,rejected_reason", "limit": "100"}
        for _ in range(100):  # pages of 100
            data = self._call("GET", path, params=params)
            for t in data.get("data") or []:
                reason = t.get("rejected_reason")
                found.append({"id": str(t.get("id") or ""), "name": t.get("name"), "language": t.get("language"),
                              "status": str(t.get("status") or "").lower(),
                              "reason": None if reason in (None, "NONE") else str(reason)})
            after = ((data.get("paging") or {}).get("cursors") or {}).get("after")
            if not after or not (data.get("paging") or {}).get("next"):
                break
            params = {**params, "after": after}
        return found

    def delete_template(self, name: str) -> None:
        """``DELETE /{waba_id}/message_templates?name=`` (every language of that name)."""
        self._call("DELETE", f"{self._waba()}/message_templates", params={"name": name})

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
            error = error_from_response(resp)
            log.warning("graph api %s %s -> %s (meta code %s, %s)", method, path.split("/")[-1], resp.status_code,
                        error.meta_code, error.rule.code, extra={"client_id": self.client.id})
            raise error
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
        return raw.decode() if raw else None  # type: ignore[union-attr]  # redis-py types replies bytes | str: ours are bytes

    def _remember_sent(self, message_id: str, wamid: str) -> None:
        try:
            from app.kv import redis_client

            redis_client().set(self._sent_key(message_id), wamid, ex=SENT_TTL_S)
        except Exception:
            log.warning("cannot record a send for resend protection", exc_info=True)
