"""The cloud transport against a fake Graph API on loopback (real HTTP), and Meta's webhooks.

Transport tests build ClientInfo directly; webhook tests go through the real routes, a real client
row with encrypted secrets, and check the jobs that land in Redis.
"""
from __future__ import annotations

import base64
import json
import socket

import dramatiq
import pytest

from app.db import new_id
from app.security.crypto import encrypt_json
from app.transports import transport_class
from app.transports.base import ClientInfo, MediaRef, OutboundMessage, PermanentSendError, ProxyInfo, TransientSendError
from app.transports.cloud import CloudTransport
from app.transports.cloud_errors import META_ERRORS
from tests import factories
from tests.fake_graph import FakeGraph, FakeSocks5
from tests.reports import reported

APP_SECRET = "meta-app-secret-for-tests"
VERIFY_TOKEN = "verify-me-please"


class RecordingSink:
    def __init__(self):
        self.statuses, self.acks, self.inbound_messages = [], [], []

    def status(self, client, status, detail=None, *, delay_ms=0):
        self.statuses.append((status, detail or {}))

    def ack(self, client, external_id, status, *, error=None, at=None, delay_ms=0, message_id=None):
        self.acks.append((external_id, status, error, at))

    def inbound(self, client, message, *, delay_ms=0):
        self.inbound_messages.append(message)

    def session_state(self, client, state):
        raise AssertionError("the cloud transport has no session state")


@pytest.fixture
def graph(allow_loopback):
    with FakeGraph() as g:
        yield g


def info(graph, *, proxy=None, secrets=None, **config) -> ClientInfo:
    return ClientInfo(
        id=new_id("cli"), organization_id=new_id("org"), transport="cloud",
        config={"phone_number_id": graph.phone_number_id, "base_url": graph.url, **config},
        secrets=secrets if secrets is not None else {"access_token": graph.access_token, "app_secret": APP_SECRET,
                                                     "verify_token": VERIFY_TOKEN},
        proxy=proxy)


def transport(graph, sink=None, **kw) -> CloudTransport:
    return CloudTransport(info(graph, **kw), sink or RecordingSink())


def text(to="+14155550123", body="Hello there", message_id=None) -> OutboundMessage:
    return OutboundMessage(message_id=message_id or new_id("msg"), to=to, type="text", text=body)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------------- start


def test_registry_resolves_cloud():
    assert transport_class("cloud") is CloudTransport


def test_start_validates_credentials_and_reports_ready_with_the_display_phone(graph):
    sink = RecordingSink()
    transport(graph, sink).start()
    assert sink.statuses == [("ready", {"phone": "+15550783881", "verified_name": "Fake Business",
                                        "quality_rating": "GREEN"})]
    (req,) = graph.requests
    assert (req.method, req.path) == ("GET", f"/v21.0/{graph.phone_number_id}")
    assert req.headers["authorization"] == f"Bearer {graph.access_token}"
    assert set(req.query["fields"].split(",")) >= {"display_phone_number", "verified_name"}


def test_start_with_a_bad_token_reports_failed(graph):
    sink = RecordingSink()
    transport(graph, sink, secrets={"access_token": "EAA-wrong"}).start()
    ((status, detail),) = sink.statuses
    assert status == "failed"
    assert detail["code"] == "auth_failed" and detail["meta_code"] == 190
    assert "access token" in detail["reason"]


def test_start_with_an_unknown_phone_number_id_reports_failed(graph):
    sink = RecordingSink()
    transport(graph, sink, phone_number_id="999").start()
    ((status, detail),) = sink.statuses
    assert status == "failed" and "does not exist" in detail["reason"]


def test_start_without_config_fails_without_calling_meta(graph):
    sink = RecordingSink()
    CloudTransport(ClientInfo(id="cli_x", organization_id="org_x", transport="cloud",
                              config={"base_url": graph.url}, secrets={"access_token": "t"}), sink).start()
    assert sink.statuses == [("failed", {"reason": "config.phone_number_id is missing", "code": "invalid_config"})]
    assert graph.requests == []


def test_production_refuses_a_base_url_that_is_not_metas(graph, override_settings):
    sink = RecordingSink()
    with override_settings(APP_ENV="production"):
        transport(graph, sink).start()
        with pytest.raises(PermanentSendError) as err:
            transport(graph).send(text())
        allowed = CloudTransport(ClientInfo(id="cli_x", organization_id="org_x", transport="cloud",
                                            config={"phone_number_id": "1"}, secrets={"access_token": "t"}),
                                 RecordingSink())
        assert allowed._config_problem() is None
    ((status, detail),) = sink.statuses
    assert status == "failed" and detail["code"] == "invalid_config" and "base_url" in detail["reason"]
    assert err.value.code == "invalid_config"
    assert graph.requests == []


def test_start_when_meta_is_unreachable_reports_disconnected_so_it_is_retried(allow_loopback):
    sink = RecordingSink()
    client = ClientInfo(id="cli_x", organization_id="org_x", transport="cloud",
                        config={"phone_number_id": "1", "base_url": f"http://127.0.0.1:{free_port()}"},
                        secrets={"access_token": "t"})
    CloudTransport(client, sink).start()
    ((status, detail),) = sink.statuses
    assert status == "disconnected" and detail["code"] == "transport_unavailable"


