"""The browser side of the ``web`` transport: one Chromium per session-host process
(``BrowserRuntime``: an asyncio loop thread that owns Playwright and Chromium), the stable
per-account browser profile, the account's proxy, and the login state's encoding. The transport
itself (one account in a browser context) is app/transports/web.py.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from app.transports import web_selectors as wa
from app.transports.base import ClientInfo
from config import settings

log = logging.getLogger(__name__)

LAUNCH_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")
STATE_FORMAT = 1


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

class RuntimeTransport(Protocol):
    """What the runtime needs of the transports it runs (WebTransport): to end them."""

    state: str

    async def _lost(self, why: str) -> None: ...

    async def _close(self, *, save: bool, reason: tuple[str, dict] | None) -> None: ...


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
        self.transports: set[RuntimeTransport] = set()  # the WebTransports of this runtime
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
        """Wait until every report submitted so far has been made (at once on the report thread
        itself, where the earlier ones are done already)."""
        if threading.current_thread().name.startswith("web-reports"):
            return
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
