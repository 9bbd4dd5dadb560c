"""The ``web`` transport end to end in real headless Chromium, against the fixture WhatsApp Web
(tests/fixtures/wa_web: the page and its fake servers on loopback). Every report goes to a
recording sink; the fake plays the phone and the contacts."""
from __future__ import annotations

import asyncio
import base64
import http.server
import selectors
import threading
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from app.transports import transport_class
from app.transports.base import ClientInfo, MediaRef, OutboundMessage, PermanentSendError, ProxyInfo
from app.transports.web import WebTransport
from app.transports.web_browser import BrowserRuntime, PermanentStartError, decode_state, profile_for, proxy_options
from app.transports.web_selectors import WA_WEB_SELECTORS_VERSION, hooks_script
from tests.fixtures.wa_web.sink import RecordingSink, start_and_scan

#: Chromium is heavy: the browser tests run one at a time, on one xdist worker (one module-wide browser)
pytestmark = pytest.mark.xdist_group("browser")

PHONE = "+15550100200"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
#: stand-ins for each kind of file (the page keeps the bytes as they are, it does not decode them)
WEBP = b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00"
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom video"
OGG = b"OggS\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00OpusHead voice note"
MP3 = b"ID3\x04\x00\x00\x00\x00\x00\x00 an mp3 song"
PDF = b"%PDF-1.4 an invoice"


@pytest.fixture(scope="module")
def runtime():
    rt = BrowserRuntime()
    yield rt
    rt.close()


@pytest.fixture
def open_transport(runtime):
    """``open_transport(client_id=..., proxy=..., rt=...)`` -> (transport, sink); all closed at the end."""
    opened = []

    def make(client_id: str | None = None, *, proxy: ProxyInfo | None = None, rt: BrowserRuntime | None = None,
             config: dict | None = None, on_closed=None):
        sink = RecordingSink()
        info = ClientInfo(id=client_id or f"cli_web_{len(opened)}_{id(sink)}", organization_id="org_test",
                          transport="web", config=config or {}, proxy=proxy)
        transport = WebTransport(info, sink, runtime=rt or runtime, on_closed=on_closed)
        opened.append(transport)
        return transport, sink

    yield make
    for transport in opened:
        if transport.state != "closed":
            transport.close()


def test_registry_gives_the_web_transport_as_stateful():
    cls = transport_class("web")
    assert cls is WebTransport and cls.stateful and cls.name == "web"
    script = hooks_script()
    assert "MutationObserver" in script and "data-ref" in script and "__SELECTORS__" not in script
    assert WA_WEB_SELECTORS_VERSION


# ----------------------------------------------------------------------------- profiles and proxies


def test_profile_is_stable_per_account_and_distinct_between_accounts():
    a = ClientInfo(id="cli_A", organization_id="o", transport="web")
    assert profile_for(a, 156) == profile_for(ClientInfo(id="cli_A", organization_id="x", transport="web"), 156)
    profiles = {profile_for(ClientInfo(id=f"cli_{i}", organization_id="o", transport="web"), 156) for i in range(40)}
    assert len(profiles) == 40
    assert len({p.user_agent for p in profiles}) > 1 and len({p.timezone for p in profiles}) > 3
    assert len({p.viewport for p in profiles}) > 3
    for p in profiles:
        assert "Chrome/156.0.0.0" in p.user_agent and "Headless" not in p.user_agent
    configured = profile_for(ClientInfo(id="cli_A", organization_id="o", transport="web",
                                        config={"locale": "nl-NL", "timezone": "Europe/Amsterdam"}), 156)
    assert (configured.locale, configured.timezone) == ("nl-NL", "Europe/Amsterdam")
    assert configured.user_agent == profile_for(a, 156).user_agent


