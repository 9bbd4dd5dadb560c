"""Media through the transports, end to end in this process: a file uploaded with ``POST
/api/media``, processed by the ``media.process`` job's function (in the test's transaction, like
tests/contacts/test_imports.py runs its importer), sent with ``POST /api/messages`` and the
``messages.send`` job's function, and what the other side got: the fake Graph API (cloud: an
upload then the message by id, or the message by a signed link when ``PUBLIC_URL`` is set), the
fixture WhatsApp Web page (web: a sticker and a voice note) and the simulated network (sim). And
the way back: a signed Meta callback with an image, the inbox applied, the medium fetched from
the fake Graph API and processed, and ``message.received`` announcing it once with its link.

Each test has its own organisation and client (the ``session`` fixture's transaction, rolled back).
"""
from __future__ import annotations

import base64
import hashlib
import io
import struct
from urllib.parse import urlsplit

import pytest
from PIL import Image
from sqlalchemy import select, text

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.inbox.apply import apply_due
from app.media import fetching, processing
from app.models import Media, Message, WebhookEvent
from app.security.crypto import encrypt_json
from tests import factories as f
from tests.fake_graph import FakeGraph
from tests.transports.test_cloud import APP_SECRET, VERIFY_TOKEN, change, signed_post

BUSINESS_PHONE = "+15550783881"
TO = "+14155550123"


# ----------------------------------------------------------------------------------- files


def png_bytes(size=(24, 16)) -> bytes:
    image = Image.new("RGB", size)
    image.putdata([(x * 10 % 256, y * 15 % 256, 128) for y in range(size[1]) for x in range(size[0])])
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def jpeg_with_exif() -> bytes:
    """A JPEG carrying the camera's make and model and where it was taken (GPS)."""
    image = Image.new("RGB", (40, 30), (30, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "SnoopCam"        # Make
    exif[0x0110] = "Tracker 3000"    # Model
    exif[0x8825] = {1: "N", 2: (38.0, 42.0, 51.0), 3: "W", 4: (9.0, 8.0, 22.0)}  # GPS IFD
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, quality=90)
    content = out.getvalue()
    assert Image.open(io.BytesIO(content)).getexif().get_ifd(0x8825), "the test file itself carries GPS"
    return content


def webp_sticker() -> bytes:
    image = Image.new("RGBA", (512, 512), (255, 200, 0, 255))
    out = io.BytesIO()
    image.save(out, format="WEBP")
    return out.getvalue()


def _ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, seq: int, granule: int, flags: int, serial: int = 0x5EED) -> bytes:
    lacing = b""
    for packet in packets:
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, seq, 0, len(lacing)) + lacing
    page = header + b"".join(packets)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


def ogg_opus_voice_note(frames: int = 50) -> bytes:
    """An Ogg Opus file of ``frames`` 20 ms silent frames (one second): OpusHead, OpusTags, audio."""
    pre_skip = 312
    head = b"OpusHead" + struct.pack("<BBHIhB", 1, 1, pre_skip, 48000, 0, 0)
    vendor = b"whatsapp-service tests"
    tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
    silence = b"\xf8\xff\xfe"  # TOC: CELT-only fullband 20 ms, mono, one frame; then a silent frame
    return (_ogg_page([head], seq=0, granule=0, flags=0x02)
            + _ogg_page([tags], seq=1, granule=0, flags=0x00)
            + _ogg_page([silence] * frames, seq=2, granule=pre_skip + frames * 960, flags=0x04))


PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


# ----------------------------------------------------------------------------------- API helpers


def upload(client, headers, content: bytes, filename: str, **form):
    data = {**form, "file": (io.BytesIO(content), filename)}  # form fields before the file
    return client.post("/api/media", data=data, headers=headers, content_type="multipart/form-data")


def ready_medium(client, headers, content: bytes, filename: str, **form) -> dict:
    """Upload a file, run its ``media.process`` job, and the medium as the API shows it."""
    r = upload(client, headers, content, filename, **form)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["status"] == "processing"
    assert processing.process(r.get_json()["id"]) == "ready"
    medium = client.get(f"/api/media/{r.get_json()['id']}", headers=headers).get_json()
    assert medium["status"] == "ready", medium
    return medium


