"""/api/media: uploads checked by content (each kind's type and limit, refused while streaming,
dangerous files), quota and usage, deduplication, fetches from a URL, each processing step
(metadata, EXIF stripped, re-encoding, thumbnails, failures), downloads with ``Range``, signed
links (expiry, tampering), deletion, retention, inbound media and their ``message.received``,
tenant scoping and permissions. Jobs run here in the test's transaction (the way a worker calls
them); tests/media/test_workers.py runs real workers."""
from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import zipfile
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from sqlalchemy import select, text, update

import jobs  # noqa: F401  (registers the actors: the outbox enqueues by name)
from app.media import fetching, processing, service
from app.messages.inbound import receive_inbound
from app.models import Media, Message, WebhookEvent
from app.storage import media_storage
from tests import factories as f
from tests.auth_helpers import api_key_headers, principal_headers

MB = 1024 * 1024


# ----------------------------------------------------------------------------------- files


def png(width=64, height=48, color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format="PNG")
    return out.getvalue()


def jpeg_with_exif(width=120, height=80) -> bytes:
    image = Image.new("RGB", (width, height), (10, 120, 200))
    exif = Image.Exif()
    exif[0x010F] = "Acme Phone"  # Make
    exif[0x0110] = "Model X"     # Model
    out = io.BytesIO()
    image.save(out, format="JPEG", exif=exif, quality=90)
    return out.getvalue()


def webp(size=512, frames=1) -> bytes:
    out = io.BytesIO()
    images = [Image.new("RGBA", (size, size), (i * 40 % 255, 100, 50, 255)) for i in range(frames)]
    images[0].save(out, format="WEBP", save_all=frames > 1, append_images=images[1:], duration=100, lossless=False)
    return out.getvalue()


def noise_png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, format="PNG")
    return out.getvalue()


