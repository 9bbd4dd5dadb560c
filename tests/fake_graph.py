"""A fake Graph API (the WhatsApp Cloud API) on loopback: real HTTP, recorded requests, scripted errors.

    with FakeGraph() as graph:
        config = {"phone_number_id": graph.phone_number_id, "base_url": graph.url}
        graph.fail_next(http_status=400, code=131047, message="Re-engagement message")
        ...
        graph.requests[-1].json

It serves what CloudTransport uses: ``GET /{version}/{phone_number_id}``, ``POST
/{version}/{phone_number_id}/messages``, ``POST /{version}/{phone_number_id}/media`` (multipart),
``GET /{version}/{media_id}`` and the file behind it. A bad bearer token gets Meta's 401 / code 190.
It is also a plain-HTTP forward proxy (a request line with an absolute URI is served as if it had
reached the server itself), so tests can check that a client really talks through its proxy.
"""
from __future__ import annotations

import io
import itertools
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from werkzeug.formparser import parse_form_data


@dataclass
class Recorded:
    method: str
    path: str                # without the query string or the proxy's scheme://host
    query: dict
    headers: dict
    body: bytes
    proxied: bool            # the request line carried an absolute URI (it came through as a proxy)
    json: object = None
    form: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)   # name -> (filename, content_type, bytes)


@dataclass
class Scripted:
    http_status: int | None = None
    body: dict | None = None
    delay_s: float = 0.0
    headers: dict = field(default_factory=dict)
    path_suffix: str | None = None