def queue_message(client, headers, client_id: str, **body) -> str:
    r = client.post("/api/messages", json={"client_id": client_id, "to": TO, **body}, headers=headers)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def send_now(client, headers, message_id: str) -> dict:
    """The message's ``messages.send`` job (sim, cloud: sent in the job), then the message."""
    from app.messages import dispatch

    assert dispatch.run_send_job(message_id) == "sent"
    return client.get(f"/api/messages/{message_id}", headers=headers).get_json()


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def received_events(session, message_id: str) -> list[WebhookEvent]:
    session.flush()
    return list(session.scalars(select(WebhookEvent).where(
        WebhookEvent.type == "message.received", text("payload->>'id' = :id").bindparams(id=message_id))))


# ----------------------------------------------------------------------------------- cloud


@pytest.fixture
def graph(allow_loopback):
    with FakeGraph() as g:
        yield g


@pytest.fixture
def cloud(session, org, graph):
    """A ready, unpaced cloud client of ``org`` on the fake Graph API, and a contact who wrote to
    it (free-form messages are within the customer service window)."""
    cli = f.make_client(session, organization_id=org.id, transport="cloud", status="ready", phone=BUSINESS_PHONE,
                        config={"phone_number_id": graph.phone_number_id, "base_url": graph.url, "pacing": False},
                        secrets_encrypted=encrypt_json({"access_token": graph.access_token, "app_secret": APP_SECRET,
                                                        "verify_token": VERIFY_TOKEN}))
    contact = f.make_contact(session, organization_id=org.id, phone=TO)
    f.make_message(session, organization_id=org.id, client_id=cli.id, contact_id=contact.id, direction="inbound",
                   status="received", from_phone=TO, to_phone=BUSINESS_PHONE)
    return cli


def media_uploads(graph):
    return [r for r in graph.requests if r.method == "POST" and r.path.endswith(f"/{graph.phone_number_id}/media")]


def test_cloud_uploads_the_png_to_meta_then_sends_the_image_by_its_id_with_the_caption(
        client, admin_headers, graph, cloud):
    content = png_bytes()
    medium = ready_medium(client, admin_headers, content, "menu.png")
    assert (medium["kind"], medium["mime_type"], medium["size"]) == ("image", "image/png", len(content))

    mid = queue_message(client, admin_headers, cloud.id, type="image", media_id=medium["id"], caption="Today's menu")
    sent = send_now(client, admin_headers, mid)
    assert sent["status"] == "sent" and sent["error"] is None

    (upload_req,) = media_uploads(graph)
    filename, file_type, uploaded = upload_req.files["file"]
    assert uploaded == content and file_type == "image/png" and upload_req.form["type"] == "image/png"
    assert upload_req.form["messaging_product"] == "whatsapp" and filename == "menu.png"
    (message_req,) = graph.sent_messages()
    assert graph.requests.index(upload_req) < graph.requests.index(message_req), "uploaded before the send"
    meta_id = next(k for k, (_, data) in graph.media.items() if data == content)
    assert message_req.json["type"] == "image" and message_req.json["to"] == TO.lstrip("+")
    assert message_req.json["image"] == {"id": meta_id, "caption": "Today's menu"}


def test_cloud_with_a_public_url_sends_a_signed_link_that_downloads_without_credentials(
        client, admin_headers, graph, cloud, override_settings):
    override_settings(PUBLIC_URL="http://wa.example.test")
    content = png_bytes((30, 20))
    medium = ready_medium(client, admin_headers, content, "menu.png")

    mid = queue_message(client, admin_headers, cloud.id, type="image", media_id=medium["id"], caption="By link")
    assert send_now(client, admin_headers, mid)["status"] == "sent"

    assert media_uploads(graph) == [], "nothing uploaded: Meta fetches the link"
    (message_req,) = graph.sent_messages()
    image = message_req.json["image"]
    assert set(image) == {"link", "caption"} and image["caption"] == "By link"
    link = urlsplit(image["link"])
    assert (link.scheme, link.netloc, link.path) == ("http", "wa.example.test",
                                                     f"/api/media/{medium['id']}/signed-download")
    assert link.query.startswith("token=")

    fetched = client.get(path_of(image["link"]))  # no credentials
    assert fetched.status_code == 200, fetched.get_data(as_text=True)
    assert fetched.get_data() == content and fetched.mimetype == "image/png"
    tampered = client.get(path_of(image["link"]).replace("token=", "token=x"))
    assert tampered.status_code == 403


