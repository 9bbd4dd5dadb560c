"""The ``web`` transport: WhatsApp Web driven by Playwright in Chromium.

One browser per session-host process (``BrowserRuntime``: an asyncio loop thread that owns
Playwright and Chromium), one browser context per account (``WebTransport``), with a stable
per-account profile (user agent, viewport, locale, timezone) and the account's proxy. Worker
threads call the transport's blocking methods; each one runs as a coroutine on the runtime's loop,
so many accounts share one browser without sharing a thread.

What the page shows reaches the driver through a page hook (``web_selectors.hooks_script``: a
MutationObserver calling an exposed binding): the QR code and its rotations, the chat list (logged
in), ticks (acks), incoming messages, unread chats, the ban screen. Reports go to the EventSink on
one report thread per runtime, in order, so the browser loop never waits on Redis. The login state
(Playwright storage state including IndexedDB) is reported at login, periodically and at stop;
``start(state)`` restores it, so neither a restart nor another host needs a new QR code.

Every selector and page script lives in ``web_selectors.py`` (versioned): a WhatsApp Web change is
a one-file fix. docs/web-transport.md describes the whole flow and its limits.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import re
import threading
import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from app.transports import web_selectors as wa
from app.transports.base import (
    ClientInfo,
    EventSink,
    InboundMessage,
    OutboundMessage,
    PermanentSendError,
    SendResult,
    TransientSendError,
    Transport,
)
from config import settings

log = logging.getLogger(__name__)

LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")

#: the typing indicator: one key every 60-100 ms (drawn per key); the draw stays this far below the
#: top for the scheduling slack of the loop
TYPING_MS_PER_CHAR = (60, 100)
KEY_ROUNDTRIP_MS = 3

BINDING = "__waEvent"
STATE_FORMAT = 1
ACK_RANK = {"sent": 1, "delivered": 2, "read": 3}
SEEN_LIMIT = 5000


# ----------------------------------------------------------------------------- per-account profile

_PLATFORMS = (("Windows NT 10.0; Win64; x64", "Win32"), ("Macintosh; Intel Mac OS X 10_15_7", "MacIntel"),
              ("X11; Linux x86_64", "Linux x86_64"))
_VIEWPORTS = ((1280, 720), (1280, 800), (1366, 768), (1440, 900), (1536, 864), (1600, 900), (1680, 1050),
              (1920, 1080))
_LOCALES = (("en-US", "America/New_York"), ("en-US", "America/Chicago"), ("en-US", "America/Los_Angeles"),
            ("en-GB", "Europe/London"), ("de-DE", "Europe/Berlin"), ("fr-FR", "Europe/Paris"),
            ("es-ES", "Europe/Madrid"), ("it-IT", "Europe/Rome"), ("pt-BR", "America/Sao_Paulo"),
            ("es-MX", "America/Mexico_City"), ("en-IN", "Asia/Kolkata"), ("id-ID", "Asia/Jakarta"))


@dataclass(frozen=True)
class BrowserProfile:
    """What one account's browser looks like; the same for the same client id on every host."""

    user_agent: str
    platform: str
    viewport: tuple[int, int]   # the page's window (a screen minus browser chrome, not maximised)
    screen: tuple[int, int]
    locale: str
    timezone: str

    def context_options(self) -> dict:
        (width, height), (screen_w, screen_h) = self.viewport, self.screen
        return {"user_agent": self.user_agent, "viewport": {"width": width, "height": height},
                "screen": {"width": screen_w, "height": screen_h}, "locale": self.locale,
                "timezone_id": self.timezone}


def profile_for(client: ClientInfo, browser_major: int) -> BrowserProfile:
    """Derived from the client id alone (a hash picks platform, viewport, locale and timezone);
    ``config.locale`` / ``config.timezone`` override the last two. The Chrome version in the
    user agent is the real browser's, so the profile never claims features the browser lacks."""
    digest = hashlib.sha256(f"wa-web-profile:{client.id}".encode()).digest()
    ua_platform, nav_platform = _PLATFORMS[digest[0] % len(_PLATFORMS)]
    screen = _VIEWPORTS[digest[1] % len(_VIEWPORTS)]
    viewport = (screen[0] - 2 * (digest[4] % 64), screen[1] - 80 - 2 * (digest[5] % 48))
    locale, tz = _LOCALES[int.from_bytes(digest[2:4], "big") % len(_LOCALES)]
    config = client.config or {}
    return BrowserProfile(
        user_agent=(f"Mozilla/5.0 ({ua_platform}) AppleWebKit/537.36 (KHTML, like Gecko) "
                    f"Chrome/{browser_major}.0.0.0 Safari/537.36"),
        platform=nav_platform, viewport=viewport, screen=screen,
        locale=str(config.get("locale") or locale), timezone=str(config.get("timezone") or tz))