def test_stop_and_logout_report_nothing_and_leave_the_number_registered(graph):
    sink = RecordingSink()
    t = transport(graph, sink)
    t.stop()
    t.logout()
    assert sink.statuses == [] and graph.requests == []


# ----------------------------------------------------------------------------------- sending


def test_send_text_posts_metas_payload_and_returns_the_wamid(graph):
    msg = text()
    result = transport(graph).send(msg)
    (req,) = graph.requests
    assert (req.method, req.path) == ("POST", f"/v21.0/{graph.phone_number_id}/messages")
    assert req.headers["authorization"] == f"Bearer {graph.access_token}"
    assert req.headers["content-type"] == "application/json"
    assert req.json == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550123",
                        "biz_opaque_callback_data": msg.message_id, "type": "text",
                        "text": {"preview_url": False, "body": "Hello there"}}
    assert result.external_id == "wamid.FAKE000001" and result.status == "sent"


def test_api_version_and_preview_url_come_from_config(graph):
    graph.version = "v22.0"
    transport(graph, api_version="v22.0", preview_url=True).send(text(body="see https://example.com"))
    (req,) = graph.requests
    assert req.path == f"/v22.0/{graph.phone_number_id}/messages"
    assert req.json["text"] == {"preview_url": True, "body": "see https://example.com"}


def test_send_image_by_link_with_caption(graph):
    msg = OutboundMessage(message_id=new_id("msg"), to="+447700900123", type="image", caption="Our menu",
                          media=MediaRef(media_id="med_1", mime_type="image/jpeg", url="https://cdn.example.com/m.jpg"))
    assert transport(graph).send(msg).external_id.startswith("wamid.")
    assert graph.requests[0].json == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "447700900123",
        "biz_opaque_callback_data": msg.message_id, "type": "image",
        "image": {"link": "https://cdn.example.com/m.jpg", "caption": "Our menu"}}


def test_send_document_and_audio_by_link(graph):
    t = transport(graph)
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="document", caption="Invoice",
                           media=MediaRef(media_id="med_2", mime_type="application/pdf", filename="inv.pdf",
                                          url="https://cdn.example.com/inv.pdf")))
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="audio", caption="ignored",
                           media=MediaRef(media_id="med_3", mime_type="audio/ogg", url="https://cdn.example.com/a.ogg")))
    doc, audio = (r.json for r in graph.requests)
    assert doc["type"] == "document"
    assert doc["document"] == {"link": "https://cdn.example.com/inv.pdf", "caption": "Invoice", "filename": "inv.pdf"}
    assert audio["type"] == "audio" and audio["audio"] == {"link": "https://cdn.example.com/a.ogg"}


def test_send_sticker_and_voice_note_without_captions(graph):
    t = transport(graph, media_ids={"med_stk": "1180209837451672"})
    sticker = OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="sticker", caption="ignored",
                              media=MediaRef(media_id="med_stk", mime_type="image/webp", path="/nonexistent"))
    voice = OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="voice", caption="ignored",
                            media=MediaRef(media_id="med_ptt", mime_type="audio/ogg; codecs=opus",
                                           url="https://cdn.example.com/note.ogg"))
    t.send(sticker)
    t.send(voice)
    got_sticker, got_voice = (r.json for r in graph.requests)
    assert got_sticker == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550123",
                           "biz_opaque_callback_data": sticker.message_id, "type": "sticker",
                           "sticker": {"id": "1180209837451672"}}
    assert got_voice == {"messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550123",
                         "biz_opaque_callback_data": voice.message_id, "type": "audio",
                         "audio": {"link": "https://cdn.example.com/note.ogg", "voice": True}}


def test_a_sticker_and_a_voice_note_from_files_are_uploaded_with_their_type(graph, tmp_path):
    webp = tmp_path / "stored-sticker"
    webp.write_bytes(b"RIFF\x24\x00\x00\x00WEBPVP8 sticker")
    ogg = tmp_path / "stored-note"
    ogg.write_bytes(b"OggS\x00\x02 opus voice note")
    t = transport(graph)
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="sticker",
                           media=MediaRef(media_id="med_s", mime_type="image/webp", path=str(webp))))
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="voice",
                           media=MediaRef(media_id="med_v", mime_type="audio/ogg", filename="note.ogg", path=str(ogg))))
    upload_sticker, sticker, upload_voice, voice = graph.requests
    assert upload_sticker.form == {"messaging_product": "whatsapp", "type": "image/webp"}
    assert upload_sticker.files["file"] == ("med_s", "image/webp", webp.read_bytes())
    assert upload_voice.files["file"] == ("note.ogg", "audio/ogg", ogg.read_bytes())
    sticker_id, voice_id = graph.media
    assert graph.media[sticker_id] == ("image/webp", webp.read_bytes())
    assert sticker.json["type"] == "sticker" and sticker.json["sticker"] == {"id": sticker_id}
    assert voice.json["type"] == "audio" and voice.json["audio"] == {"id": voice_id, "voice": True}