def test_cloud_sends_a_copy_without_exif_and_the_original_is_kept(client, admin_headers, graph, cloud,
                                                                  override_settings):
    original = jpeg_with_exif()
    medium = ready_medium(client, admin_headers, original, "holiday.jpg")
    assert "exif" in medium["metadata"]["stripped"]

    mid = queue_message(client, admin_headers, cloud.id, type="image", media_id=medium["id"], caption="Beach")
    assert send_now(client, admin_headers, mid)["status"] == "sent"

    (upload_req,) = media_uploads(graph)
    _, file_type, uploaded = upload_req.files["file"]
    assert file_type == "image/jpeg" and uploaded != original
    at_meta = Image.open(io.BytesIO(uploaded))
    assert at_meta.format == "JPEG" and at_meta.size == (40, 30)
    assert dict(at_meta.getexif()) == {} and "exif" not in at_meta.info, "no camera, no GPS at Meta"
    meta_id = next(k for k, (_, data) in graph.media.items() if data == uploaded)
    assert graph.sent_messages()[0].json["image"] == {"id": meta_id, "caption": "Beach"}

    kept = client.get(f"/api/media/{medium['id']}/download", headers=admin_headers)
    assert kept.status_code == 200 and kept.get_data() == original
    sent_copy = client.get(f"/api/media/{medium['id']}/download?variant=sent", headers=admin_headers)
    assert sent_copy.status_code == 200 and sent_copy.get_data() == uploaded
    assert sent_copy.mimetype == "image/jpeg"
    assert medium["metadata"]["sent"] == {"mime_type": "image/jpeg", "size": len(uploaded)}

    # with a public address Meta is handed a link instead: to the stripped copy too
    override_settings(PUBLIC_URL="http://wa.example.test")
    mid = queue_message(client, admin_headers, cloud.id, type="image", media_id=medium["id"], caption="Again")
    assert send_now(client, admin_headers, mid)["status"] == "sent"
    assert len(media_uploads(graph)) == 1
    linked = client.get(path_of(graph.sent_messages()[-1].json["image"]["link"]))
    assert linked.status_code == 200 and linked.get_data() == uploaded


def inbound_image(meta_media_id: str, wamid: str, claimed: str = "image/jpeg") -> dict:
    return change({
        "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551181"}],
        "messages": [{"from": "16315551181", "id": wamid, "timestamp": "1750857390", "type": "image",
                      "image": {"mime_type": claimed, "sha256": "meta-sha", "id": meta_media_id}}]})


def receive(session, client, cloud, payload) -> Message:
    """Meta's signed callback, then the inbox applied (``inbox.apply_due``): the inbound message."""
    r = signed_post(client, cloud.id, payload)
    assert r.status_code == 200 and r.get_json()["messages"] == 1, r.get_data(as_text=True)
    assert apply_due() >= 1
    session.expire_all()
    return session.scalars(select(Message).where(Message.client_id == cloud.id, Message.direction == "inbound",
                                                 Message.external_id.isnot(None))).one()


def test_cloud_inbound_image_is_fetched_from_meta_stored_and_announced_once_with_a_link(
        session, client, admin_headers, graph, cloud):
    content = png_bytes((50, 40))  # Meta calls it a JPEG: the content decides
    graph.media["4490709327384033"] = ("image/jpeg", content)
    message = receive(session, client, cloud, inbound_image("4490709327384033", "wamid.MEDIA1"))
    assert message.type == "image" and message.media_id is not None
    assert received_events(session, message.id) == [], "announced once the medium is stored"

    assert fetching.fetch_inbound(message.media_id) == "stored"
    assert processing.process(message.media_id) == "ready"

    medium = client.get(f"/api/media/{message.media_id}", headers=admin_headers).get_json()
    assert (medium["status"], medium["source"], medium["kind"], medium["mime_type"]) == (
        "ready", "inbound", "image", "image/png")
    assert medium["size"] == len(content) and medium["sha256"] == hashlib.sha256(content).hexdigest()
    assert medium["metadata"]["width"] == 50 and medium["metadata"]["height"] == 40
    (event,) = received_events(session, message.id)
    media = event.payload["media"]
    assert (media["id"], media["size"], media["status"], media["kind"]) == (message.media_id, len(content),
                                                                             "ready", "image")
    assert media["url"] and media["url_expires_at"]
    assert event.payload["type"] == "image" and event.payload["media_id"] == message.media_id

    fetched = client.get(path_of(media["url"]))  # the link in the event, without credentials
    assert fetched.status_code == 200 and fetched.get_data() == content