class PermanentStartError(Exception):
    """The session cannot start with this configuration: retrying will not help."""


def proxy_options(client: ClientInfo) -> dict | None:
    """The account's proxy as Playwright's context ``proxy`` option."""
    proxy = client.proxy
    if proxy is None:
        return None
    if proxy.scheme.startswith("socks") and proxy.username:
        raise PermanentStartError("Chromium cannot use a SOCKS5 proxy with credentials; "
                                  "use an HTTP proxy or a SOCKS5 proxy without authentication")
    options = {"server": proxy.url(with_credentials=False)}
    if proxy.username:
        options["username"] = proxy.username
        options["password"] = proxy.password or ""
    return options


# ----------------------------------------------------------------------------- login state

def encode_state(storage_state: dict) -> bytes:
    return zlib.compress(json.dumps({"v": STATE_FORMAT, "selectors": wa.WA_WEB_SELECTORS_VERSION,
                                     "storage_state": storage_state}, separators=(",", ":")).encode())


def decode_state(state: bytes | None) -> dict | None:
    """The storage state saved by ``encode_state``; None (start without it) when unreadable."""
    if not state:
        return None
    try:
        data = json.loads(zlib.decompress(state))
        return data["storage_state"] if data.get("v") == STATE_FORMAT else None
    except (zlib.error, ValueError, KeyError, TypeError):
        log.warning("web: saved login state is unreadable; starting without it")
        return None


# ----------------------------------------------------------------------------- the browser of this process

class BrowserRuntime:
    """One asyncio loop thread owning Playwright and one Chromium; transports run coroutines on it.

    The browser is launched on first use and again after it died (the transports of a dead browser
    report ``disconnected``, and the clients' reconnects start them anew)."""

    def __init__(self, *, executable_path: str | None = None, headless: bool | None = None,
                 launch_args: tuple[str, ...] = LAUNCH_ARGS):
        self.executable_path = executable_path or settings.CHROMIUM_PATH
        self.headless = settings.WEB_HEADLESS if headless is None else headless
        self.launch_args = list(launch_args)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._playwright = None
        self._browser = None
        self._browser_lock: asyncio.Lock | None = None
        self._reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-reports")
        self.transports: set[WebTransport] = set()
        self.browser_version: str | None = None

    # -- the loop thread

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                self._thread = threading.Thread(target=run, name="web-browser-loop", daemon=True)
                self._thread.start()
                ready.wait()
                self._loop = loop
            return self._loop

    def run(self, coro, timeout: float | None = None):
        """Run ``coro`` on the loop and wait for its result (from any thread but the loop's)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure_loop())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def spawn(self, coro) -> None:
        """Run ``coro`` on the loop without waiting (from the loop itself or another thread)."""
        loop = self._ensure_loop()
        if _running_loop() is loop:
            loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, loop)

    def report(self, fn, *args, **kwargs) -> None:
        """Call a sink method on the report thread (in order, off the browser loop)."""

        def call() -> None:
            try:
                fn(*args, **kwargs)
            except Exception:
                log.exception("web: reporting %s failed", getattr(fn, "__name__", fn))

        self._reports.submit(call)

    def flush_reports(self, timeout: float = 10) -> None:
        """Wait until every report submitted so far has been made."""
        self._reports.submit(lambda: None).result(timeout)

    # -- the browser

    async def browser(self):
        if self._browser_lock is None:
            self._browser_lock = asyncio.Lock()
        async with self._browser_lock:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            if self._playwright is None:
                from playwright.async_api import async_playwright

                self._playwright = await async_playwright().start()
            browser = await self._playwright.chromium.launch(
                executable_path=self.executable_path, headless=self.headless, args=self.launch_args)
            browser.on("disconnected", lambda b: self._browser_gone(b))
            self._browser, self.browser_version = browser, browser.version
            log.info("web: Chromium %s launched (selectors %s)", browser.version, wa.WA_WEB_SELECTORS_VERSION)
            return browser

    @property
    def browser_major(self) -> int:
        match = re.match(r"(\d+)", self.browser_version or "")
        return int(match.group(1)) if match else 130

    def _browser_gone(self, browser) -> None:
        if browser is not self._browser:
            return
        self._browser = None
        for transport in list(self.transports):
            if transport.state != "closed":
                self.spawn(transport._lost("the browser exited"))

    def browser_running(self) -> bool:
        return self._browser is not None and self._browser.is_connected()

    def close(self, timeout: float = 30) -> None:
        """Close every context, the browser and Playwright; stop the loop thread."""
        if self._loop is None:
            self._reports.shutdown(wait=True)
            return

        async def shutdown() -> None:
            for transport in list(self.transports):
                await transport._close(save=False, reason=None)
            if self._browser is not None:
                browser, self._browser = self._browser, None
                try:
                    await browser.close()
                except Exception:
                    pass
            if self._playwright is not None:
                try:
                    await self._playwright.stop()
                except Exception:
                    pass
                self._playwright = None

        try:
            self.run(shutdown(), timeout)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(timeout)
            self._loop = None
            self._reports.shutdown(wait=True)


def _running_loop():
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_runtime: BrowserRuntime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()


def default_runtime() -> BrowserRuntime:
    """This process's runtime (one browser per session host), created on first use."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime, _runtime_pid = BrowserRuntime(), os.getpid()
        return _runtime