def test_every_media_type_carries_only_the_fields_meta_takes(graph):
    """Captions on image, video and document only; a file name on documents only."""
    t = transport(graph)
    for kind, mime in [("image", "image/jpeg"), ("video", "video/mp4"), ("audio", "audio/mpeg"),
                       ("document", "application/pdf"), ("sticker", "image/webp"), ("voice", "audio/ogg")]:
        t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type=kind, caption="A caption",
                               media=MediaRef(media_id=f"med_{kind}", mime_type=mime, filename=f"file-{kind}",
                                              url=f"https://cdn.example.com/{kind}")))
    got = {r.json["biz_opaque_callback_data"]: r.json for r in graph.requests}
    bodies = [(body["type"], body[body["type"]]) for body in got.values()]
    link = "https://cdn.example.com/"
    assert bodies == [
        ("image", {"link": link + "image", "caption": "A caption"}),
        ("video", {"link": link + "video", "caption": "A caption"}),
        ("audio", {"link": link + "audio"}),
        ("document", {"link": link + "document", "caption": "A caption", "filename": "file-document"}),
        ("sticker", {"link": link + "sticker"}),
        ("audio", {"link": link + "voice", "voice": True}),
    ]


def test_a_sticker_that_is_not_webp_fails_permanently_without_calling_meta(graph):
    with pytest.raises(PermanentSendError) as err:
        transport(graph).send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="sticker",
                                              media=MediaRef(media_id="med_p", mime_type="image/png",
                                                             url="https://cdn.example.com/p.png")))
    assert err.value.code == "invalid_request" and "image/webp" in str(err.value)
    assert graph.requests == []


def test_send_video_by_an_uploaded_id_from_config(graph):
    t = transport(graph, media_ids={"med_vid": "1013859600285441"})
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="video", caption="Tour",
                           media=MediaRef(media_id="med_vid", mime_type="video/mp4", path="/nonexistent")))
    (req,) = graph.requests
    assert req.json["type"] == "video" and req.json["video"] == {"id": "1013859600285441", "caption": "Tour"}


def test_send_media_from_a_file_uploads_it_once_then_sends_by_id(graph, tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"\x89PNG\r\n\x1a\n" + b"pixels" * 50)
    ref = MediaRef(media_id="med_file", mime_type="image/png", filename="photo.png", path=str(photo))
    t = transport(graph)
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="image", media=ref))
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550124", type="image", media=ref))
    upload, first, second = graph.requests
    assert (upload.method, upload.path) == ("POST", f"/v21.0/{graph.phone_number_id}/media")
    assert upload.headers["authorization"] == f"Bearer {graph.access_token}"
    assert upload.form == {"messaging_product": "whatsapp", "type": "image/png"}
    assert upload.files["file"] == ("photo.png", "image/png", photo.read_bytes())
    media_id = next(iter(graph.media))
    assert first.json["image"] == {"id": media_id} and second.json["image"] == {"id": media_id}


def test_media_without_link_id_or_file_fails_permanently(graph):
    with pytest.raises(PermanentSendError) as err:
        transport(graph).send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="image",
                                              media=MediaRef(media_id="med_x", mime_type="image/png")))
    assert err.value.code == "media_unavailable" and graph.requests == []


def test_template_with_positional_body_parameters(graph):
    msg = OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="template", template={
        "name": "order_shipped", "language": "en_US", "body": "Hi Ana, order 42 shipped",
        "variables": {"2": "42", "1": "Ana"}})
    transport(graph).send(msg)
    assert graph.requests[0].json == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "14155550123",
        "biz_opaque_callback_data": msg.message_id, "type": "template",
        "template": {"name": "order_shipped", "language": {"code": "en_US"}, "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Ana"}, {"type": "text", "text": "42"}]}]}}


def test_template_with_named_variables_and_positional_override(graph):
    tpl = {"name": "welcome", "language": "en", "variables": {"first_name": "Ana", "city": "Porto"}}
    transport(graph).send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="template", template=tpl))
    transport(graph, template_parameters="positional").send(
        OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="template", template=tpl))
    named, positional = (r.json["template"] for r in graph.requests)
    assert named == {"name": "welcome", "language": {"code": "en"}, "components": [{"type": "body", "parameters": [
        {"type": "text", "parameter_name": "first_name", "text": "Ana"},
        {"type": "text", "parameter_name": "city", "text": "Porto"}]}]}
    assert positional["components"][0]["parameters"] == [{"type": "text", "text": "Ana"},
                                                         {"type": "text", "text": "Porto"}]


def test_template_components_given_are_sent_as_they_are_and_no_variables_means_no_components(graph):
    components = [{"type": "header", "parameters": [{"type": "image", "image": {"link": "https://x.test/h.png"}}]},
                  {"type": "button", "sub_type": "quick_reply", "index": "0",
                   "parameters": [{"type": "payload", "payload": "STOP"}]}]
    t = transport(graph)
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="template",
                           template={"name": "promo", "language": "pt_BR", "components": components}))
    t.send(OutboundMessage(message_id=new_id("msg"), to="+14155550123", type="template",
                           template={"name": "hello_world", "language": "en_US", "variables": {}}))
    first, second = (r.json["template"] for r in graph.requests)
    assert first == {"name": "promo", "language": {"code": "pt_BR"}, "components": components}
    assert second == {"name": "hello_world", "language": {"code": "en_US"}}