def test_a_received_medium_is_listed_with_the_organisations_media(session, client, admin_headers, graph, cloud):
    content = png_bytes((20, 20))
    graph.media["4490709327384099"] = ("image/png", content)
    message = receive(session, client, cloud, inbound_image("4490709327384099", "wamid.MEDIA2", "image/png"))
    assert fetching.fetch_inbound(message.media_id) == "stored"
    assert processing.process(message.media_id) == "ready"
    one = client.get(f"/api/media/{message.media_id}", headers=admin_headers).get_json()

    listed = client.get("/api/media", query_string={"status": "ready"}, headers=admin_headers)
    assert listed.status_code == 200, listed.get_data(as_text=True)[-300:]
    assert listed.get_json()["items"] == [one], "the list shows each medium as GET /api/media/{id} does"


@pytest.mark.parametrize("gone", ["unknown id", "file 404"])
def test_cloud_inbound_image_meta_does_not_have_fails_and_is_still_announced_once(
        session, client, admin_headers, graph, cloud, gone):
    if gone == "file 404":  # Meta knows the id, but its download URL answers 404 (expired)
        graph.media["1234567890"] = ("image/png", png_bytes())
        graph.fail_next(404, path_suffix="/files/1234567890")
    message = receive(session, client, cloud, inbound_image("1234567890", "wamid.MEDIA404"))
    assert message.type == "image" and message.media_id is not None

    assert fetching.fetch_inbound(message.media_id) == "failed"
    assert processing.process(message.media_id) == "skipped"

    medium = session.get(Media, message.media_id)
    assert (medium.status, medium.source) == ("failed", "inbound")
    assert medium.error.startswith("Meta refused the download")
    (event,) = received_events(session, message.id)
    media = event.payload["media"]
    assert (media["id"], media["status"], media["url"], media["url_expires_at"]) == (
        message.media_id, "failed", None, None)
    assert media["error"] == medium.error
    assert client.get(f"/api/media/{message.media_id}/download", headers=admin_headers).status_code == 409


# ----------------------------------------------------------------------------------- web inbound


def web_inbound(session, org, media: dict, kind: str) -> Message:
    """What a web client's transport reports of an incoming medium (its bytes in the report,
    through the inbox sink the session host gives it), then the inbox applied: the message."""
    from datetime import UTC, datetime

    from app.inbox.service import InboxSink
    from app.transports.base import ClientInfo, InboundMessage

    cli = f.make_client(session, organization_id=org.id, transport="web", status="ready", phone=WEB_PHONE)
    InboxSink().inbound(ClientInfo(id=cli.id, organization_id=org.id, transport="web"), InboundMessage(
        external_id=f"true_{kind}_1", from_phone="+16315551181", type=kind, media=media,
        timestamp=datetime.now(UTC)))
    assert apply_due() == 1
    session.expire_all()
    return session.scalars(select(Message).where(Message.client_id == cli.id)).one()