def test_profile_is_what_the_page_sees(wa_web, open_transport):
    first, _ = open_transport("cli_profile_one")
    second, _ = open_transport("cli_profile_two")
    first.start()
    second.start()
    fake_hellos = lambda: len(wa_web.hellos) >= 2  # noqa: E731
    RecordingSink().wait(fake_hellos, 30, "both pages")
    seen = {tuple(h["viewport"]): h for h in wa_web.hellos}
    for transport in (first, second):
        profile = transport.profile
        page = seen[profile.viewport]
        assert page["ua"] == profile.user_agent
        assert page["timezone"] == profile.timezone
        assert page["language"] == profile.locale
        assert page["platform"] == profile.platform
    assert first.profile != second.profile


def test_proxy_option_carries_credentials():
    info = ClientInfo(id="c", organization_id="o", transport="web",
                      proxy=ProxyInfo(scheme="http", host="10.1.2.3", port=3128, username="u", password="p@ss"))
    assert proxy_options(info) == {"server": "http://10.1.2.3:3128", "username": "u", "password": "p@ss"}
    assert proxy_options(ClientInfo(id="c", organization_id="o", transport="web")) is None
    socks = ClientInfo(id="c", organization_id="o", transport="web",
                       proxy=ProxyInfo(scheme="socks5", host="10.1.2.3", port=1080))
    assert proxy_options(socks) == {"server": "socks5://10.1.2.3:1080"}
    with pytest.raises(PermanentStartError, match="SOCKS5"):
        proxy_options(ClientInfo(id="c", organization_id="o", transport="web",
                                 proxy=ProxyInfo(scheme="socks5", host="h", port=1080, username="u", password="p")))