def mp4(width=640, height=360, seconds=5) -> bytes:
    """A minimal MP4 (ftyp + moov with mvhd and one video track's tkhd and mdhd)."""
    def box(name: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + name + payload

    mvhd = box(b"mvhd", bytes(4) + bytes(8) + (1000).to_bytes(4, "big") + (seconds * 1000).to_bytes(4, "big")
               + bytes(80))
    tkhd = box(b"tkhd", b"\x00\x00\x00\x03" + bytes(72) + (width << 16).to_bytes(4, "big")
               + (height << 16).to_bytes(4, "big"))
    mdhd = box(b"mdhd", bytes(4) + bytes(8) + (1000).to_bytes(4, "big") + (seconds * 1000).to_bytes(4, "big")
               + bytes(4))
    hdlr = box(b"hdlr", bytes(4) + bytes(4) + b"vide" + bytes(12) + b"video\x00")
    trak = box(b"trak", tkhd + box(b"mdia", mdhd + hdlr))
    return box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2mp41") + box(b"moov", mvhd + trak)


def pdf(size=2048) -> bytes:
    return b"%PDF-1.7\n" + os.urandom(size)


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("payload.txt", "hello")
    return out.getvalue()


def upload(client, headers, content: bytes, filename="file.bin", content_type=None, **form):
    part = (io.BytesIO(content), filename, content_type) if content_type else (io.BytesIO(content), filename)
    return client.post("/api/media", data={**form, "file": part}, headers=headers,
                       content_type="multipart/form-data")


def uploaded(client, headers, content: bytes, filename="file.bin", **form) -> dict:
    r = upload(client, headers, content, filename, **form)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def ready(client, headers, content: bytes, filename="file.bin", **form) -> dict:
    """Upload and process (what the default pool does): the medium as the API shows it."""
    medium = uploaded(client, headers, content, filename, **form)
    assert processing.process(medium["id"]) == "ready"
    return client.get(f"/api/media/{medium['id']}", headers=headers).get_json()


def files_of(org_id: str) -> set[str]:
    root = media_storage().local_path(org_id)
    return {p.name for p in root.iterdir()} if root.exists() else set()


def events(session, kind: str) -> list[WebhookEvent]:
    session.expire_all()
    return session.scalars(select(WebhookEvent).where(WebhookEvent.type == kind)
                           .order_by(WebhookEvent.created_at)).all()


@pytest.fixture
def headers(admin_key_headers):
    return admin_key_headers


# ----------------------------------------------------------------------------------- uploads


def test_an_upload_is_typed_by_content_stored_under_its_id_and_processed_to_ready(session, client, org, headers):
    content = png()
    r = upload(client, headers, content, filename="../../holiday photo.jpg", content_type="application/pdf")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["id"].startswith("med_") and body["status"] == "processing" and body["source"] == "upload"
    assert (body["kind"], body["mime_type"], body["size"]) == ("image", "image/png", len(content))
    assert body["sha256"] == hashlib.sha256(content).hexdigest() and body["filename"] == "holiday photo.jpg"
    assert files_of(org.id) == {body["id"]}, "the file is named by its id, never by the user's name"
    outbox = session.execute(text("SELECT actor_name, args FROM job_outbox")).all()
    assert [(a, list(g)) for a, g in outbox] == [("media.process", [body["id"]])]
    r = client.post("/api/messages", json={"client_id": f.make_client(session, organization_id=org.id).id,
                                           "to": "+14155550123", "media_id": body["id"]}, headers=headers)
    assert r.status_code == 422 and "not ready" in r.get_json()["error"]["details"]["media_id"][0]

    assert processing.process(body["id"]) == "ready"
    shown = client.get(f"/api/media/{body['id']}", headers=headers).get_json()
    assert shown["status"] == "ready" and shown["ready_at"] and shown["error"] is None
    assert shown["metadata"] == {"width": 64, "height": 48, "animated": False}
    assert [e.payload["id"] for e in events(session, "media.ready")] == [body["id"]]
    assert processing.process(body["id"]) == "skipped", "a second delivery of the job changes nothing"


@pytest.mark.parametrize("make,kind,mime", [
    (png, "image", "image/png"), (jpeg_with_exif, "image", "image/jpeg"), (lambda: webp(64), "image", "image/webp"),
    (mp4, "video", "video/mp4"), (pdf, "document", "application/pdf"),
    (lambda: b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01" + bytes(200), "audio", "audio/ogg"),
    (lambda: b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(500), "audio", "audio/mpeg"),
    (lambda: b"#!AMR\n" + bytes(300), "audio", "audio/amr"),
    (lambda: b"name,phone\nAnn,+14155550123\n", "document", "text/plain"),
    (lambda: zip_bytes(), "document", "application/zip"),
])
def test_each_kind_is_recognised_by_its_content(client, headers, make, kind, mime):
    body = uploaded(client, headers, make(), filename="upload.dat")
    assert (body["kind"], body["mime_type"]) == (kind, mime)


def test_video_and_image_metadata(client, headers):
    video = ready(client, headers, mp4(640, 360, 5), "clip.mp4")
    assert video["metadata"]["width"] == 640 and video["metadata"]["height"] == 360
    assert video["metadata"]["duration_seconds"] == pytest.approx(5.0)
    sticker = ready(client, headers, webp(512, frames=3), "wave.webp", kind="sticker")
    assert sticker["kind"] == "sticker" and sticker["metadata"]["animated"] is True


@pytest.mark.parametrize("content,filename,words", [
    (b"MZ\x90\x00" + bytes(600), "invoice.pdf", "Executable"),
    (b"\x7fELF\x02\x01\x01" + bytes(600), "photo.jpg", "Executable"),
    (b"#!/bin/sh\nrm -rf /\n", "notes.txt", "scripts"),
    (b"<!DOCTYPE html><html><script>alert(1)</script></html>", "page.txt", "HTML"),
    (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "logo.svg",
     "script"),
    (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><rect/></svg>', "logo.svg", "script"),
    (zip_bytes(), "photo.jpg", "archive posing"),
    (png() + zip_bytes(), "cat.png", "polyglot"),
    (jpeg_with_exif() + b"<?php system($_GET['c']); ?>", "cat.jpg", "polyglot"),
])
def test_dangerous_files_are_refused_and_nothing_is_kept(session, client, org, headers, content, filename, words):
    r = upload(client, headers, content, filename=filename)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "media_type_refused" and words in error["message"], error
    assert files_of(org.id) == set() and session.scalars(select(Media)).all() == []


def test_an_svg_without_script_is_a_document(client, headers):
    body = uploaded(client, headers, b'<svg xmlns="http://www.w3.org/2000/svg"><rect width="4"/></svg>', "a.svg")
    assert (body["kind"], body["mime_type"]) == ("document", "image/svg+xml")


@pytest.mark.parametrize("content,kind,limit", [
    (b"\xff\xd8\xff\xe0" + bytes(5 * MB), "image", 5 * MB),
    (mp4() + bytes(16 * MB), "video", 16 * MB),
    (webp(512) + bytes(100 * 1024), "sticker", 100 * 1024),
])
def test_a_file_over_its_kinds_limit_is_refused_while_streaming(session, client, org, headers, content, kind,
                                                                limit):
    form = {"kind": "sticker"} if kind == "sticker" else {}
    r = upload(client, headers, content, filename="big", **form)
    assert r.status_code == 413, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "payload_too_large" and error["details"]["limit_bytes"] == limit
    assert error["details"]["kind"] == kind
    assert files_of(org.id) == set() and session.scalars(select(Media)).all() == []


def test_the_stream_stops_at_the_limit(session, org, headers, override_settings):
    """Refused while streaming: the upload reads little more than the limit of a huge body."""
    from app.errors import PayloadTooLarge
    from app.security.principal import SystemPrincipal

    class Endless(io.RawIOBase):
        read_bytes = 0

        def readable(self):
            return True

        def readinto(self, buf):
            if self.read_bytes == 0:
                head = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n\r\n'
                        b"\xff\xd8\xff\xe0")
                buf[:len(head)] = head
                self.read_bytes += len(head)
                return len(head)
            n = len(buf)
            buf[:n] = bytes(n)
            self.read_bytes += n
            return n

    stream = Endless()
    with pytest.raises(PayloadTooLarge):
        service.upload(session, SystemPrincipal(org.id), io.BufferedReader(stream), "B")
    assert 5 * MB < stream.read_bytes < 6 * MB


def test_a_kind_that_does_not_match_the_content_is_refused(client, headers):
    r = upload(client, headers, pdf(), "doc.pdf", kind="image")
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "media_kind_mismatch"
    r = upload(client, headers, png(), "a.png", kind="sticker")
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "media_kind_mismatch"
    body = uploaded(client, headers, png(), "a.png", kind="document")  # any file may go as a document
    assert body["kind"] == "document" and body["mime_type"] == "image/png"


def test_a_sticker_must_be_512_pixels_square(session, client, headers):
    body = uploaded(client, headers, webp(256), "small.webp", kind="sticker")
    assert processing.process(body["id"]) == "failed"
    shown = client.get(f"/api/media/{body['id']}", headers=headers).get_json()
    assert shown["status"] == "failed" and "512x512" in shown["error"]
    assert [e.payload["id"] for e in events(session, "media.failed")] == [body["id"]]


def test_a_corrupt_image_fails_processing_with_the_reason(client, headers):
    body = uploaded(client, headers, b"\x89PNG\r\n\x1a\n" + os.urandom(3000), "broken.png")
    assert processing.process(body["id"]) == "failed"
    shown = client.get(f"/api/media/{body['id']}", headers=headers).get_json()
    assert shown["status"] == "failed" and "cannot be read" in shown["error"]
    r = client.get(f"/api/media/{body['id']}/download", headers=headers)
    assert r.status_code == 409 and r.get_json()["error"]["code"] == "media_not_ready"


def test_bad_requests_get_clear_errors(client, headers):
    r = client.post("/api/media", data={"kind": "image"}, headers=headers, content_type="multipart/form-data")
    assert r.status_code == 422 and "file" in r.get_json()["error"]["details"]
    r = upload(client, headers, b"", "empty.txt")
    assert r.status_code == 422 and "empty" in r.get_json()["error"]["message"]
    r = upload(client, headers, png(), "a.png", kind="gif")
    assert r.status_code == 422 and "kind" in r.get_json()["error"]["details"]
    r = client.post("/api/media", json={}, headers=headers)
    assert r.status_code == 422 and "url" in r.get_json()["error"]["details"]
    r = client.post("/api/media", data=b"plain", headers={**headers, "Content-Type": "text/plain"})
    assert r.status_code == 415
    cut = (b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + png())
    r = client.post("/api/media", data=cut, headers={**headers, "Content-Type": "multipart/form-data; boundary=B"})
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "invalid_multipart"


# ----------------------------------------------------------------------------------- quota and dedupe


def test_the_same_bytes_uploaded_again_return_the_existing_medium(session, client, org, headers):
    first = uploaded(client, headers, png(), "a.png")
    again = upload(client, headers, png(), "b.png")
    assert again.status_code == 200 and again.get_json()["id"] == first["id"]
    assert files_of(org.id) == {first["id"]}
    usage = client.get("/api/media/usage", headers=headers).get_json()
    assert usage["files"] == 1 and usage["bytes"] == first["size"]
    other_org = f.make_organization(session)
    theirs = uploaded(client, api_key_headers(session, other_org.id, "admin"), png(), "a.png")
    assert theirs["id"] != first["id"], "deduplication is per organisation"


def test_quota_of_bytes_and_files(session, client, org, headers, override_settings):
    override_settings(MEDIA_QUOTA_BYTES=3000, MEDIA_QUOTA_FILES=2)
    first = uploaded(client, headers, pdf(1000), "a.pdf")
    r = upload(client, headers, pdf(2500), "b.pdf")
    assert r.status_code == 422 and r.get_json()["error"]["code"] == "media_quota_exceeded"
    assert files_of(org.id) == {first["id"]}
    uploaded(client, headers, pdf(500), "c.pdf")
    r = upload(client, headers, pdf(10), "d.pdf")
    assert r.status_code == 422 and r.get_json()["error"]["details"]["quota_files"] == 2
    assert client.get("/api/media/usage", headers=headers).get_json() == {
        "bytes": 1009 + 509, "files": 2, "quota_bytes": 3000, "quota_files": 2}
    assert client.delete(f"/api/media/{first['id']}", headers=headers).status_code == 204
    assert client.get("/api/media/usage", headers=headers).get_json()["files"] == 1, "a delete frees it at once"
    uploaded(client, headers, pdf(10), "e.pdf")
    session.execute(text("INSERT INTO organization_settings (organization_id, media_quota_files) VALUES (:o, 10) "
                         "ON CONFLICT (organization_id) DO UPDATE SET media_quota_files = 10"), {"o": org.id})
    assert client.get("/api/media/usage", headers=headers).get_json()["quota_files"] == 10, "its own setting wins"


# ----------------------------------------------------------------------------------- processing


def test_exif_is_stripped_from_the_copy_sent_and_the_original_kept(client, headers):
    content = jpeg_with_exif()
    body = ready(client, headers, content, "photo.jpg")
    assert body["metadata"]["stripped"] == ["exif"] and body["metadata"]["sent"]["mime_type"] == "image/jpeg"
    original = client.get(f"/api/media/{body['id']}/download", headers=headers)
    assert original.data == content
    sent = client.get(f"/api/media/{body['id']}/download?variant=sent", headers=headers)
    assert sent.status_code == 200 and sent.data != content
    assert dict(Image.open(io.BytesIO(sent.data)).getexif()) == {}
    assert Image.open(io.BytesIO(original.data)).getexif()[0x010F] == "Acme Phone"


def test_an_image_over_5_mb_is_refused_unless_reencoded_and_then_sent_under_it(client, headers):
    big = noise_png(1500, 1250)
    assert 5 * MB < len(big) < 25 * MB
    r = upload(client, headers, big, "noise.png")
    assert r.status_code == 413 and r.get_json()["error"]["details"]["limit_bytes"] == 5 * MB
    body = ready(client, headers, big, "noise.png", reencode="true")
    assert body["metadata"]["reencoded"] is True and body["metadata"]["sent"]["mime_type"] == "image/jpeg"
    sent = client.get(f"/api/media/{body['id']}/download?variant=sent", headers=headers)
    assert len(sent.data) <= 5 * MB and sent.data[:3] == b"\xff\xd8\xff"
    assert body["metadata"]["sent"]["size"] == len(sent.data)


def test_a_thumbnail_is_made_for_images(client, headers):
    body = ready(client, headers, png(1000, 500), "wide.png")
    r = client.get(f"/api/media/{body['id']}/download?variant=thumbnail", headers=headers)
    assert r.status_code == 404, "no thumbnail before its job ran"
    assert processing.thumbnail(body["id"]) == "done"
    assert client.get(f"/api/media/{body['id']}", headers=headers).get_json()["thumbnail"] is True
    r = client.get(f"/api/media/{body['id']}/download?variant=thumbnail", headers=headers)
    thumb = Image.open(io.BytesIO(r.data))
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and thumb.size == (320, 160)
    document = ready(client, headers, pdf(), "a.pdf")
    assert processing.thumbnail(document["id"]) == "skipped"


# ----------------------------------------------------------------------------------- downloads and links


def test_download_streams_the_file_with_its_type_name_and_ranges(client, headers):
    content = pdf(10_000)
    body = ready(client, headers, content, "Relevé été.pdf")
    url = f"/api/media/{body['id']}/download"
    r = client.get(url, headers=headers)
    assert r.status_code == 200 and r.data == content and r.mimetype == "application/pdf"
    assert r.headers["Accept-Ranges"] == "bytes" and r.headers["Content-Length"] == str(len(content))
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "attachment" in r.headers["Content-Disposition"]
    assert "filename*=UTF-8''Relev%C3%A9%20%C3%A9t%C3%A9.pdf" in r.headers["Content-Disposition"]
    for header, start, end in (("bytes=0-9", 0, 9), ("bytes=100-", 100, len(content) - 1),
                               ("bytes=-5", len(content) - 5, len(content) - 1)):
        r = client.get(url, headers={**headers, "Range": header})
        assert r.status_code == 206 and r.data == content[start:end + 1], header
        assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(content)}"
    r = client.get(url, headers={**headers, "Range": f"bytes={len(content) + 10}-"})
    assert r.status_code == 416 and r.get_json()["error"]["code"] == "range_not_satisfiable"
    assert r.headers["Content-Range"] == f"bytes */{len(content)}"
    r = client.get(url, headers={**headers, "Range": "bytes=0-9", "If-Range": '"another-version"'})
    assert r.status_code == 200 and r.data == content, "If-Range of another version: the whole file"


def test_a_signed_link_works_without_credentials_until_it_expires(session, client, headers):
    content = pdf(3000)
    body = ready(client, headers, content, "a.pdf")
    r = client.post(f"/api/media/{body['id']}/link", json={"ttl": 600}, headers=headers)
    assert r.status_code == 200
    link = r.get_json()
    expires = datetime.fromisoformat(link["expires_at"])
    assert timedelta(seconds=590) < expires - datetime.now(UTC) <= timedelta(seconds=600)
    path = link["url"].split("://", 1)[1].split("/", 1)[1]
    r = client.get("/" + path)  # no credentials
    assert r.status_code == 200 and r.data == content
    r = client.get("/" + path, headers={"Range": "bytes=0-3"})
    assert r.status_code == 206 and r.data == content[:4]
    token = path.split("token=", 1)[1]
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    r = client.get(f"/api/media/{body['id']}/signed-download?token={tampered}")
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "invalid_link"
    other = ready(client, headers, pdf(100), "b.pdf")
    r = client.get(f"/api/media/{other['id']}/signed-download?token={token}")
    assert r.status_code == 403, "a link opens only its own medium"
    medium = session.get(Media, body["id"])
    expired = service.signed_link(medium, ttl=-1)["url"].split("/", 3)[3]
    r = client.get("/" + expired)
    assert r.status_code == 410 and r.get_json()["error"]["code"] == "link_expired"
    assert client.delete(f"/api/media/{body['id']}", headers=headers).status_code == 204
    assert client.get("/" + path).status_code == 404, "a deleted medium is gone for its links too"


def test_signed_downloads_are_not_held_to_the_per_ip_limit_of_public_pages(session, client, headers,
                                                                            override_settings):
    body = ready(client, headers, pdf(200), "a.pdf")
    path = service.signed_link(session.get(Media, body["id"]))["url"].split("/", 3)[3]
    override_settings(RATE_LIMIT_ENABLED=True, RATE_LIMIT_PUBLIC="2 per minute")
    assert [client.get("/" + path).status_code for _ in range(4)] == [200] * 4, "Meta fetching many media"
    statuses = [client.post("/api/auth/login", json={"email": "x@example.test", "password": "wrong password"})
                .status_code for _ in range(3)]
    assert statuses[-1] == 429, "while the login page keeps its limit"


# ----------------------------------------------------------------------------------- delete and retention


def test_delete_removes_the_files_but_not_while_a_queued_message_uses_it(session, client, org, headers):
    body = ready(client, headers, png(), "a.png")
    processing.thumbnail(body["id"])
    cli = f.make_client(session, organization_id=org.id)
    message = f.make_message(session, organization_id=org.id, client_id=cli.id, type="image", media_id=body["id"],
                             status="queued")
    r = client.delete(f"/api/media/{body['id']}", headers=headers)
    assert r.status_code == 409 and r.get_json()["error"]["details"]["used_by"] == ["messages"]
    session.execute(update(Message).where(Message.id == message.id).values(status="sent"))
    assert client.delete(f"/api/media/{body['id']}", headers=headers).status_code == 204
    assert files_of(org.id) == set(), "the file and its thumbnail are deleted"
    assert client.get(f"/api/media/{body['id']}", headers=headers).status_code == 404


def test_retention_deletes_expired_media_nothing_needs(session, client, org, headers, override_settings):
    override_settings(MEDIA_RETENTION_DAYS=30)
    old, kept, fresh = (ready(client, headers, pdf(100 + i), f"{i}.pdf") for i in range(3))
    assert datetime.fromisoformat(fresh["expires_at"]) - datetime.now(UTC) > timedelta(days=29)
    session.execute(update(Media).where(Media.id.in_([old["id"], kept["id"]]))
                    .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
    cli = f.make_client(session, organization_id=org.id)
    f.make_message(session, organization_id=org.id, client_id=cli.id, type="document", media_id=kept["id"],
                   status="queued")
    assert processing.expire() == 1
    assert client.get(f"/api/media/{old['id']}", headers=headers).status_code == 404
    assert session.get(Media, old["id"]) is None, "an expired medium's row goes with its file"
    assert {kept["id"], fresh["id"]} <= files_of(org.id) and old["id"] not in files_of(org.id)
    assert client.delete(f"/api/media/{fresh['id']}", headers=headers).status_code == 204
    session.execute(update(Media).where(Media.id == fresh["id"]).values(deleted_at=datetime.now(UTC) - timedelta(days=31)))
    processing.expire()
    assert session.get(Media, fresh["id"]) is None, "a deleted medium's row is kept as long as retention, then goes"
    override_settings(MEDIA_RETENTION_DAYS=0)
    assert uploaded(client, headers, pdf(7), "forever.pdf")["expires_at"] is None


# ----------------------------------------------------------------------------------- from a URL


class _Files(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        status, headers, body = self.routes.get(self.path, (404, {}, b"not here"))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server(allow_loopback):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    _Files.routes = {}
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", _Files.routes
    server.shutdown()


def test_a_url_is_fetched_by_a_worker_then_processed(session, client, headers, file_server):
    base, routes = file_server
    content = png(30, 20)
    routes["/img/menu"] = (200, {"Content-Type": "application/octet-stream"}, content)
    routes["/moved"] = (302, {"Location": "/img/menu"}, b"")
    r = client.post("/api/media", json={"url": f"{base}/moved", "filename": "menu.png"}, headers=headers)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert body["status"] == "processing" and body["source"] == "url" and body["size"] == 0
    assert fetching.fetch_url(body["id"]) == "stored"
    assert processing.process(body["id"]) == "ready"
    shown = client.get(f"/api/media/{body['id']}", headers=headers).get_json()
    assert (shown["kind"], shown["mime_type"], shown["size"]) == ("image", "image/png", len(content))
    assert shown["filename"] == "menu.png" and shown["sha256"] == hashlib.sha256(content).hexdigest()
    assert client.get(f"/api/media/{body['id']}/download", headers=headers).data == content


def test_a_url_that_fails_or_sends_a_dangerous_file_gives_a_failed_medium(session, client, headers, file_server):
    base, routes = file_server
    routes["/tool.exe"] = (200, {}, b"MZ\x90\x00" + bytes(1000))
    for path, words in (("/missing", "answered 404"), ("/tool.exe", "Executable")):
        body = client.post("/api/media", json={"url": base + path}, headers=headers).get_json()
        assert fetching.fetch_url(body["id"]) == "failed"
        shown = client.get(f"/api/media/{body['id']}", headers=headers).get_json()
        assert shown["status"] == "failed" and words in shown["error"], shown
    assert len(events(session, "media.failed")) == 2


def test_a_private_address_is_refused(client, headers):
    r = client.post("/api/media", json={"url": "http://169.254.169.254/latest/meta-data"}, headers=headers)
    assert r.status_code == 422 and "url" in r.get_json()["error"]["details"]


# ----------------------------------------------------------------------------------- inbound media


def test_an_inbound_medium_with_its_bytes_is_stored_and_announced_once_ready(session, client, org, headers):
    cli = f.make_client(session, organization_id=org.id, status="ready")
    content = jpeg_with_exif()
    payload = {"external_id": "in-photo-1", "from_phone": "+14155550177", "type": "image", "text": None,
               "media": {"mime_type": "image/jpeg", "data_b64": base64.b64encode(content).decode(),
                         "caption": "look"}, "timestamp": datetime.now(UTC).isoformat()}
    message = receive_inbound(session, cli.id, payload)
    assert message.type == "image" and message.caption == "look" and message.media_id
    assert events(session, "message.received") == [], "announced once the medium is stored and checked"
    medium = session.get(Media, message.media_id)
    assert (medium.source, medium.client_id, medium.size_bytes) == ("inbound", cli.id, len(content))
    assert processing.process(medium.id) == "ready"
    [received] = events(session, "message.received")
    data = received.payload
    assert data["id"] == message.id and data["media_id"] == medium.id
    assert data["media"]["kind"] == "image" and data["media"]["size"] == len(content)
    assert data["media"]["sha256"] == hashlib.sha256(content).hexdigest() and data["media"]["status"] == "ready"
    path = data["media"]["url"].split("/", 3)[3]
    assert client.get("/" + path).data == content
    listed = client.get("/api/media?status=ready", headers=headers).get_json()["items"]
    assert [m["id"] for m in listed] == [medium.id]


def test_an_inbound_medium_that_is_refused_is_still_announced(session, org):
    cli = f.make_client(session, organization_id=org.id, status="ready")
    payload = {"external_id": "in-exe", "from_phone": "+14155550178", "type": "document",
               "media": {"mime_type": "application/pdf", "data_b64": base64.b64encode(b"MZ" + bytes(99)).decode(),
                         "filename": "invoice.pdf"}}
    message = receive_inbound(session, cli.id, payload)
    [received] = events(session, "message.received")
    media = received.payload["media"]
    assert media["status"] == "failed" and "Executable" in media["error"] and media["url"] is None
    assert received.payload["id"] == message.id


# ----------------------------------------------------------------------------------- scoping and roles


def test_media_are_scoped_to_their_organisation(session, client, headers):
    body = ready(client, headers, pdf(), "mine.pdf")
    theirs = api_key_headers(session, f.make_organization(session).id, "admin")
    for method, path in (("get", ""), ("get", "/download"), ("delete", ""), ("post", "/link")):
        r = getattr(client, method)(f"/api/media/{body['id']}{path}", headers=theirs,
                                    **({"json": {}} if method == "post" else {}))
        assert r.status_code == 404, (method, path)
    assert client.get("/api/media", headers=theirs).get_json()["items"] == []


def test_viewers_read_media_but_cannot_upload_or_delete(session, client, org, headers):
    body = ready(client, headers, pdf(), "a.pdf")
    viewer = principal_headers(session, org, "viewer")
    assert client.get(f"/api/media/{body['id']}", headers=viewer).status_code == 200
    assert client.get(f"/api/media/{body['id']}/download", headers=viewer).status_code == 200
    r = upload(client, viewer, png(), "a.png")
    assert r.status_code == 403 and r.get_json()["error"]["details"]["required_permission"] == "media:write"
    assert client.delete(f"/api/media/{body['id']}", headers=viewer).status_code == 403


def test_uploads_and_deletes_are_audited(session, client, headers):
    from app.models import AuditLog

    body = uploaded(client, headers, pdf(), "a.pdf")
    client.delete(f"/api/media/{body['id']}", headers=headers)
    actions = [a.action for a in session.scalars(select(AuditLog).where(AuditLog.target_id == body["id"])
                                                 .order_by(AuditLog.created_at))]
    assert actions == ["media.upload", "media.delete"]


def test_a_sim_contact_sends_a_voice_note_and_a_photo(session, client, org, headers):
    from app.inbox.apply import apply_due

    cli = f.make_client(session, organization_id=org.id, status="ready")
    voice = uploaded(client, headers, b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01" + bytes(200),
                     "note.ogg")
    processing.process(voice["id"])
    photo = ready(client, headers, png(40, 30), "photo.png")
    for body in ({"from": "+14155550190", "media_id": voice["id"], "type": "voice"},
                 {"from": "+14155550190", "media_id": photo["id"], "text": "our shop"}):
        r = client.post(f"/api/clients/{cli.id}/sim/inbound", json=body, headers=headers)
        assert r.status_code == 202, r.get_json()
    assert apply_due() >= 2
    session.expire_all()
    got = session.scalars(select(Message).where(Message.client_id == cli.id, Message.direction == "inbound")
                          .order_by(Message.created_at)).all()
    assert [(m.type, m.caption) for m in got] == [("voice", None), ("image", "our shop")]
    copies = [session.get(Media, m.media_id) for m in got]
    assert all(c.source == "inbound" and c.id not in (voice["id"], photo["id"]) for c in copies)
    for copy in copies:
        assert processing.process(copy.id) == "ready"
    assert [e.payload["media"]["kind"] for e in events(session, "message.received")] == ["audio", "image"]
    r = client.post(f"/api/clients/{cli.id}/sim/inbound", json={"from": "+14155550190"}, headers=headers)
    assert r.status_code == 422 and "text" in r.get_json()["error"]["details"]
    r = client.post(f"/api/clients/{cli.id}/sim/inbound", json={"from": "+14155550190", "media_id": "med_nope"},
                    headers=headers)
    assert r.status_code == 422 and "media_id" in r.get_json()["error"]["details"]


def test_media_on_s3_storage(s3_settings, session, client, org, headers):
    """The same life on an S3-compatible store (moto's S3 server over HTTP): streamed in, checked,
    processed (the copy sent and the thumbnail written there too), ranged downloads, signed links,
    and a delete that removes every object."""
    content = jpeg_with_exif(900, 600)
    body = ready(client, headers, content, "photo.jpg")
    assert processing.thumbnail(body["id"]) == "done"
    medium = session.get(Media, body["id"])
    files = media_storage()
    assert type(files).__name__ == "S3FileStorage"
    keys = [medium.storage_key, medium.send_key, medium.thumbnail_key]
    assert all(k and files.size(k) for k in keys) and files.size(medium.storage_key) == len(content)
    r = client.get(f"/api/media/{body['id']}/download", headers={**headers, "Range": "bytes=2-11"})
    assert r.status_code == 206 and r.data == content[2:12]
    link = client.post(f"/api/media/{body['id']}/link", json={}, headers=headers).get_json()["url"]
    assert client.get("/" + link.split("/", 3)[3]).data == content
    assert client.delete(f"/api/media/{body['id']}", headers=headers).status_code == 204
    assert [files.size(k) for k in keys] == [None, None, None]