def test_a_resend_of_the_same_message_id_is_not_sent_twice(graph):
    client, msg = info(graph), text()
    first = CloudTransport(client, RecordingSink()).send(msg)
    again = CloudTransport(client, RecordingSink()).send(msg)  # e.g. another worker, after a crash before recording
    assert again.external_id == first.external_id
    assert len(graph.sent_messages()) == 1


# ----------------------------------------------------------------------------------- errors

ERROR_CASES = [
    # (http status, meta code, details, exception, our code, retry_after_ms)
    (400, 130429, "Message failed to send because there were too many messages sent from this phone number",
     TransientSendError, "rate_limited", 5_000),
    (400, 131056, "Too many messages sent from the sender phone number to the same recipient phone number",
     TransientSendError, "pair_rate_limited", 60_000),
    (400, 131047, "Message failed to send because more than 24 hours have passed since the customer last replied",
     PermanentSendError, "outside_customer_window", None),
    (400, 131026, "Message Undeliverable.", PermanentSendError, "invalid_recipient", None),
    (400, 131030, "Recipient phone number not in allowed list", PermanentSendError, "invalid_recipient", None),
    (400, 100, "Invalid parameter 'to'", PermanentSendError, "invalid_recipient", None),
    (400, 100, "Param text['body'] must be at most 4096 characters long", PermanentSendError, "invalid_request", None),
    (400, 132001, "template name (welcome) does not exist in en_US", PermanentSendError, "template_not_found", None),
    (500, 131000, "Something went wrong", TransientSendError, "provider_unavailable", 10_000),
    (503, None, None, TransientSendError, "provider_unavailable", 10_000),
    (429, None, None, TransientSendError, "rate_limited", 5_000),
    (400, 4, "Application request limit reached", TransientSendError, "rate_limited", 60_000),
]


@pytest.mark.parametrize("http_status,code,details,exc_type,our_code,retry_ms", ERROR_CASES,
                         ids=[f"{c[1] or c[0]}-{c[4]}" for c in ERROR_CASES])
def test_meta_errors_map_to_retry_or_fail(graph, http_status, code, details, exc_type, our_code, retry_ms):
    graph.fail_next(http_status=http_status, code=code, message="Error", details=details)
    sink = RecordingSink()
    with pytest.raises(exc_type) as err:
        transport(graph, sink).send(text())
    assert type(err.value) is exc_type
    assert err.value.code == our_code
    if exc_type is TransientSendError:
        assert err.value.retry_after_ms == retry_ms
    if code is not None:
        assert err.value.details["meta_code"] == code
    assert len(graph.requests) == 1, "the transport never retries by itself: the job does"
    assert sink.statuses == []


def test_retry_after_header_lengthens_the_backoff(graph):
    graph.fail_next(http_status=503, headers={"Retry-After": "30"})
    with pytest.raises(TransientSendError) as err:
        transport(graph).send(text())
    assert err.value.retry_after_ms == 30_000


def test_expired_token_fails_the_send_and_reports_the_client_failed(graph):
    sink = RecordingSink()
    with pytest.raises(PermanentSendError) as err:
        transport(graph, sink, secrets={"access_token": "EAA-expired"}).send(text())
    assert err.value.code == "auth_failed"
    ((status, detail),) = sink.statuses
    assert status == "failed" and detail["code"] == "auth_failed" and detail["http_status"] == 401


def test_policy_block_reports_the_client_banned(graph):
    graph.fail_next(http_status=400, code=368, message="Temporarily blocked for policies violations")
    sink = RecordingSink()
    with pytest.raises(PermanentSendError) as err:
        transport(graph, sink).send(text())
    assert err.value.code == "account_restricted"
    assert [s for s, _ in sink.statuses] == ["banned"]


def test_a_successful_send_after_a_throughput_error(graph):
    graph.fail_next(http_status=400, code=130429, message="Rate limit hit")
    t, msg = transport(graph), text()
    with pytest.raises(TransientSendError):
        t.send(msg)
    assert t.send(msg).external_id.startswith("wamid.")
    assert len(graph.sent_messages()) == 2


def test_a_timeout_is_transient(graph):
    graph.delay_next(5)
    with pytest.raises(TransientSendError) as err:
        transport(graph, timeout_s=0.3).send(text())
    assert err.value.code == "transport_unavailable" and "timed out" in str(err.value)


def test_connection_refused_is_transient(allow_loopback):
    client = ClientInfo(id="cli_x", organization_id="org_x", transport="cloud",
                        config={"phone_number_id": "1", "base_url": f"http://127.0.0.1:{free_port()}"},
                        secrets={"access_token": "t"})
    with pytest.raises(TransientSendError) as err:
        CloudTransport(client, RecordingSink()).send(text())
    assert err.value.code == "transport_unavailable"


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:{port}", "http://localhost:{port}", "http://2130706433:{port}",
                                      "http://[::ffff:127.0.0.1]:{port}", "http://10.0.0.9:{port}"])
