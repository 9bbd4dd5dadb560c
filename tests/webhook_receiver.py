"""A webhook receiver on loopback: real HTTP, every request recorded, replies scripted per path.

    with Receiver() as rx:
        url = rx.url("/a")                                   # http://127.0.0.1:<port>/a
        rx.script("/a", Reply(500), Reply(200))              # the next replies on /a, then 200s
        rx.always("/gone", Reply(410))                       # every reply on /gone
        rx.always("/slow", Reply(200, hold=True))            # held until rx.release() (or 60 s)
        rx.wait_for(2, path="/a")                            # blocks until 2 requests on /a
        rx.requests("/a")[0].json

Speaks HTTP/1.1 with keep-alive (like a real server behind a load balancer). Used by the tests
and by bench/bench_webhooks.py.
"""
from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    status: int = 200
    body: bytes | str = b"ok"
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0
    hold: bool = False  # wait for release() before answering


@dataclass
class Received:
    path: str
    headers: dict            # lower-cased names
    body: bytes
    received_at: float       # time.time()

    @property
    def json(self):
        return json.loads(self.body)


class Receiver:
    def __init__(self, host: str = "127.0.0.1"):
        self.host = host
        self._lock = threading.Condition()
        self._scripts: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._always: dict[str, Reply] = {}
        self._received: list[Received] = []
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self.on_request = None  # optional callable(Received), e.g. the benchmark's latency probe

    # --- lifecycle

    def start(self) -> Receiver:
        handler = type("Handler", (_Handler,), {"receiver": self})
        self._server = _QuietServer((self.host, 0), handler)
        self._server.daemon_threads = True
        self._server.request_queue_size = 256
        threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    # --- scripting

    def script(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self._scripts[path].extend(replies)

    def always(self, path: str, reply: Reply) -> None:
        with self._lock:
            self._always[path] = reply

    def release(self) -> None:
        self._release.set()

    def _reply_for(self, path: str) -> Reply:
        with self._lock:
            if self._scripts[path]:
                return self._scripts[path].popleft()
            return self._always.get(path, Reply())

    # --- what arrived

    def _record(self, item: Received) -> None:
        with self._lock:
            self._received.append(item)
            self._lock.notify_all()
        if self.on_request:
            self.on_request(item)

    def requests(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.requests(path))

    def wait_for(self, count: int, path: str | None = None, timeout: float = 30) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [r for r in self._received if path is None or r.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {count} request(s) on "
                                         f"{path or 'any path'}; got {len(got)}")
                self._lock.wait(min(left, 0.5))


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:  # clients that hang up (timeouts) are expected
        pass


class _Handler(BaseHTTPRequestHandler):
    receiver: Receiver
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        self.receiver._record(Received(path=path, headers={k.lower(): v for k, v in self.headers.items()},
                                       body=body, received_at=time.time()))
        reply = self.receiver._reply_for(path)
        if reply.hold:
            self.receiver._release.wait(60)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            self.close_connection = True

    do_PUT = do_GET = do_POST


# --------------------------------------------------------------------------- for the tests

def verify_signature(secret: str, headers: dict, body: bytes, *, tolerance_s: float | None = 300,
                     now: float | None = None) -> bool:
    """The receiving side of Standard Webhooks, written from the spec with the standard library
    only (independent of app/webhooks/signing.py): True when one ``v1`` signature of the
    ``webhook-signature`` header is the HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the
    base64-decoded part of ``secret`` after ``whsec_``, and the timestamp is within tolerance."""
    import base64
    import hashlib
    import hmac

    headers = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp, signatures = (headers.get("webhook-id"), headers.get("webhook-timestamp"),
                                     headers.get("webhook-signature"))
    if not (msg_id and timestamp and signatures and timestamp.isdigit()):
        return False
    if tolerance_s is not None and abs((now or time.time()) - int(timestamp)) > tolerance_s:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    for item in signatures.split(" "):
        version, _, sig = item.partition(",")
        if version == "v1" and hmac.compare_digest(base64.b64decode(sig), expected):
            return True
    return False


def queued_jobs(redis_conn, queue: str = "webhooks") -> list[tuple[str, list, dict]]:
    """(actor, args, options) of the messages waiting in a queue, its delay queue included."""
    out = []
    for name in (f"dramatiq:{queue}.msgs", f"dramatiq:{queue}.DQ.msgs"):
        for raw in redis_conn.hvals(name):
            data = json.loads(raw)
            out.append((data["actor_name"], data["args"], data.get("options") or {}))
    return out

