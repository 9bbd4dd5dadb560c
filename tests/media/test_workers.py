"""Media through real processes: uploads and a URL fetch processed by a ``default`` pool worker
(ready, thumbnails, one ``media.ready`` each), then sent as image and document messages by the
``messages`` pool on the sim network (delivered, each once)."""
from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image
from sqlalchemy import func, select

import jobs  # noqa: F401
from app.models import Media, Message, WebhookEvent
from tests import factories as f
from tests.procs import wait_for

pytestmark = pytest.mark.workers


def png(color) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (800, 600), color).save(out, format="PNG")
    return out.getvalue()


def shown(client, headers, media_id: str) -> dict:
    return client.get(f"/api/media/{media_id}", headers=headers).get_json()


def test_uploads_and_a_fetch_are_processed_by_a_worker_and_sent_on_the_sim_network(
        committed, committed_client, committed_org, committed_headers, run_pool, override_settings):
    override_settings(WEBHOOK_ALLOW_PRIVATE="loopback")  # the file server below is on this machine
    content = png((1, 2, 3))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run_pool("default", WEBHOOK_ALLOW_PRIVATE="loopback")
        run_pool("messages")
        ids = []
        for i in range(3):
            r = committed_client.post("/api/media", data={"file": (io.BytesIO(png((i, 100, 200))), f"p{i}.png")},
                                      headers=committed_headers, content_type="multipart/form-data")
            assert r.status_code == 201, r.get_json()
            ids.append(r.get_json()["id"])
        pdf = b"%PDF-1.7\n" + bytes(range(256)) * 40
        r = committed_client.post("/api/media", data={"file": (io.BytesIO(pdf), "price list.pdf")},
                                  headers=committed_headers, content_type="multipart/form-data")
        ids.append(r.get_json()["id"])
        r = committed_client.post("/api/media", json={"url": f"http://127.0.0.1:{server.server_port}/x.png"},
                                  headers=committed_headers)
        assert r.status_code == 202, r.get_json()
        fetched = r.get_json()["id"]
        ids.append(fetched)
        wait_for(lambda: all(shown(committed_client, committed_headers, i)["status"] != "processing" for i in ids),
                 timeout=60, message="every medium processed")
        bodies = [shown(committed_client, committed_headers, i) for i in ids]
        assert [b["status"] for b in bodies] == ["ready"] * 5, [b["error"] for b in bodies]
        assert bodies[-1]["size"] == len(content) and bodies[-1]["mime_type"] == "image/png"
        images = [i for i, b in zip(ids, bodies, strict=True) if b["kind"] == "image"]
        wait_for(lambda: all(shown(committed_client, committed_headers, i)["thumbnail"] for i in images),
                 timeout=60, message="thumbnails made")
        committed.rollback()
        ready_events = committed.scalar(select(func.count()).select_from(WebhookEvent)
                                        .where(WebhookEvent.type == "media.ready"))
        assert ready_events == 5

        cli = f.make_client(committed, organization_id=committed_org.id, status="ready", phone="+14155559000",
                            min_gap_ms=10, max_gap_ms=20, per_minute=10_000, per_hour=100_000, per_day=1_000_000,
                            config={"deliver_after_ms": 50, "read_after_ms": 100})
        committed.commit()
        sent = []
        for media_id, to in ((ids[0], "+14155559001"), (ids[3], "+14155559002")):
            r = committed_client.post("/api/messages", json={"client_id": cli.id, "to": to, "media_id": media_id,
                                                             "caption": "for you"}, headers=committed_headers)
            assert r.status_code == 202, r.get_json()
            sent.append(r.get_json()["id"])

        def statuses():
            committed.rollback()
            return {m.id: m.status for m in committed.scalars(select(Message).where(Message.id.in_(sent)))}

        wait_for(lambda: set(statuses().values()) <= {"delivered", "read"}, timeout=60, message="media delivered")
        kinds = {m.id: m.type for m in committed.scalars(select(Message).where(Message.id.in_(sent)))}
        assert kinds == {sent[0]: "image", sent[1]: "document"}
        network = committed_client.get(f"/api/clients/{cli.id}/sim/network", headers=committed_headers).get_json()
        assert network["received"] == 2 and network["duplicates"] == 0, network
        committed.rollback()
        assert committed.get(Media, ids[0]).deleted_at is None
    finally:
        server.shutdown()