def test_a_base_url_on_an_internal_address_is_refused_and_never_called(graph, base_url, monkeypatch,
                                                                       override_settings):
    """With the guard's default (nothing internal): the token never leaves for this machine or the LAN."""
    override_settings(WEBHOOK_ALLOW_PRIVATE="false")
    port = graph.url.rsplit(":", 1)[1]
    client = ClientInfo(id=new_id("cli"), organization_id="org_x", transport="cloud",
                        config={"phone_number_id": graph.phone_number_id, "base_url": base_url.format(port=port)},
                        secrets={"access_token": graph.access_token})
    sink = RecordingSink()
    CloudTransport(client, sink).start()
    ((status, detail),) = sink.statuses
    assert status == "failed" and detail["code"] == "invalid_config" and "config.base_url" in detail["reason"]
    with pytest.raises(PermanentSendError) as err:
        CloudTransport(client, RecordingSink()).send(text())
    assert err.value.code == "invalid_config"
    # a name that looked public when checked and resolves inside when connecting (DNS rebinding)
    from app.security import ssrf

    monkeypatch.setattr(ssrf, "check_url", lambda url: None)
    with pytest.raises(PermanentSendError) as err:
        CloudTransport(client, RecordingSink()).send(text())
    assert err.value.code == "address_not_allowed"
    assert graph.requests == []


def test_a_proxy_on_an_internal_address_is_refused(graph, override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE="false")
    port = int(graph.url.rsplit(":", 1)[1])
    client = ClientInfo(id=new_id("cli"), organization_id="org_x", transport="cloud",
                        proxy=ProxyInfo(scheme="http", host="127.0.0.1", port=port),
                        config={"phone_number_id": graph.phone_number_id, "base_url": "https://graph.facebook.com"},
                        secrets={"access_token": graph.access_token})
    with pytest.raises(PermanentSendError) as err:
        CloudTransport(client, RecordingSink()).send(text())
    assert err.value.code == "address_not_allowed" and graph.requests == []


def test_error_table_covers_the_codes_of_the_issue():
    assert META_ERRORS[130429].retry and META_ERRORS[131056].retry
    assert META_ERRORS[131047].code == "outside_customer_window" and not META_ERRORS[131047].retry
    assert META_ERRORS[131026].code == "invalid_recipient" and not META_ERRORS[131026].retry


# ----------------------------------------------------------------------------------- proxy


def test_requests_go_through_the_clients_proxy_with_its_credentials(graph):
    """The fake Graph API is also the proxy: the Graph host itself does not resolve."""
    port = int(graph.url.rsplit(":", 1)[1])
    proxy = ProxyInfo(scheme="http", host="127.0.0.1", port=port, username="px user", password="p@ss")
    client = ClientInfo(id=new_id("cli"), organization_id="org_x", transport="cloud", proxy=proxy,
                        config={"phone_number_id": graph.phone_number_id, "base_url": "http://graph.invalid"},
                        secrets={"access_token": graph.access_token})
    result = CloudTransport(client, RecordingSink()).send(text())
    assert result.external_id.startswith("wamid.")
    (req,) = graph.requests
    assert req.proxied and req.path == f"/v21.0/{graph.phone_number_id}/messages"
    assert req.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"px user:p@ss").decode()
    assert req.headers["authorization"] == f"Bearer {graph.access_token}"


def test_socks5_proxy_with_credentials_and_names_resolved_by_the_proxy(graph):
    port = int(graph.url.rsplit(":", 1)[1])
    with FakeSocks5(("127.0.0.1", port), username="px", password="s3cret") as socks:
        client = ClientInfo(id=new_id("cli"), organization_id="org_x", transport="cloud",
                            proxy=ProxyInfo(scheme="socks5", host="127.0.0.1", port=socks.port, username="px",
                                            password="s3cret"),
                            config={"phone_number_id": graph.phone_number_id, "base_url": "http://graph.invalid"},
                            secrets={"access_token": graph.access_token})
        t = CloudTransport(client, RecordingSink())
        assert t.send(text()).external_id.startswith("wamid.")
    assert socks.logins == [("px", "s3cret")]
    assert socks.connects == [("graph.invalid", 80)], "the proxy, not this host, resolves the Graph host"
    assert graph.requests[0].path == f"/v21.0/{graph.phone_number_id}/messages"
    assert transport(graph).proxies is None


# ----------------------------------------------------------------------------------- inbound media


def test_download_media_of_an_inbound_message(graph):
    graph.media["4490709327384033"] = ("image/jpeg", b"\xff\xd8\xff jpeg bytes")
    content, mime = transport(graph).download_media("4490709327384033")
    assert (content, mime) == (b"\xff\xd8\xff jpeg bytes", "image/jpeg")
    lookup, fetch = graph.requests
    assert lookup.path == "/v21.0/4490709327384033" and fetch.path == "/files/4490709327384033"
    assert fetch.headers["authorization"] == f"Bearer {graph.access_token}"


# ----------------------------------------------------------------------------------- webhooks

PNID = "106540352242922"


@pytest.fixture
def cloud_client(session):
    return factories.make_client(
        session, transport="cloud", status="ready",
        config={"phone_number_id": PNID, "waba_id": "102290129340398", "api_version": "v21.0"},
        secrets_encrypted=encrypt_json({"access_token": "EAAG-test-token", "app_secret": APP_SECRET,
                                        "verify_token": VERIFY_TOKEN}))