def test_web_inbound_image_is_stored_from_the_report_and_announced_once_processed(
        session, client, org, admin_headers):
    content = png_bytes((16, 9))
    message = web_inbound(session, org, {"mime_type": "image/png", "data_b64": base64.b64encode(content).decode(),
                                         "caption": "look"}, "image")
    assert (message.type, message.caption) == ("image", "look") and message.media_id
    assert received_events(session, message.id) == []
    assert processing.process(message.media_id) == "ready"

    (event,) = received_events(session, message.id)
    media = event.payload["media"]
    assert (media["id"], media["status"], media["size"]) == (message.media_id, "ready", len(content))
    assert media["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(path_of(media["url"])).get_data() == content


def test_web_inbound_medium_refused_at_once_is_still_announced(session, client, org, admin_headers):
    """A contact's file the checks refuse as it is stored (an executable) fails the medium at once;
    the message must still be announced, once, with the failed medium (as a failed fetch is)."""
    exe = b"MZ\x90\x00" + b"\x00" * 60 + b"This program cannot be run in DOS mode"
    message = web_inbound(session, org, {"mime_type": "application/octet-stream", "filename": "invoice.exe",
                                         "data_b64": base64.b64encode(exe).decode()}, "document")
    assert message.type == "document" and message.media_id
    medium = session.get(Media, message.media_id)
    assert medium.status == "failed" and "Executable" in medium.error

    events = received_events(session, message.id)
    assert len(events) == 1, "message.received of a message whose medium was refused at once"
    media = events[0].payload["media"]
    assert (media["id"], media["status"], media["url"]) == (message.media_id, "failed", None)


# ----------------------------------------------------------------------------------- sim


def test_sim_sends_an_image_and_a_document_that_the_network_receives_and_delivers(
        session, client, org, admin_headers):
    """``POST /api/clients/{id}/sim/inbound`` takes only ``{from, text}``: the sim carries media
    outbound only, so this is its outbound way."""
    sim = f.make_client(session, organization_id=org.id, transport="sim", status="ready",
                        config={"pacing": False, "deliver_after_ms": 0, "read_rate": 0.0})
    image = ready_medium(client, admin_headers, png_bytes((12, 12)), "dot.png")
    document = ready_medium(client, admin_headers, PDF, "invoice.pdf")
    assert (image["kind"], document["kind"], document["mime_type"]) == ("image", "document", "application/pdf")

    ids = [queue_message(client, admin_headers, sim.id, type="image", media_id=image["id"], caption="A dot"),
           queue_message(client, admin_headers, sim.id, type="document", media_id=document["id"], caption="Invoice")]
    for mid in ids:
        assert send_now(client, admin_headers, mid)["status"] == "sent"

    network = client.get(f"/api/clients/{sim.id}/sim/network", headers=admin_headers).get_json()
    assert (network["received"], network["distinct"], network["duplicates"]) == (2, 2, 0)
    assert apply_due() == 2  # the network's delivered receipts, due at once
    for mid, kind, medium in zip(ids, ("image", "document"), (image, document), strict=True):
        msg = client.get(f"/api/messages/{mid}", headers=admin_headers).get_json()
        assert (msg["status"], msg["type"], msg["media_id"]) == ("delivered", kind, medium["id"])
        assert msg["delivered_at"] is not None


# ----------------------------------------------------------------------------------- web (Chromium)

WEB_PHONE = "+15550100321"


@pytest.fixture(scope="module")
def runtime():
    from app.transports.web_browser import BrowserRuntime

    rt = BrowserRuntime()
    yield rt
    rt.close()


@pytest.fixture
def wa_web(override_settings):
    """The fixture WhatsApp Web (tests/fixtures/wa_web) on loopback, and WEB_URL pointing at it."""
    from tests.fixtures.wa_web.server import FakeWhatsAppWeb

    server = FakeWhatsAppWeb().start()
    override_settings(WEB_URL=server.url)
    yield server
    server.stop()


@pytest.fixture
def web(session, org, wa_web, runtime):
    """A ready web client of ``org`` and its transport, logged in to the fixture page."""
    from app.transports.base import ClientInfo
    from app.transports.web import WebTransport
    from tests.fixtures.wa_web.sink import RecordingSink, start_and_scan

    cli = f.make_client(session, organization_id=org.id, transport="web", status="ready", phone=WEB_PHONE,
                        config={"pacing": False})
    sink = RecordingSink()
    transport = WebTransport(ClientInfo(id=cli.id, organization_id=org.id, transport="web", config={}), sink,
                             runtime=runtime)
    start_and_scan(transport, sink, wa_web, WEB_PHONE)
    yield cli, transport
    if transport.state != "closed":
        transport.close()


@pytest.mark.xdist_group("browser")
def test_web_sends_a_sticker_and_a_voice_note_the_page_gets_with_their_bytes(
        client, admin_headers, wa_web, web):
    from app.messages import dispatch

    cli, transport = web
    sticker_bytes, voice_bytes = webp_sticker(), ogg_opus_voice_note()
    sticker = ready_medium(client, admin_headers, sticker_bytes, "smile.webp", kind="sticker")
    voice = ready_medium(client, admin_headers, voice_bytes, "note.ogg")
    assert (sticker["kind"], sticker["mime_type"], sticker["metadata"]["width"]) == ("sticker", "image/webp", 512)
    assert (voice["kind"], voice["mime_type"]) == ("audio", "audio/ogg")
    assert voice["metadata"]["duration_seconds"] == 1.0

    ids = [queue_message(client, admin_headers, cli.id, type="sticker", media_id=sticker["id"]),
           queue_message(client, admin_headers, cli.id, type="voice", media_id=voice["id"])]
    for n, mid in enumerate(ids, start=1):
        # what the session host owning the client does with its ``sessions.send`` job
        assert dispatch.perform_send(mid, lambda client_id: transport) == "sent"
        wa_web.wait_sent(WEB_PHONE, n)

    got = [(m.chat, m.media["kind"], m.media["ptt"], m.media["mime"], base64.b64decode(m.media["data_b64"]), m.caption)
           for m in wa_web.sent(WEB_PHONE)]
    assert got == [(f"{TO[1:]}@c.us", "sticker", False, "image/webp", sticker_bytes, None),
                   (f"{TO[1:]}@c.us", "audio", True, "audio/ogg", voice_bytes, None)]
    for mid in ids:
        msg = client.get(f"/api/messages/{mid}", headers=admin_headers).get_json()
        assert msg["status"] == "sent" and msg["error"] is None