class _ForwardingProxy:
    """An HTTP proxy on loopback that demands Basic credentials and forwards every request for
    the host name ``web.whatsapp.test`` to the fake (Chromium never proxies loopback names)."""

    def __init__(self, target_port: int, user: str, password: str):
        self.seen: list[tuple[str, str]] = []
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                if self.headers.get("Proxy-Authorization") != expected:
                    self.send_response(407)
                    self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.seen.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = self.path.split("web.whatsapp.test", 1)[1].split("/", 1)[1]
                ctype = self.headers.get("Content-Type") or "text/plain"
                request = urllib.request.Request(f"http://127.0.0.1:{target_port}/{path}", data=body,
                                                 method=self.command, headers={"Content-Type": ctype})
                with urllib.request.urlopen(request) as answer:
                    data = answer.read()
                    self.send_response(answer.status)
                    self.send_header("Content-Type", answer.headers.get("Content-Type"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            do_GET = do_POST = _forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_account_traffic_goes_through_its_proxy_with_credentials(wa_web, open_transport, override_settings):
    proxy = _ForwardingProxy(wa_web.port, "alice", "s3cret")
    try:
        override_settings(WEB_URL=f"http://web.whatsapp.test:{wa_web.port}")
        transport, sink = open_transport(proxy=ProxyInfo(scheme="http", host="127.0.0.1", port=proxy.port,
                                                         username="alice", password="s3cret"))
        start_and_scan(transport, sink, wa_web, PHONE)
        assert ("GET", f"http://web.whatsapp.test:{wa_web.port}/") in proxy.seen
        assert any(path.endswith("/api/poll") for _, path in proxy.seen)
    finally:
        proxy.stop()


# ----------------------------------------------------------------------------- QR and login


def test_qr_code_is_read_from_the_page_and_every_rotation_reported(wa_web, open_transport):
    wa_web.qr_rotate_s, wa_web.qr_max_rotations = 0.4, 3
    transport, sink = open_transport()
    transport.start()
    # three codes, then the page asks for a click to reload: the driver clicks and codes flow again
    sink.wait(lambda: len(set(sink.qrs())) >= 5, 45, "five QR codes")
    codes = sink.qrs()
    assert len(codes) == len(set(codes)), "a code was reported twice"
    assert all(c.startswith("2@") for c in codes)
    detail = sink.status_detail("qr")
    assert datetime.fromisoformat(detail["expires_at"]) > datetime.now(UTC)
    assert transport.state == "qr"
    with wa_web.lock:  # the code the page shows now (no rotation between reading and scanning it)
        wa_web.scan(wa_web.qr_refs()[0], PHONE)
    assert sink.wait_status("ready")["phone"] == PHONE


def test_scan_logs_in_reports_ready_with_the_phone_and_saves_the_login(wa_web, open_transport):
    transport, sink = open_transport()
    start_and_scan(transport, sink, wa_web, PHONE)
    assert sink.statuses()[-1] == "ready" and sink.status_detail("ready") == {"phone": PHONE}
    assert transport.state == "ready" and transport.phone == PHONE
    state = decode_state(sink.wait(lambda: sink.states(), 20, "a saved login state")[-1])
    origin = next(o for o in state["origins"] if o["origin"] == wa_web.url)
    assert origin["indexedDB"], "the login state lacks the page's IndexedDB"
    transport.stop()
    assert transport.state == "closed"
    assert len(sink.states()) >= 2, "stop saves the login state once more"


def test_login_survives_a_browser_restart_without_a_new_qr(wa_web, open_transport):
    transport, sink = open_transport("cli_persist")
    start_and_scan(transport, sink, wa_web, PHONE)
    sink.wait(lambda: sink.states(), 20, "a saved login state")
    transport.stop()
    saved = sink.states()[-1]
    devices = wa_web.linked_devices(PHONE)
    other_browser = BrowserRuntime()  # a new Chromium: as after a restart or on another host
    try:
        again, sink2 = open_transport("cli_persist", rt=other_browser)
        again.start(saved)
        assert sink2.wait_status("ready")["phone"] == PHONE
        assert "qr" not in sink2.statuses()
        assert wa_web.linked_devices(PHONE) == devices, "the same linked device, not a new link"
        again.stop()
    finally:
        other_browser.close()


def test_a_saved_login_the_phone_revoked_reports_logged_out(wa_web, open_transport):
    transport, sink = open_transport("cli_revoked")
    start_and_scan(transport, sink, wa_web, PHONE)
    sink.wait(lambda: sink.states(), 20, "a saved login state")
    transport.stop()
    wa_web.logout(PHONE)  # "log out all devices" while the session was stopped
    closed = []
    again, sink2 = open_transport("cli_revoked", on_closed=closed.append)
    again.start(sink.states()[-1])
    detail = sink2.wait_status("logged_out")
    assert "saved login" in detail["reason"]
    sink2.wait(lambda: closed, 10, "the host to be told")
    assert again.state == "closed" and sink2.statuses() == ["logged_out"]


def test_qr_not_scanned_in_time_fails_the_session(wa_web, open_transport, override_settings):
    override_settings(WEB_QR_TIMEOUT=2)
    closed = []
    transport, sink = open_transport(on_closed=closed.append)
    transport.start()
    assert "not scanned" in sink.wait_status("failed", 30)["reason"]
    sink.wait(lambda: closed == [transport], 10, "the host to be told")
    assert transport.state == "closed"


# ----------------------------------------------------------------------------- sending


@pytest.fixture
def ready_transport(wa_web, open_transport):
    """A web transport logged in (its QR code scanned) and its sink."""
    transport, sink = open_transport()
    start_and_scan(transport, sink, wa_web, PHONE)
    return transport, sink


def _text(to: str, text: str, message_id: str = "msg_test") -> OutboundMessage:
    return OutboundMessage(message_id=message_id, to=to, type="text", text=text)


def test_send_text_types_it_at_60_to_100_ms_per_character(wa_web, ready_transport, monkeypatch):
    """What the page saw: every character as a key press of its own, in order, at a pace drawn
    per key between 60 and 100 ms. (The pace itself is the driver's: checked on a test clock by
    the next test, since a loaded machine delays keys on their way to the page.)"""
    transport, _ = ready_transport
    import app.transports.web as web

    drawn: list[float] = []  # the pace the driver chose for each key

    class Recording(web.random.Random):
        def uniform(self, a, b):
            drawn.append(value := super().uniform(a, b))
            return value

    monkeypatch.setattr(web, "random", Recording())
    text = "Hello from the web transport"
    result = transport.send(_text("+15550999001", text))
    sent = wa_web.wait_sent(PHONE, 1)[-1]
    assert (sent.text, sent.chat, sent.id) == (text, "15550999001@c.us", result.external_id)
    assert result.status == "sent"
    stamps = sent.typing  # the page's time of each typed character
    assert len(stamps) == len(text), "typed key by key, not pasted"
    assert stamps == sorted(stamps)
    assert len(drawn) == len(text) and all(60 <= d <= 100 for d in drawn), drawn

    # a second message to the same chat: typed again, new lines kept, its own id
    second = transport.send(_text("+15550999001", "line one\nline two", "msg_2"))
    again = wa_web.wait_sent(PHONE, 2)[-1]
    assert again.text == "line one\nline two"
    assert second.external_id != result.external_id and again.id == second.external_id


class _VirtualClock(selectors.DefaultSelector):
    """An event loop's selector whose waits take no time: a timer's wait moves ``now`` instead."""

    def __init__(self):
        super().__init__()
        self.now = 0.0

    def select(self, timeout=None):
        if timeout:
            self.now += timeout
        return super().select(0)


class _VirtualLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a test clock: ``asyncio.sleep`` and ``loop.time()`` follow ``_VirtualClock``."""

    def __init__(self):
        self.clock = _VirtualClock()
        super().__init__(self.clock)

    def time(self) -> float:
        return self.clock.now


def test_the_driver_keeps_the_pace_whatever_a_key_costs(monkeypatch):
    """On a test clock: each key starts its drawn delay after the previous key started (its round
    trip to the browser is not added on top), and never sooner, also when a round trip takes
    longer than the pace (a loaded machine): then the next key simply follows."""
    import app.transports.web as web

    drawn: list[float] = []

    class Recording(web.random.Random):
        def uniform(self, a, b):
            drawn.append(value := super().uniform(a, b))
            return value

    monkeypatch.setattr(web, "random", Recording(11))
    loop = _VirtualLoop()
    round_trips = [0.004, 0.003, 0.250, 0.002, 0.090, 0.001, 0.180, 0.003] * 4
    pressed: list[tuple[str, float, float]] = []  # (key, started, its round trip)

    class Keyboard:
        async def type(self, key):
            pressed.append((key, loop.time(), rt := round_trips[len(pressed)]))
            await asyncio.sleep(rt)

        press = type

        async def insert_text(self, text):
            raise AssertionError("nothing is pasted within the typing budget")

    text = "Hi there\nsee you"
    try:
        loop.run_until_complete(web.WebTransport._type(None, SimpleNamespace(keyboard=Keyboard()), text))
    finally:
        loop.close()
    assert "".join("\n" if k == "Shift+Enter" else k for k, _, _ in pressed) == text
    assert len(drawn) == len(pressed) and all(60 <= d <= 100 for d in drawn)
    for (_, started, rt), (_, following, _), delay_ms in zip(pressed, pressed[1:], drawn):
        assert following - started == pytest.approx(max(delay_ms / 1000, rt))
    assert loop.clock.now == pytest.approx(pressed[-1][1] + max(drawn[-1] / 1000, round_trips[len(pressed) - 1]))


def test_long_text_types_within_the_budget_and_pastes_the_rest(wa_web, ready_transport, override_settings):
    transport, _ = ready_transport
    override_settings(WEB_TYPING_MAX_MS=600)
    text = "x" * 40 + " and the rest is pasted"
    transport.send(_text("+15550999002", text))
    sent = wa_web.wait_sent(PHONE, 1)[-1]
    assert sent.text == text
    assert 6 <= len(sent.typing) <= 11, "only ~600 ms worth of characters are typed"


def test_send_media_uploads_the_file_with_its_caption(wa_web, ready_transport, tmp_path):
    transport, _ = ready_transport
    image = tmp_path / "stored-file"
    image.write_bytes(PNG)
    ref = MediaRef(media_id="med_1", mime_type="image/png", filename="photo.png", path=str(image), size=len(PNG))
    result = transport.send(OutboundMessage(message_id="msg_img", to="+15550999003", type="image", media=ref,
                                            caption="Look at this"))
    sent = wa_web.wait_sent(PHONE, 1)[-1]
    assert sent.id == result.external_id and sent.caption == "Look at this"
    assert sent.media["name"] == "photo.png" and sent.media["mime"] == "image/png"
    assert base64.b64decode(sent.media["data_b64"]) == PNG
    assert len(sent.typing) == len("Look at this"), "the caption is typed too"

    doc = tmp_path / "report"
    doc.write_bytes(b"%PDF-1.4 test")
    transport.send(OutboundMessage(message_id="msg_doc", to="+15550999003", type="document",
                                   media=MediaRef(media_id="med_2", mime_type="application/pdf",
                                                  filename="report.pdf", path=str(doc))))
    sent = wa_web.wait_sent(PHONE, 2)[-1]
    assert sent.media["name"] == "report.pdf" and base64.b64decode(sent.media["data_b64"]) == b"%PDF-1.4 test"
    assert sent.caption is None

    with pytest.raises(PermanentSendError) as err:
        missing = MediaRef(media_id="m", mime_type="image/png", path=str(tmp_path / "nope"))
        transport.send(OutboundMessage(message_id="msg_gone", to="+15550999003", type="image", media=missing))
    assert err.value.code == "media_unavailable"


def test_every_media_kind_goes_through_its_attach_input(wa_web, ready_transport, tmp_path):
    """What the page got for each type: the attach input it came through (photos & videos,
    sticker, audio with or without the voice-note mark, document), the file's name and bytes, and
    a caption only where WhatsApp has one."""
    transport, _ = ready_transport
    sends = [  # type, mime, file name, bytes, caption
        ("video", "video/mp4", "tour.mp4", MP4, "The tour"),
        ("sticker", "image/webp", "smile.webp", WEBP, "no caption on a sticker"),
        ("voice", "audio/ogg; codecs=opus", "note.ogg", OGG, "no caption on a voice note"),
        ("audio", "audio/mpeg", "song.mp3", MP3, None),
        ("document", "application/pdf", "invoice-42.pdf", PDF, "Your invoice"),
        ("image", "application/octet-stream", "raw.bin", b"not a picture", None),  # not an image: a document
    ]
    for n, (kind, mime, name, data, caption) in enumerate(sends):
        stored = tmp_path / f"stored-{n}"
        stored.write_bytes(data)
        ref = MediaRef(media_id=f"med_{n}", mime_type=mime, filename=name, path=str(stored), size=len(data))
        result = transport.send(OutboundMessage(message_id=f"msg_{kind}_{n}", to="+15550999007", type=kind,
                                                media=ref, caption=caption))
        sent = wa_web.wait_sent(PHONE, n + 1)[-1]
        assert sent.id == result.external_id
    got = [(m.media["kind"], m.media["ptt"], m.media["name"], m.media["mime"], base64.b64decode(m.media["data_b64"]),
            m.caption) for m in wa_web.sent(PHONE)]
    assert got == [
        ("video", False, "tour.mp4", "video/mp4", MP4, "The tour"),
        ("sticker", False, "smile.webp", "image/webp", WEBP, None),
        ("audio", True, "note.ogg", "audio/ogg; codecs=opus", OGG, None),
        ("audio", False, "song.mp3", "audio/mpeg", MP3, None),
        ("document", False, "invoice-42.pdf", "application/pdf", PDF, "Your invoice"),
        ("document", False, "raw.bin", "application/octet-stream", b"not a picture", None),
    ]


def test_a_sticker_that_is_not_webp_fails_permanently(wa_web, ready_transport, tmp_path):
    transport, _ = ready_transport
    png = tmp_path / "stored"
    png.write_bytes(PNG)
    with pytest.raises(PermanentSendError) as err:
        transport.send(OutboundMessage(message_id="msg_stk", to="+15550999008", type="sticker",
                                       media=MediaRef(media_id="med_png", mime_type="image/png", path=str(png))))
    assert err.value.code == "invalid_request" and "image/webp" in str(err.value)
    assert wa_web.sent(PHONE) == []


def test_a_number_not_on_whatsapp_fails_permanently(wa_web, ready_transport):
    transport, _ = ready_transport
    with pytest.raises(PermanentSendError) as err:
        transport.send(_text("+9991234567", "hello?"))
    assert err.value.code == "invalid_recipient"
    assert wa_web.sent(PHONE) == []
    # the session goes on
    assert transport.send(_text("+15550999004", "ok")).external_id


def test_ticks_become_acks_sent_delivered_read(wa_web, ready_transport):
    transport, sink = ready_transport
    external_id = transport.send(_text("+15550999005", "tick tock")).external_id
    sink.wait(lambda: sink.acks(external_id) == ["sent"], 20, "the sent tick")
    wa_web.ack(external_id, "delivered")
    sink.wait(lambda: sink.acks(external_id)[-1:] == ["delivered"], 20, "the delivered ticks")
    wa_web.ack(external_id, "read")
    sink.wait(lambda: sink.acks(external_id)[-1:] == ["read"], 20, "the read ticks")
    assert sink.acks(external_id) == ["sent", "delivered", "read"]


def test_inbound_messages_are_reported(wa_web, ready_transport):
    transport, sink = ready_transport
    # a contact whose chat is not open: the unread badge makes the driver open it
    first = wa_web.inbound(PHONE, "+15550888001", "Hi there", name="Bob")
    sink.wait(lambda: sink.inbound_messages(), 30, "the first inbound message")
    msg = sink.inbound_messages()[0]
    assert (msg.external_id, msg.from_phone, msg.type, msg.text, msg.contact_name) == (
        first, "+15550888001", "text", "Hi there", "Bob")

    # in the chat that is open now
    second = wa_web.inbound(PHONE, "+15550888001", "Are you there?")
    sink.wait(lambda: len(sink.inbound_messages()) == 2, 30, "the second inbound message")
    assert sink.inbound_messages()[1].external_id == second and sink.inbound_messages()[1].text == "Are you there?"

    # an image with a caption from a third chat
    third = wa_web.inbound(PHONE, "+15550888002", image=PNG, caption="a dot")
    sink.wait(lambda: len(sink.inbound_messages()) == 3, 30, "the image")
    image = sink.inbound_messages()[2]
    assert image.external_id == third and image.type == "image" and image.from_phone == "+15550888002"
    assert base64.b64decode(image.media["data_b64"]) == PNG and image.media["mime_type"] == "image/png"
    assert image.media["caption"] == "a dot"
    # sending to a chat shows its history again: nothing is reported twice
    transport.send(_text("+15550888001", "yes"))
    assert len(sink.inbound_messages()) == 3


def test_inbound_media_of_every_kind_is_reported_with_its_bytes(wa_web, ready_transport):
    _, sink = ready_transport
    contact = "+15550888004"
    sends = [  # kind on the page, mime, file name, bytes, caption
        ("sticker", "image/webp", None, WEBP, None),
        ("ptt", "audio/ogg; codecs=opus", None, OGG, None),
        ("audio", "audio/mpeg", None, MP3, None),
        ("video", "video/mp4", None, MP4, "look at this"),
        ("document", "application/pdf", "invoice-42.pdf", PDF, "the invoice"),
    ]
    ids = []
    for n, (kind, mime, filename, data, caption) in enumerate(sends):
        ids.append(wa_web.inbound(PHONE, contact, media=data, kind=kind, mime=mime, filename=filename,
                                  caption=caption))
        sink.wait(lambda: len(sink.inbound_messages()) == n + 1, 30, f"the inbound {kind}")
    got = sink.inbound_messages()
    assert [m.external_id for m in got] == ids and {m.from_phone for m in got} == {contact}
    assert [(m.type, m.text) for m in got] == [("sticker", None), ("voice", None), ("audio", None),
                                               ("video", None), ("document", None)]
    assert [m.media for m in got] == [
        {"mime_type": "image/webp", "data_b64": base64.b64encode(WEBP).decode()},
        {"mime_type": "audio/ogg; codecs=opus", "data_b64": base64.b64encode(OGG).decode()},
        {"mime_type": "audio/mpeg", "data_b64": base64.b64encode(MP3).decode()},
        {"mime_type": "video/mp4", "data_b64": base64.b64encode(MP4).decode(), "caption": "look at this"},
        {"mime_type": "application/pdf", "data_b64": base64.b64encode(PDF).decode(), "filename": "invoice-42.pdf",
         "caption": "the invoice"},
    ]


def test_inbound_media_over_the_size_limit_arrives_as_a_placeholder(wa_web, ready_transport, override_settings):
    _, sink = ready_transport
    override_settings(MAX_UPLOAD_BYTES=len(MP4) - 1)
    wa_web.inbound(PHONE, "+15550888005", media=MP4, kind="video", mime="video/mp4")
    sink.wait(lambda: sink.inbound_messages(), 30, "the inbound video")
    (msg,) = sink.inbound_messages()
    assert (msg.type, msg.text, msg.media) == ("text", "[video]", None)


def test_chat_history_is_not_reported_as_new_messages(wa_web, open_transport):
    transport, sink = open_transport("cli_history")
    start_and_scan(transport, sink, wa_web, PHONE)
    sink.wait(lambda: sink.states(), 20, "a saved login state")
    for text in ("one", "two"):
        wa_web.inbound(PHONE, "+15550888003", text)
        sink.wait(lambda: text in [m.text for m in sink.inbound_messages()], 30, f"message {text!r}")
    transport.stop()
    # a new session of the account (a restart, another host): the chat it opens shows the history
    again, sink2 = open_transport("cli_history")
    again.start(sink.states()[-1])
    sink2.wait_status("ready")
    again.send(_text("+15550888003", "back again"))
    news = wa_web.inbound(PHONE, "+15550888003", "three")
    sink2.wait(lambda: sink2.inbound_messages(), 30, "the new message")
    assert [(m.external_id, m.text) for m in sink2.inbound_messages()] == [(news, "three")]


# ----------------------------------------------------------------------------- the end of a session


def test_logout_from_the_phone_reports_logged_out(wa_web, open_transport):
    closed = []
    transport, sink = open_transport(on_closed=closed.append)
    start_and_scan(transport, sink, wa_web, PHONE)
    wa_web.logout(PHONE)
    assert sink.wait_status("logged_out")["reason"] == "logged out from the phone"
    sink.wait(lambda: closed == [transport], 10, "the host to be told")
    assert transport.state == "closed"


def test_ban_screen_reports_banned(wa_web, open_transport):
    closed = []
    transport, sink = open_transport(on_closed=closed.append)
    start_and_scan(transport, sink, wa_web, PHONE)
    wa_web.ban(PHONE)
    assert "ban" in sink.wait_status("banned")["reason"]
    sink.wait(lambda: closed == [transport], 10, "the host to be told")
    assert transport.state == "closed"


def test_logout_unlinks_the_device_without_reporting_a_logout(wa_web, open_transport):
    transport, sink = open_transport()
    start_and_scan(transport, sink, wa_web, PHONE)
    assert wa_web.linked_devices(PHONE)
    transport.logout()
    assert wa_web.linked_devices(PHONE) == []
    assert transport.state == "closed"
    assert "logged_out" not in sink.statuses()


def test_a_dead_browser_disconnects_its_sessions(wa_web, open_transport):
    rt = BrowserRuntime()
    try:
        closed = []
        transport, sink = open_transport(rt=rt, on_closed=closed.append)
        start_and_scan(transport, sink, wa_web, PHONE)
        sink.wait(lambda: sink.states(), 20, "the login state")

        async def kill():
            browser = await rt.browser()
            await browser.close()

        rt.run(kill(), 30)
        assert sink.wait_status("disconnected")["reason"] == "the browser exited"
        sink.wait(lambda: closed == [transport], 10, "the host to be told")
        # the next start launches a new browser
        again, sink2 = open_transport(transport.client.id, rt=rt)
        again.start(sink.states()[-1])
        sink2.wait_status("ready")
    finally:
        rt.close()


def test_send_without_a_running_session_is_transient(open_transport):
    from app.transports.base import TransientSendError

    transport, _ = open_transport()
    with pytest.raises(TransientSendError) as err:
        transport.send(_text("+15550999006", "nobody home"))
    assert err.value.code == "session_not_running"