def queued_jobs(redis_conn, queue="default") -> list[dramatiq.Message]:
    """Jobs waiting in ``queue``, ready or delayed."""
    raws = [raw for q in (queue, f"{queue}.DQ") for raw in redis_conn.hvals(f"dramatiq:{q}.msgs")]
    return [dramatiq.Message.decode(raw) for raw in raws]


def signed_post(client, client_id, payload, secret=APP_SECRET, signature=None):
    from app.clients.meta_service import sign

    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    sig = signature if signature is not None else sign(secret, body)
    if sig:
        headers["X-Hub-Signature-256"] = sig
    return client.post(f"/webhooks/meta/{client_id}", data=body, headers=headers)


def change(value: dict) -> dict:
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [
        {"field": "messages", "value": {"messaging_product": "whatsapp",
                                        "metadata": {"display_phone_number": "15550783881", "phone_number_id": PNID},
                                        **value}}]}]}


INBOUND = change({
    "contacts": [{"profile": {"name": "Kerry Fisher"}, "wa_id": "16315551181"}],
    "messages": [
        {"from": "16315551181", "id": "wamid.IN1", "timestamp": "1750857384", "type": "text",
         "text": {"body": "Hi, is my order ready?"}},
        {"from": "16315551181", "id": "wamid.IN2", "timestamp": "1750857390", "type": "image",
         "image": {"caption": "this one", "mime_type": "image/jpeg", "sha256": "abc", "id": "4490709327384033"}},
    ]})

STATUSES = change({"statuses": [
    {"id": "wamid.OUT1", "status": "delivered", "timestamp": "1750857400", "recipient_id": "16315551181",
     "pricing": {"billable": True, "pricing_model": "CBP", "category": "service"}},
    {"id": "wamid.OUT2", "status": "failed", "timestamp": "1750857401", "recipient_id": "16315551181",
     "errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                 "error_data": {"details": "Message failed to send because more than 24 hours have passed"}}]},
    {"id": "wamid.OUT3", "status": "read", "timestamp": "1750857402", "recipient_id": "16315551181"},
]})


def test_verify_handshake_echoes_the_challenge(client, cloud_client):
    resp = client.get(f"/webhooks/meta/{cloud_client.id}",
                      query_string={"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN,
                                    "hub.challenge": "1158201444"})
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain" and resp.get_data(as_text=True) == "1158201444"


@pytest.mark.parametrize("mode,token", [("subscribe", "wrong-token"), ("unsubscribe", VERIFY_TOKEN),
                                        (None, VERIFY_TOKEN), ("subscribe", None)])
def test_verify_handshake_refuses_a_bad_token_or_mode(client, cloud_client, mode, token):
    query = {"hub.challenge": "42", **({"hub.mode": mode} if mode else {}),
             **({"hub.verify_token": token} if token else {})}
    resp = client.get(f"/webhooks/meta/{cloud_client.id}", query_string=query)
    assert resp.status_code == 403
    assert resp.get_json()["error"]["code"] == "verification_failed"
    assert "42" not in resp.get_data(as_text=True)


def test_signed_inbound_messages_are_recorded_before_the_answer(client, session, cloud_client, redis_conn):
    resp = signed_post(client, cloud_client.id, INBOUND)
    assert resp.status_code == 200
    assert resp.get_json()["messages"] == 2
    rows = reported(session)
    assert [r.kind for r in rows] == ["inbound", "inbound"] and {r.client_id for r in rows} == {cloud_client.id}
    first, second = (r.payload for r in rows)
    assert [j.actor_name for j in queued_jobs(redis_conn)] == ["inbox.apply_due"], "one wake-up for both"
    assert first == {"external_id": "wamid.IN1", "from_phone": "+16315551181", "type": "text",
                     "text": "Hi, is my order ready?", "media": None, "timestamp": "2025-06-25T13:16:24+00:00",
                     "contact_name": "Kerry Fisher"}
    assert second["type"] == "image" and second["text"] == "this one"
    assert second["media"] == {"id": "4490709327384033", "mime_type": "image/jpeg", "sha256": "abc",
                               "caption": "this one", "provider": "meta"}


def test_signed_statuses_are_recorded_acks_with_mapped_errors(client, session, cloud_client, redis_conn):
    resp = signed_post(client, cloud_client.id, STATUSES)
    assert resp.status_code == 200 and resp.get_json()["statuses"] == 3
    rows = reported(session)
    assert {r.kind for r in rows} == {"ack"} and {r.client_id for r in rows} == {cloud_client.id}
    delivered, failed, read = (r.payload for r in rows)
    assert delivered == {"external_id": "wamid.OUT1", "status": "delivered", "error": None,
                         "at": "2025-06-25T13:16:40+00:00", "message_id": None}
    assert (read["external_id"], read["status"]) == ("wamid.OUT3", "read")
    assert (failed["external_id"], failed["status"]) == ("wamid.OUT2", "failed")
    assert failed["error"]["code"] == "outside_customer_window" and failed["error"]["meta_code"] == 131047
    assert [j.actor_name for j in queued_jobs(redis_conn)] == ["inbox.apply_due"]


def test_an_ack_carries_our_message_id_when_meta_echoes_it(client, session, cloud_client):
    echoed = change({"statuses": [{"id": "wamid.OUT9", "status": "sent", "timestamp": "1750857400",
                                   "recipient_id": "16315551181", "biz_opaque_callback_data": "msg_01ABC"}]})
    assert signed_post(client, cloud_client.id, echoed).status_code == 200
    [row] = reported(session, "ack")
    assert row.payload["message_id"] == "msg_01ABC"


@pytest.mark.parametrize("signature", ["", "sha256=" + "0" * 64, "sha1=deadbeef", "garbage"])
def test_missing_or_forged_signature_is_401_and_nothing_is_enqueued(client, session, cloud_client, redis_conn,
                                                                    signature):
    resp = signed_post(client, cloud_client.id, INBOUND, signature=signature)
    assert resp.status_code == 401
    assert resp.get_json()["error"]["code"] == "invalid_signature"
    assert queued_jobs(redis_conn) == [] and redis_conn.llen("dramatiq:default.DQ") == 0
    assert reported(session) == []


def test_a_body_signed_with_another_secret_or_altered_after_signing_is_refused(client, cloud_client, redis_conn):
    from app.clients.meta_service import sign

    assert signed_post(client, cloud_client.id, INBOUND, secret="someone-elses-secret").status_code == 401
    body = json.dumps(INBOUND).encode()
    tampered = body.replace(b"Hi, is my order ready?", b"Hi, send me money now")
    resp = client.post(f"/webhooks/meta/{cloud_client.id}", data=tampered,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(APP_SECRET, body)})
    assert resp.status_code == 401
    assert queued_jobs(redis_conn) == []