class FakeGraph:
    def __init__(self, access_token: str = "EAAG-test-token", phone_number_id: str = "106540352242922",
                 display_phone_number: str = "+1 555-078-3881", version: str = "v21.0",
                 waba_id: str = "102290129340398"):
        self.access_token, self.phone_number_id, self.waba_id = access_token, phone_number_id, waba_id
        self.templates: dict[str, dict] = {}   # meta template id -> {id, name, language, category, status, ...}
        self.display_phone_number, self.version = display_phone_number, version
        self.requests: list[Recorded] = []
        self.media: dict[str, tuple[str, bytes]] = {}   # meta media id -> (mime_type, content)
        self._script: list[Scripted] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # --- lifecycle

    def start(self) -> FakeGraph:
        handler = type("Handler", (_Handler,), {"graph": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-graph",
                         daemon=True).start()
        return self

    def stop(self) -> None:
        self._release.set()  # wake handlers held by delay_next
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> FakeGraph:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- scripting

    def fail_next(self, http_status: int = 400, code: int | None = None, message: str = "Error",
                  details: str | None = None, *, times: int = 1, headers: dict | None = None,
                  path_suffix: str | None = None, error_type: str = "OAuthException") -> None:
        """The next ``times`` matching requests answer Meta's error shape (or a bare status when
        ``code`` is None)."""
        body = None
        if code is not None:
            error = {"message": f"(#{code}) {message}", "type": error_type, "code": code,
                     "fbtrace_id": "AfakeTrace"}
            if details:
                error["error_data"] = {"messaging_product": "whatsapp", "details": details}
            body = {"error": error}
        with self._lock:
            self._script.extend(Scripted(http_status, body, 0.0, headers or {}, path_suffix) for _ in range(times))

    def delay_next(self, seconds: float, *, times: int = 1) -> None:
        """The next ``times`` requests wait ``seconds`` before answering normally (client timeouts)."""
        with self._lock:
            self._script.extend(Scripted(delay_s=seconds) for _ in range(times))

    def sent_messages(self) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and r.path.endswith("/messages")]

    # --- serving

    def _next_script(self, path: str) -> Scripted | None:
        with self._lock:
            for i, s in enumerate(self._script):
                if s.path_suffix is None or path.endswith(s.path_suffix):
                    return self._script.pop(i)
        return None

    def handle(self, rec: Recorded, base: str) -> tuple[int, dict | bytes, dict]:
        scripted = self._next_script(rec.path)
        if scripted and scripted.delay_s:
            self._release.wait(scripted.delay_s)
        elif scripted:
            return scripted.http_status, scripted.body if scripted.body is not None else b"", scripted.headers
        if rec.headers.get("authorization") != f"Bearer {self.access_token}":
            return 401, {"error": {"message": "Invalid OAuth access token - Cannot parse access token",
                                   "type": "OAuthException", "code": 190, "fbtrace_id": "AfakeTrace"}}, {}
        parts = [p for p in rec.path.split("/") if p]
        if parts[:1] == ["files"] and len(parts) == 2 and parts[1] in self.media:
            mime, content = self.media[parts[1]]
            return 200, content, {"Content-Type": mime}
        if not parts or parts[0] != self.version:
            return 404, {"error": {"message": "Unknown path components", "type": "OAuthException", "code": 2500}}, {}
        parts = parts[1:]
        if rec.method == "GET" and parts == [self.phone_number_id]:
            return 200, {"display_phone_number": self.display_phone_number, "verified_name": "Fake Business",
                         "quality_rating": "GREEN", "id": self.phone_number_id}, {}
        if rec.method == "POST" and parts == [self.phone_number_id, "messages"]:
            body = rec.json if isinstance(rec.json, dict) else {}
            return 200, {"messaging_product": "whatsapp",
                         "contacts": [{"input": body.get("to"), "wa_id": body.get("to")}],
                         "messages": [{"id": f"wamid.FAKE{next(self._ids):06d}"}]}, {}
        if parts == [self.waba_id, "message_templates"]:
            return self._templates(rec)
        if rec.method == "POST" and len(parts) == 1 and parts[0] in self.templates:
            body = rec.json if isinstance(rec.json, dict) else {}
            with self._lock:
                self.templates[parts[0]].update(components=body.get("components"), status="PENDING")
            return 200, {"success": True}, {}
        if rec.method == "POST" and parts == [self.phone_number_id, "media"] and "file" in rec.files:
            media_id = f"{next(self._ids) + 900000000000000}"
            _, ctype, content = rec.files["file"]
            self.media[media_id] = (rec.form.get("type") or ctype, content)
            return 200, {"id": media_id}, {}
        if rec.method == "GET" and len(parts) == 1 and parts[0] in self.media:
            mime, content = self.media[parts[0]]
            return 200, {"url": f"{base}/files/{parts[0]}", "mime_type": mime, "file_size": len(content),
                         "id": parts[0], "messaging_product": "whatsapp"}, {}
        return 400, {"error": {"message": f"Unsupported {rec.method} request. Object with ID '{parts[0] if parts else ''}'"
                               " does not exist", "type": "GraphMethodException", "code": 100,
                               "error_subcode": 33, "fbtrace_id": "AfakeTrace"}}, {}


    def _templates(self, rec: Recorded) -> tuple[int, dict, dict]:
        """Meta's template manager: create (PENDING), list, delete by name."""
        with self._lock:
            if rec.method == "POST":
                body = rec.json if isinstance(rec.json, dict) else {}
                if any(t["name"] == body.get("name") and t["language"] == body.get("language")
                       for t in self.templates.values()):
                    return 400, {"error": {"message": "Invalid parameter", "type": "OAuthException", "code": 100,
                                           "error_subcode": 2388024, "error_user_msg": "Content in this language "
                                           "already exists"}}, {}
                template_id = str(next(self._ids) + 700000000000000)
                self.templates[template_id] = {**body, "id": template_id, "status": "PENDING",
                                               "rejected_reason": "NONE"}
                return 200, {"id": template_id, "status": "PENDING", "category": body.get("category")}, {}
            if rec.method == "DELETE":
                name = rec.query.get("name")
                gone = [k for k, t in self.templates.items() if t["name"] == name]
                for k in gone:
                    del self.templates[k]
                return (200, {"success": True}, {}) if gone else (
                    400, {"error": {"message": "Template not found", "type": "OAuthException", "code": 100}}, {})
            return 200, {"data": [{k: t.get(k) for k in ("id", "name", "language", "status", "rejected_reason",
                                                          "category")} for t in self.templates.values()],
                         "paging": {"cursors": {"before": "b", "after": "a"}}}, {}

    def set_template_status(self, name: str, status: str, reason: str = "NONE") -> str:
        """Review a submitted template (``APPROVED``, ``REJECTED``...); returns its Meta id."""
        with self._lock:
            for t in self.templates.values():
                if t["name"] == name:
                    t.update(status=status, rejected_reason=reason)
                    return t["id"]
        raise KeyError(name)