def close_default_runtime() -> None:
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None:
        runtime.close()


# ----------------------------------------------------------------------------- the transport

class WebTransport(Transport):
    """One WhatsApp account in a browser context of this process's Chromium.

    ``state``: new -> starting -> qr -> ready -> closed. ``on_closed(transport)`` is called (on the
    report thread) when the session ends by itself: logged out or banned from the phone side, QR
    never scanned, browser or page crashed; the session host then gives up its lease."""

    name = "web"
    stateful = True

    def __init__(self, client: ClientInfo, events: EventSink, *, runtime: BrowserRuntime | None = None,
                 on_closed=None, selectors: wa.WebSelectors = wa.SELECTORS):
        super().__init__(client, events)
        self.runtime = runtime or default_runtime()
        self.on_closed = on_closed
        self.sel = selectors
        self.base_url = settings.WEB_URL.rstrip("/")
        self.state = "new"
        self.phone = client.phone
        self.qr: str | None = None
        self.profile: BrowserProfile | None = None
        self._context = None
        self._page = None
        self._ui: asyncio.Lock | None = None
        self._ready: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None
        self._restored = False
        self._logging_out = False
        self._watchdog: asyncio.Task | None = None
        self._acks: OrderedDict[str, str] = OrderedDict()
        self._inbound: OrderedDict[str, bool] = OrderedDict()
        self._state_digest: str | None = None
        self._qr_deadline = 0.0
        self._closing = False
        self._ending = False

    # ------------------------------------------------------------------ the Transport interface (any thread)

    def start(self, state: bytes | None = None) -> None:
        self.runtime.run(self._start(state), timeout=settings.WEB_NAV_TIMEOUT + 30)

    def stop(self) -> None:
        """Close the context after saving the login state (the next start needs no QR)."""
        self.runtime.run(self._close(save=True, reason=None), timeout=settings.WEB_NAV_TIMEOUT + 30)

    def logout(self) -> None:
        self.runtime.run(self._logout(), timeout=2 * settings.WEB_NAV_TIMEOUT + 30)

    def send(self, message: OutboundMessage) -> SendResult:
        timeout = 3 * settings.WEB_NAV_TIMEOUT + settings.WEB_TYPING_MAX_MS / 1000 + 30
        return self.runtime.run(self._send(message), timeout=timeout)

    def close(self) -> None:
        """Close the context without saving or reporting anything (another host took the session)."""
        self.runtime.run(self._close(save=False, reason=None), timeout=60)

    def healthy(self) -> bool:
        return self.state in ("starting", "qr", "ready") and self._page is not None and not self._page.is_closed()

    # ------------------------------------------------------------------ for the session host

    def report_current(self) -> None:
        """Report the session's status again (a start request for a session already running)."""
        if self.state == "ready":
            self._report_status("ready", {"phone": self.phone} if self.phone else {})
        elif self.state == "qr" and self.qr:
            self._report_qr(self.qr)

    def wait_settled(self, timeout: float) -> str:
        """Wait until the page shows either the chat list or a QR code; returns ``state``."""

        async def wait() -> str:
            if self._settled is not None and self.state not in ("closed", "new"):
                try:
                    await asyncio.wait_for(self._settled.wait(), timeout)
                except TimeoutError:
                    pass
            return self.state

        return self.runtime.run(wait(), timeout=timeout + 5)

    # ------------------------------------------------------------------ lifecycle (on the loop)

    async def _start(self, state: bytes | None) -> None:
        if self._context is not None:
            return
        if self.state == "closed":
            raise RuntimeError("a closed web session cannot start again; build a new transport")
        self._ui, self._ready, self._settled = asyncio.Lock(), asyncio.Event(), asyncio.Event()
        proxy = proxy_options(self.client)
        browser = await self.runtime.browser()
        self.profile = profile_for(self.client, self.runtime.browser_major)
        options = self.profile.context_options()
        if proxy:
            options["proxy"] = proxy
        storage = decode_state(state)
        if storage:
            options["storage_state"] = storage
        self._restored = storage is not None
        context = await browser.new_context(**options)
        try:
            await context.expose_binding(BINDING, self._on_page_event)
            await context.add_init_script(wa.profile_script(self.profile.platform))
            await context.add_init_script(wa.hooks_script(self.sel, BINDING))
            page = await context.new_page()
        except Exception:
            await context.close()
            raise
        self._context, self._page, self.state = context, page, "starting"
        self.runtime.transports.add(self)
        page.on("crash", lambda _: self.runtime.spawn(self._lost("the page crashed")))
        self._qr_deadline = asyncio.get_running_loop().time() + settings.WEB_QR_TIMEOUT
        try:
            await page.goto(self.base_url, wait_until="domcontentloaded", timeout=settings.WEB_NAV_TIMEOUT * 1000)
        except Exception:
            await self._close(save=False, reason=None)
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _close(self, *, save: bool, reason: tuple[str, dict] | None) -> None:
        """Close the context; ``reason`` (status, detail) is reported, and the host told, when the
        session ended by itself."""
        if self.state == "closed" or self._closing:
            return
        self._closing = True
        if save and self.state == "ready":
            try:
                await self._save_state(force=True)
            except Exception:
                log.warning("web %s: could not save the login state at close", self.client.id, exc_info=True)
        self.state = "closed"
        if self._ready is not None:
            self._ready.set()
            self._settled.set()
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        context, self._context, self._page = self._context, None, None
        self.runtime.transports.discard(self)
        if context is not None:
            try:
                await context.close()
            except Exception:
                pass
        if reason is not None:
            self._report_status(*reason)
            if self.on_closed is not None:
                self.runtime.report(self.on_closed, self)

    async def _lost(self, why: str) -> None:
        await self._close(save=False, reason=("disconnected", {"reason": why}))

    async def _logout(self) -> None:
        if self._page is None or self.state == "closed":
            return
        self._logging_out = True
        if self.state == "ready":
            async with self._ui:
                page, timeout = self._page, settings.WEB_NAV_TIMEOUT * 1000
                await page.locator(self.sel.menu_button).click(timeout=timeout)
                await page.locator(self.sel.logout_menu_item).click(timeout=timeout)
                await page.locator(self.sel.logout_confirm_button).click(timeout=timeout)
                await page.wait_for_selector(f"{self.sel.qr_container}, {self.sel.qr_reload_button}", timeout=timeout)
        await self._close(save=False, reason=None)

    async def _watch(self) -> None:
        """Once a second: give up a QR nobody scans; save the login state now and then."""
        loop = asyncio.get_running_loop()
        next_save = loop.time() + settings.WEB_STATE_SAVE_INTERVAL
        while self.state != "closed":
            await asyncio.sleep(1)
            now = loop.time()
            if self.state in ("starting", "qr") and now > self._qr_deadline:
                await self._close(save=False, reason=("failed", {"reason": "the QR code was not scanned in time"}))
                return
            if self.state == "ready" and now >= next_save:
                next_save = now + settings.WEB_STATE_SAVE_INTERVAL
                await self._save_state_logged()

    async def _save_state_logged(self) -> None:
        try:
            await self._save_state()
        except Exception as exc:
            if self.state != "closed":
                log.warning("web %s: could not save the login state: %s", self.client.id, exc)

    async def _save_state(self, force: bool = False) -> None:
        if self._context is None:
            return
        storage = await self._context.storage_state(indexed_db=True)
        blob = encode_state(storage)
        digest = hashlib.sha256(blob).hexdigest()
        if force or digest != self._state_digest:
            self._state_digest = digest
            self.runtime.report(self.events.session_state, self.client, blob)

    # ------------------------------------------------------------------ what the page reports

    async def _on_page_event(self, source, kind: str, data: dict) -> None:
        page = source.get("page")
        if self.state == "closed" or self._ending or (page is not None and page is not self._page):
            return
        try:
            if kind == "screen":
                await self._on_screen(data.get("screen"), data.get("phone"))
            elif kind == "qr":
                if self.state in ("starting", "qr") and not self._logging_out:
                    self.state, self.qr = "qr", data.get("ref")
                    self._settled.set()
                    self._report_qr(self.qr)
            elif kind == "ack":
                self._on_ack(str(data.get("id")), str(data.get("status")))
            elif kind == "inbound":
                self.runtime.spawn(self._on_inbound(data))
            elif kind == "unread":
                self.runtime.spawn(self._open_unread())
        except Exception:
            log.exception("web %s: page event %s failed", self.client.id, kind)

    async def _on_screen(self, screen: str | None, phone: str | None) -> None:
        if screen == "chats":
            if phone:
                self.phone = phone
            if self.state != "ready":
                self.state, self.qr = "ready", None
                self._ready.set()
                self._settled.set()
                self._report_status("ready", {"phone": self.phone} if self.phone else {})
                self.runtime.spawn(self._save_state_logged())
        elif screen in ("qr", "qr_expired"):
            if self._logging_out:
                return
            if self.state == "ready":
                self._end("logged_out", "logged out from the phone")
            elif self.state == "starting" and self._restored:
                self._end("logged_out", "the saved login was not accepted (logged out from the phone)")
            elif screen == "qr_expired":
                self.runtime.spawn(self._reload_qr())
        elif screen == "banned":
            self._end("banned", "WhatsApp Web shows the ban screen")

    def _end(self, status: str, reason: str) -> None:
        """The session ended by itself: close it (in its own task, not inside the page's binding
        call) and report ``status``."""
        self._ending = True  # nothing the page shows from now on is reported
        self.runtime.spawn(self._close(save=False, reason=(status, {"reason": reason})))

    async def _reload_qr(self) -> None:
        if self._page is None or asyncio.get_running_loop().time() > self._qr_deadline:
            return
        try:
            await self._page.locator(self.sel.qr_reload_button).first.click(timeout=10_000)
        except Exception:
            log.info("web %s: could not click the QR reload button", self.client.id)

    def _on_ack(self, external_id: str, status: str) -> None:
        if status not in ACK_RANK and status != "failed":
            return
        previous = self._acks.get(external_id)
        if previous == status or (previous and ACK_RANK.get(status, 0) < ACK_RANK.get(previous, 0)):
            return
        _remember(self._acks, external_id, status)
        self.runtime.report(self.events.ack, self.client, external_id, status,
                            error={"code": "undelivered"} if status == "failed" else None,
                            at=datetime.now(UTC))

    async def _on_inbound(self, data: dict) -> None:
        external_id, chat = str(data.get("id") or ""), str(data.get("chat") or "")
        if not external_id or external_id in self._inbound:
            return
        _remember(self._inbound, external_id, True)
        match = re.fullmatch(r"(\d{6,15})@c\.us", chat)
        if not match:  # groups, broadcasts, channels: not part of the product
            return
        from_phone = "+" + match.group(1)
        name = data.get("name")
        if name and re.sub(r"[^\d]", "", name) == match.group(1):
            name = None
        text, media, kind = data.get("text"), None, "text"
        image = data.get("image")
        if image and self._page is not None:
            try:
                blob = await self._page.evaluate(wa.FETCH_BLOB_JS, image)
                if len(blob["data_b64"]) * 3 // 4 <= settings.MAX_UPLOAD_BYTES:
                    media = {"mime_type": blob["mime"], "data_b64": blob["data_b64"], "caption": text or None}
                    kind, text = "image", None
            except Exception:
                log.warning("web %s: could not read an incoming image", self.client.id, exc_info=True)
        self.runtime.report(self.events.inbound, self.client, InboundMessage(
            external_id=external_id, from_phone=from_phone, type=kind, text=text, media=media,
            timestamp=datetime.now(UTC), contact_name=name))

    async def _open_unread(self) -> None:
        """Open each chat with an unread badge, so its new messages render (and get reported)."""
        if self.state != "ready":
            return
        async with self._ui:
            for _ in range(20):
                page = self._page
                if page is None:
                    return
                unread = await page.evaluate(wa.MARK_UNREAD_ROW_JS, [self.sel.chat_row, self.sel.unread_badge])
                if not unread:
                    return
                before = await page.evaluate(wa.CURRENT_CHAT_JS, [self.sel.message_row])
                await page.evaluate(wa.EXPECT_UNREAD_JS, unread)
                await page.locator(wa.UNREAD_ROW_MARK).first.click(timeout=10_000)
                try:
                    await page.wait_for_function(wa.CHAT_CHANGED_JS, arg=[self.sel.message_row, before],
                                                 timeout=10_000)
                except Exception:
                    log.info("web %s: an unread chat did not open", self.client.id)
                    return

    # ------------------------------------------------------------------ sending

    async def _send(self, message: OutboundMessage) -> SendResult:
        if self.state in ("new", "closed") or self._page is None:
            raise TransientSendError("the web session is not running on this host", code="session_not_running")
        if self.state != "ready":
            try:
                await asyncio.wait_for(self._ready.wait(), settings.WEB_NAV_TIMEOUT)
            except TimeoutError:
                pass
            if self.state != "ready":
                raise TransientSendError(f"the web session is not ready ({self.state})", code="session_not_ready")
        digits = (message.to or "").lstrip("+")
        if not digits.isdigit():
            raise PermanentSendError(f"not a phone number: {message.to!r}", code="invalid_recipient")
        async with self._ui:
            page = self._page
            if page is None:
                raise TransientSendError("the web session closed", code="session_not_running")
            try:
                await self._open_chat(page, digits)
                before = await page.evaluate(wa.OUTGOING_IDS_JS, [self.sel.message_row])
                if message.type in ("text", "template"):
                    text = message.text if message.type == "text" else (message.template or {}).get("body")
                    if not text:
                        raise PermanentSendError("nothing to send: the message has no text", code="empty_message")
                    box = page.locator(self.sel.compose_box)
                    await box.click(timeout=settings.WEB_NAV_TIMEOUT * 1000)
                    await self._type(page, text)
                    await box.press("Enter")
                else:
                    await self._send_media(page, message)
                external_id = await self._new_outgoing_id(page, before)
            except (PermanentSendError, TransientSendError):
                raise
            except Exception as exc:
                if self.state == "closed":
                    raise TransientSendError("the web session closed while sending",
                                             code="session_not_running") from exc
                raise TransientSendError(f"WhatsApp Web did not take the message: {exc}"[:500],
                                         code="web_send_failed") from exc
        return SendResult(external_id=external_id, status="sent")

    async def _open_chat(self, page, digits: str) -> None:
        """Open the chat of ``digits`` through the "click to chat" URL, unless it is open already."""
        jid = f"{digits}@c.us"
        current = await page.evaluate(wa.CURRENT_CHAT_JS, [self.sel.message_row])
        if current == jid and await page.locator(self.sel.compose_box).count():
            return
        timeout = settings.WEB_NAV_TIMEOUT * 1000
        await page.goto(wa.open_chat_url(self.base_url, digits, self.sel), wait_until="domcontentloaded",
                        timeout=timeout)
        await page.wait_for_selector(f"{self.sel.compose_box}, {self.sel.invalid_number_popup}", timeout=timeout)
        popup = page.locator(self.sel.invalid_number_popup)
        if await popup.count():
            text = (await popup.first.inner_text()).strip()
            try:
                await page.locator(self.sel.popup_ok_button).first.click(timeout=5_000)
            except Exception:
                pass
            if self.sel.invalid_number_text in text.lower():
                raise PermanentSendError(f"+{digits} is not on WhatsApp", code="invalid_recipient",
                                         details={"page": text[:200]})
            raise TransientSendError(f"WhatsApp Web showed: {text[:200]}", code="web_popup")

    async def _type(self, page, text: str) -> None:
        """Type ``text`` into the focused box, one key every 60-100 ms (drawn per key), a new line
        with Shift+Enter. The driver paces the keys itself: the next key goes its delay after the
        previous one started, so the key's own round trip to the browser is not added on top. Once
        WEB_TYPING_MAX_MS of typing is spent, the rest is inserted at once, like a paste."""
        loop = asyncio.get_running_loop()
        low, high = TYPING_MS_PER_CHAR
        budget_ms = max(0, settings.WEB_TYPING_MAX_MS)
        next_at = loop.time()
        for i, line in enumerate(text.split("\n")):
            keys = (["Shift+Enter"] if i else []) + list(line)
            for n, key in enumerate(keys):
                delay_ms = random.uniform(low, high - KEY_ROUNDTRIP_MS)
                if budget_ms < delay_ms:
                    rest = "".join(k for k in keys[n:] if k != "Shift+Enter")
                    if key == "Shift+Enter":
                        await page.keyboard.press(key)
                    if rest:
                        await page.keyboard.insert_text(rest)
                    break
                await asyncio.sleep(max(0.0, next_at - loop.time()))  # the typing indicator's pace
                started = loop.time()
                if key == "Shift+Enter":
                    await page.keyboard.press(key)
                else:
                    await page.keyboard.type(key)
                next_at = started + delay_ms / 1000
                budget_ms -= delay_ms
        await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _send_media(self, page, message: OutboundMessage) -> None:
        media = message.media
        if media is None or not media.path or not os.path.isfile(media.path):
            raise PermanentSendError("the media file is not available to the session host", code="media_unavailable")
        with open(media.path, "rb") as fh:
            payload = {"name": media.filename or os.path.basename(media.path), "mimeType": media.mime_type,
                       "buffer": fh.read()}
        timeout = settings.WEB_NAV_TIMEOUT * 1000
        await page.locator(self.sel.attach_button).click(timeout=timeout)
        as_media = message.type in ("image", "video") and media.mime_type.startswith(wa.MEDIA_INPUT_TYPES)
        selector = self.sel.attach_media_input if as_media else self.sel.attach_document_input
        file_input = page.locator(selector).first
        await file_input.wait_for(state="attached", timeout=timeout)
        await file_input.set_input_files(payload)
        caption = page.locator(self.sel.caption_box)
        await caption.wait_for(timeout=timeout)
        if message.caption:
            await caption.click()
            await self._type(page, message.caption)
        await page.locator(self.sel.media_send_button).click(timeout=timeout)

    async def _new_outgoing_id(self, page, before: list[str]) -> str:
        handle = await page.wait_for_function(wa.NEW_OUTGOING_ID_JS, arg=[self.sel.message_row, before],
                                              timeout=settings.WEB_NAV_TIMEOUT * 1000)
        return str(await handle.json_value())

    # ------------------------------------------------------------------ reports

    def _report_status(self, status: str, detail: dict) -> None:
        self.runtime.report(self.events.status, self.client, status, detail)

    def _report_qr(self, ref: str) -> None:
        expires = datetime.now(UTC) + timedelta(seconds=self.sel.qr_lifetime_s)
        self._report_status("qr", {"qr": ref, "expires_at": expires.isoformat()})


def stop_all(transports, timeout: float | None = None) -> None:
    """Save the login of many sessions and close them, all at once (a session host shutting down)."""
    groups: dict[int, tuple[BrowserRuntime, list[WebTransport]]] = {}
    for transport in transports:
        groups.setdefault(id(transport.runtime), (transport.runtime, []))[1].append(transport)

    async def close(group: list[WebTransport]) -> None:
        await asyncio.gather(*(t._close(save=True, reason=None) for t in group), return_exceptions=True)

    for runtime, group in groups.values():
        runtime.run(close(group), timeout or settings.WEB_NAV_TIMEOUT + 30)


def _remember(seen: OrderedDict, key: str, value) -> None:
    seen[key] = value
    seen.move_to_end(key)
    while len(seen) > SEEN_LIMIT:
        seen.popitem(last=False)