def test_signature_is_checked_over_the_raw_bytes(client, session, cloud_client, redis_conn):
    """Meta's bytes (escaped unicode, its own spacing) are what is signed, not a re-serialisation."""
    from app.clients.meta_service import sign

    body = (b'{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":'
            b'{"metadata":{"phone_number_id":"' + PNID.encode() + b'"},"messages":[{"from":"351912345678",'
            b'"id":"wamid.U1","timestamp":"1750857384","type":"text","text":{"body":"Ol\\u00e1 \\ud83d\\ude00"}}]}}]}]}')
    resp = client.post(f"/webhooks/meta/{cloud_client.id}", data=body,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(APP_SECRET, body)})
    assert resp.status_code == 200
    [row] = reported(session, "inbound")
    assert row.payload["text"] == "Olá 😀" and row.payload["from_phone"] == "+351912345678"


def test_unknown_deleted_or_non_cloud_clients_are_404(client, session, cloud_client, redis_conn):
    from app.db import utcnow

    sim = factories.make_client(session, transport="sim",
                                secrets_encrypted=encrypt_json({"app_secret": APP_SECRET, "verify_token": VERIFY_TOKEN}))
    gone = factories.make_client(session, transport="cloud", deleted_at=utcnow(), config={"phone_number_id": PNID},
                                 secrets_encrypted=encrypt_json({"app_secret": APP_SECRET,
                                                                 "verify_token": VERIFY_TOKEN}))
    for client_id in ("cli_00000000000000000000000000", sim.id, gone.id):
        assert signed_post(client, client_id, INBOUND).status_code == 404
        resp = client.get(f"/webhooks/meta/{client_id}", query_string={
            "hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"})
        assert resp.status_code == 404
    assert queued_jobs(redis_conn) == []


def test_changes_for_another_phone_number_are_skipped(client, cloud_client, redis_conn):
    other = json.loads(json.dumps(INBOUND))
    other["entry"][0]["changes"][0]["value"]["metadata"]["phone_number_id"] = "999999"
    resp = signed_post(client, cloud_client.id, other)
    assert resp.status_code == 200 and resp.get_json()["messages"] == 0
    assert queued_jobs(redis_conn) == []


def test_other_inbound_kinds_become_text(client, session, cloud_client, redis_conn):
    payload = change({"messages": [
        {"from": "16315551181", "id": "wamid.L", "timestamp": "1", "type": "location",
         "location": {"latitude": 38.7, "longitude": -9.1, "name": "Shop", "address": "Rua 1"}},
        {"from": "16315551181", "id": "wamid.B", "timestamp": "1", "type": "interactive",
         "interactive": {"type": "button_reply", "button_reply": {"id": "yes", "title": "Yes please"}}},
        {"from": "16315551181", "id": "wamid.S", "timestamp": "1", "type": "sticker",
         "sticker": {"mime_type": "image/webp", "id": "777", "animated": False}},
        {"from": "16315551181", "id": "wamid.R", "timestamp": "1", "type": "reaction",
         "reaction": {"message_id": "wamid.OUT1", "emoji": ""}},
        {"from": "16315551181", "id": "wamid.X", "timestamp": "1", "type": "unsupported",
         "errors": [{"code": 131051, "title": "Message type unknown"}]},
    ]})
    assert signed_post(client, cloud_client.id, payload).status_code == 200
    got = {r.payload["external_id"]: r.payload for r in reported(session, "inbound")}
    assert got["wamid.L"]["text"] == "Shop, Rua 1 (38.7, -9.1)"
    assert got["wamid.B"]["text"] == "Yes please"
    assert got["wamid.S"]["type"] == "sticker" and got["wamid.S"]["media"]["id"] == "777"
    assert got["wamid.X"]["text"] == "[unsupported]"
    assert "wamid.R" not in got  # a removed reaction is not a message