class _Handler(BaseHTTPRequestHandler):
    graph: FakeGraph
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        proxied = bool(split.scheme)
        headers = {k.lower(): v for k, v in self.headers.items()}
        rec = Recorded(self.command, split.path, {k: v[-1] for k, v in parse_qs(split.query).items()}, headers, body,
                       proxied)
        ctype = headers.get("content-type", "")
        if ctype.startswith("application/json") and body:
            try:
                rec.json = json.loads(body)
            except ValueError:
                rec.json = None
        elif ctype.startswith("multipart/form-data"):
            _, form, files = parse_form_data({"wsgi.input": io.BytesIO(body), "CONTENT_LENGTH": str(len(body)),
                                              "CONTENT_TYPE": ctype, "REQUEST_METHOD": "POST"})
            rec.form = dict(form)
            rec.files = {k: (f.filename, f.content_type, f.read()) for k, f in files.items()}
        self.graph.requests.append(rec)
        base = f"{split.scheme}://{split.netloc}" if proxied else self.graph.url
        status, payload, extra = self.graph.handle(rec, base)
        extra = dict(extra or {})
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", extra.pop("Content-Type", "application/json"))
        for k, v in extra.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout tests)
            pass

    do_GET = do_POST = do_DELETE = _serve


class FakeSocks5:
    """A SOCKS5 proxy (username/password auth) that sends every CONNECT to ``target`` (host, port)
    whatever address was asked for, and records what was asked: ``connects`` [(host, port)] and
    ``logins`` [(username, password)]."""

    def __init__(self, target: tuple[str, int], username: str = "u", password: str = "p"):
        self.target, self.username, self.password = target, username, password
        self.connects: list[tuple[str, int]] = []
        self.logins: list[tuple[str, str]] = []
        self._sock: socket.socket | None = None
        self._stopped = threading.Event()

    def __enter__(self) -> FakeSocks5:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        threading.Thread(target=self._accept, name="fake-socks5", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        self._sock.close()

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1]

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("socks client went away")
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            _, nmethods = self._read(conn, 2)
            if 2 not in self._read(conn, nmethods):
                conn.sendall(b"\x05\xff")
                return
            conn.sendall(b"\x05\x02")                                 # username/password, please
            _, ulen = self._read(conn, 2)
            user = self._read(conn, ulen).decode()
            (plen,) = self._read(conn, 1)
            password = self._read(conn, plen).decode()
            self.logins.append((user, password))
            if (user, password) != (self.username, self.password):
                conn.sendall(b"\x01\x01")
                return
            conn.sendall(b"\x01\x00")
            _, cmd, _, atyp = self._read(conn, 4)
            if atyp == 3:
                (n,) = self._read(conn, 1)
                host = self._read(conn, n).decode()
            else:
                host = socket.inet_ntoa(self._read(conn, 4)) if atyp == 1 else self._read(conn, 16).hex()
            port = int.from_bytes(self._read(conn, 2), "big")
            self.connects.append((host, port))
            upstream = socket.create_connection(self.target, timeout=10)
            conn.sendall(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + (0).to_bytes(2, "big"))
            self._pipe(conn, upstream)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        def copy(src, dst):
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        other = threading.Thread(target=copy, args=(b, a), daemon=True)
        other.start()
        copy(a, b)
        other.join(timeout=10)
        b.close()
