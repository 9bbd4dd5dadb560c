"""The ``web`` transport: WhatsApp Web driven by Playwright in Chromium.

One browser per session-host process (``BrowserRuntime``, app/transports/web_browser.py), one
browser context per account (``WebTransport``, here), with a stable
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

Size: ``WebTransport`` is one account's whole conversation with the page (login, QR rotation,
sends with their typing, acks, inbound, the login state, closing); split, its steps would share
every piece of its state.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import re
from collections import OrderedDict
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
from app.transports.web_browser import (
    BrowserProfile,
    BrowserRuntime,
    decode_state,
    default_runtime,
    encode_state,
    profile_for,
    proxy_options,
)
from config import settings

log = logging.getLogger(__name__)

#: the typing indicator: one key every 60-100 ms (drawn per key); the draw stays this far below the
#: top for the scheduling slack of the loop
TYPING_MS_PER_CHAR = (60, 100)
KEY_ROUNDTRIP_MS = 3

BINDING = "__waEvent"
ACK_RANK = {"sent": 1, "delivered": 2, "read": 3}
SEEN_LIMIT = 5000
#: the kinds of incoming media the page hook reports (``inbound`` event) and those with a caption
INBOUND_MEDIA = ("image", "sticker", "video", "audio", "voice", "document")
CAPTIONED = ("image", "video", "document")


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
        """Close the context after saving the login state (the next start needs no QR); the state
        has reached the sink when this returns, so whoever starts the session next has it."""
        self.runtime.run(self._close(save=True, reason=None), timeout=settings.WEB_NAV_TIMEOUT + 30)
        self.runtime.flush_reports()

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
        text, media, kind = data.get("text") or None, None, "text"
        found = data.get("media") if isinstance(data.get("media"), dict) else None
        if found and found.get("kind") in INBOUND_MEDIA and found.get("url") and self._page is not None:
            media = await self._read_media(self._page, found, text)
            if media is not None:
                kind, text = found["kind"], None
            elif not text:  # unreadable or too large: the platform still learns that something came
                text = f"[{found['kind']}]"
        self.runtime.report(self.events.inbound, self.client, InboundMessage(
            external_id=external_id, from_phone=from_phone, type=kind, text=text, media=media,
            timestamp=datetime.now(UTC), contact_name=name))

    async def _read_media(self, page, found: dict, caption: str | None) -> dict | None:
        """The bytes of an incoming media the page shows, as an InboundMessage's ``media``; None
        when they cannot be read or are over MAX_UPLOAD_BYTES. Only image, video and document
        carry a caption; a document keeps its file name."""
        try:
            blob = await page.evaluate(wa.FETCH_BLOB_JS, [found["url"], settings.MAX_UPLOAD_BYTES])
        except Exception:
            log.warning("web %s: could not read an incoming %s", self.client.id, found["kind"], exc_info=True)
            return None
        if not blob.get("data_b64"):
            log.info("web %s: an incoming %s of %s bytes is over the limit", self.client.id, found["kind"],
                     blob.get("size"))
            return None
        media = {"mime_type": blob["mime"], "data_b64": blob["data_b64"]}
        if found["kind"] == "document" and found.get("filename"):
            media["filename"] = str(found["filename"])
        if caption and found["kind"] in CAPTIONED:
            media["caption"] = caption
        return media

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
        budget_ms: float = max(0, settings.WEB_TYPING_MAX_MS)
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
        selector = self._attach_input(message.type, media.mime_type)
        with open(media.path, "rb") as fh:
            payload = {"name": media.filename or os.path.basename(media.path), "mimeType": media.mime_type,
                       "buffer": fh.read()}
        timeout = settings.WEB_NAV_TIMEOUT * 1000
        await page.locator(self.sel.attach_button).click(timeout=timeout)
        file_input = page.locator(selector).first
        await file_input.wait_for(state="attached", timeout=timeout)
        await file_input.set_input_files(payload)
        if selector == self.sel.attach_audio_input:
            switch = page.locator(self.sel.voice_note_switch).first
            await switch.wait_for(timeout=timeout)
            if (await switch.get_attribute("aria-checked") == "true") != (message.type == "voice"):
                await switch.click(timeout=timeout)
        elif selector != self.sel.attach_sticker_input:
            caption = page.locator(self.sel.caption_box)
            await caption.wait_for(timeout=timeout)
            if message.caption:
                await caption.click()
                await self._type(page, message.caption)
        await page.locator(self.sel.media_send_button).click(timeout=timeout)

    def _attach_input(self, kind: str, mime_type: str) -> str:
        """The attach menu's file input for a message: photos & videos, sticker, audio (a voice note
        too), or document for anything else (a type the page would not take as what it says)."""
        if kind in ("image", "video") and mime_type.startswith(wa.MEDIA_INPUT_TYPES):
            return self.sel.attach_media_input
        if kind == "sticker":
            if mime_type != wa.STICKER_MIME:
                raise PermanentSendError(f"a sticker must be {wa.STICKER_MIME}, not {mime_type}",
                                         code="invalid_request")
            return self.sel.attach_sticker_input
        if kind in ("audio", "voice") and mime_type.startswith(wa.AUDIO_INPUT_TYPES):
            return self.sel.attach_audio_input
        return self.sel.attach_document_input

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