def test_inbound_media_keeps_its_kind_sticker_and_voice_note_included(client, session, cloud_client, redis_conn):
    payload = change({"messages": [
        {"from": "16315551181", "id": "wamid.ST", "timestamp": "1", "type": "sticker",
         "sticker": {"mime_type": "image/webp", "sha256": "s1", "id": "701", "animated": False}},
        {"from": "16315551181", "id": "wamid.VO", "timestamp": "1", "type": "audio",
         "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": "s2", "id": "702", "voice": True}},
        {"from": "16315551181", "id": "wamid.AU", "timestamp": "1", "type": "audio",
         "audio": {"mime_type": "audio/mpeg", "sha256": "s3", "id": "703", "voice": False}},
        {"from": "16315551181", "id": "wamid.VI", "timestamp": "1", "type": "video",
         "video": {"mime_type": "video/mp4", "sha256": "s4", "id": "704", "caption": "the tour"}},
        {"from": "16315551181", "id": "wamid.DO", "timestamp": "1", "type": "document",
         "document": {"mime_type": "application/pdf", "sha256": "s5", "id": "705", "filename": "invoice.pdf"}},
    ]})
    assert signed_post(client, cloud_client.id, payload).status_code == 200
    got = {r.payload["external_id"]: r.payload for r in reported(session, "inbound")}
    assert {k: (v["type"], v["text"]) for k, v in got.items()} == {
        "wamid.ST": ("sticker", None), "wamid.VO": ("voice", None), "wamid.AU": ("audio", None),
        "wamid.VI": ("video", "the tour"), "wamid.DO": ("document", None)}
    assert got["wamid.ST"]["media"] == {"id": "701", "mime_type": "image/webp", "sha256": "s1", "provider": "meta"}
    assert got["wamid.VO"]["media"] == {"id": "702", "mime_type": "audio/ogg; codecs=opus", "sha256": "s2",
                                        "provider": "meta"}
    assert got["wamid.VI"]["media"]["caption"] == "the tour"
    assert got["wamid.DO"]["media"] == {"id": "705", "mime_type": "application/pdf", "sha256": "s5",
                                        "filename": "invoice.pdf", "provider": "meta"}


def test_a_client_without_app_secret_cannot_receive(client, session, redis_conn):
    bare = factories.make_client(session, transport="cloud", config={"phone_number_id": PNID},
                                 secrets_encrypted=encrypt_json({"access_token": "t"}))
    assert signed_post(client, bare.id, INBOUND).status_code == 401
    resp = client.get(f"/webhooks/meta/{bare.id}", query_string={"hub.mode": "subscribe", "hub.verify_token": "",
                                                                "hub.challenge": "1"})
    assert resp.status_code == 403
    assert queued_jobs(redis_conn) == []


# ----------------------------------------------------------------------------------- the whole way (real workers)


@pytest.mark.workers
def test_a_cloud_client_created_through_the_api_starts_ready_or_fails_on_a_bad_token(
        committed, committed_client, run_pool, graph):
    from tests.auth_helpers import principal_headers
    from tests.procs import wait_for

    org = factories.make_organization(committed)
    headers = principal_headers(committed, org, "admin")
    committed.commit()
    run_pool("default", WEBHOOK_ALLOW_PRIVATE="loopback")

    def create(token: str) -> str:
        resp = committed_client.post("/api/clients", headers=headers, json={
            "name": "Support line", "transport": "cloud",
            "config": {"phone_number_id": graph.phone_number_id, "waba_id": "102290129340398",
                       "base_url": graph.url, "access_token": token, "app_secret": APP_SECRET,
                       "verify_token": VERIFY_TOKEN}})
        assert resp.status_code == 201, resp.get_data(as_text=True)
        assert "access_token" not in resp.get_json()["config"]
        assert committed_client.post(f"/api/clients/{resp.get_json()['id']}/start", headers=headers).status_code == 202
        return resp.get_json()["id"]

    def body(client_id):
        return committed_client.get(f"/api/clients/{client_id}", headers=headers).get_json()

    good, bad = create(graph.access_token), create("EAA-revoked")
    wait_for(lambda: body(good)["status"] == "ready", timeout=30, message="the cloud client to be ready")
    assert body(good)["phone"] == "+15550783881"
    wait_for(lambda: body(bad)["status"] == "failed", timeout=30, message="the bad token to fail the client")
    assert "access token" in body(bad)["last_error"]

    # Meta's verification of the callback URL, then a signed callback, against the committed client
    resp = committed_client.get(f"/webhooks/meta/{good}", query_string={
        "hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "987654"})
    assert (resp.status_code, resp.get_data(as_text=True)) == (200, "987654")
    assert signed_post(committed_client, good, STATUSES).status_code == 200
