"""Proxies: the organisation's list (``/api/proxies``), what transports get of them
(``ProxyInfo``), and the health check (``clients.check_proxies``).

A client uses at most one proxy (``clients.proxy_id``): the web transport as its browser proxy,
the cloud transport as its ``requests`` proxy. Passwords are stored encrypted and never returned.

The health check opens a tunnel to ``PROXY_CHECK_TARGET`` through each proxy (HTTP ``CONNECT``,
over TLS for ``https`` proxies, or a SOCKS5 handshake), with credentials. A proxy that fails one
check is ``failing``, a second one in a row makes it ``dead`` and raises a ``proxy_dead`` alert;
one good check makes it ``ok`` again.
"""
from __future__ import annotations

import base64
import socket
import ssl

from sqlalchemy import select

from app import outbox
from app.audit import service as audit
from app.clients.models import Client, Proxy
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict
from app.pagination import paginate
from app.security.crypto import decrypt, encrypt
from app.security.principal import Principal
from app.transports.base import ProxyInfo
from config import settings

#: fields whose change means the last check no longer says anything
_CONNECTION_FIELDS = ("scheme", "host", "port", "username")


def proxy_info(proxy: Proxy) -> ProxyInfo:
    return ProxyInfo(scheme=proxy.scheme, host=proxy.host, port=proxy.port, username=proxy.username,
                     password=decrypt(proxy.password_encrypted) if proxy.password_encrypted else None)


# ------------------------------------------------------------------------------- CRUD

def list_proxies(session, principal: Principal, *, limit: int, cursor: str | None = None,
                 status: str | None = None) -> dict:
    stmt = scoped_select(Proxy, principal.organization_id)
    if status:
        stmt = stmt.where(Proxy.status == status)
    return paginate(session, stmt, Proxy.id, limit=limit, cursor=cursor)


def get_proxy(session, principal: Principal, proxy_id: str) -> Proxy:
    return get_scoped(session, Proxy, principal.organization_id, proxy_id)


def create_proxy(session, principal: Principal, *, scheme: str, host: str, port: int, name: str | None = None,
                 username: str | None = None, password: str | None = None) -> Proxy:
    proxy = Proxy(organization_id=principal.organization_id, name=name, scheme=scheme, host=host, port=port,
                  username=username, password_encrypted=encrypt(password) if password else None, status="unchecked")
    session.add(proxy)
    session.flush()
    audit.record(session, principal, "proxy.create", target_type="proxy", target_id=proxy.id, changes={
        "name": name, "scheme": scheme, "host": host, "port": port, "username": username,
        "has_password": password is not None})
    return proxy


def update_proxy(session, principal: Principal, proxy_id: str, **fields) -> Proxy:
    proxy = get_scoped(session, Proxy, principal.organization_id, proxy_id, for_update=True)
    changes = audit.diff(proxy, {k: v for k, v in fields.items() if k != "password"})
    if "password" in fields:
        if fields["password"] or proxy.password_encrypted is not None:
            changes["password_change"] = "set" if fields["password"] else "removed"
        proxy.password_encrypted = encrypt(fields["password"]) if fields["password"] else None
    for name, value in fields.items():
        if name != "password":
            setattr(proxy, name, value)
    if changes:
        proxy.updated_at = utcnow()
        if any(f in changes for f in _CONNECTION_FIELDS) or "password_change" in changes:
            proxy.status, proxy.last_error, proxy.last_checked_at = "unchecked", None, None
        audit.record(session, principal, "proxy.update", target_type="proxy", target_id=proxy.id, changes=changes)
    return proxy


def delete_proxy(session, principal: Principal, proxy_id: str) -> None:
    proxy = get_scoped(session, Proxy, principal.organization_id, proxy_id, for_update=True)
    users = clients_using(session, proxy.id)
    if users:
        raise Conflict("The proxy is in use by clients; assign them another proxy first", code="proxy_in_use",
                       details={"client_ids": users[:100]})
    proxy.deleted_at = proxy.updated_at = utcnow()
    audit.record(session, principal, "proxy.delete", target_type="proxy", target_id=proxy.id,
                 changes={"host": proxy.host, "port": proxy.port})


def clients_using(session, proxy_id: str) -> list[str]:
    return list(session.scalars(select(Client.id).where(Client.proxy_id == proxy_id, Client.deleted_at.is_(None))
                                .order_by(Client.id)))


# ------------------------------------------------------------------------------- health check

def enqueue_checks(session) -> int:
    """``clients.check_proxies``: one ``clients.check_proxy`` job per live proxy, every organisation."""
    ids = list(session.scalars(select(Proxy.id).where(Proxy.deleted_at.is_(None)).order_by(Proxy.id)))
    outbox.enqueue_many(session, "clients.check_proxy", [(i,) for i in ids], queue_name="default")
    return len(ids)


def proxy_to_check(session, proxy_id: str) -> ProxyInfo | None:
    proxy = session.get(Proxy, proxy_id)
    return proxy_info(proxy) if proxy is not None and proxy.deleted_at is None else None


def record_check(session, proxy_id: str, error: str | None) -> Proxy | None:
    """Apply one check's result: ok, or one step towards dead (alerting when it gets there)."""
    from app.clients.service import raise_alert

    proxy = session.get(Proxy, proxy_id, with_for_update=True, populate_existing=True)
    if proxy is None or proxy.deleted_at is not None:
        return None
    proxy.last_checked_at = utcnow()
    if error is None:
        proxy.status, proxy.last_error = "ok", None
        return proxy
    proxy.last_error = error[:500]
    if proxy.status == "failing":
        proxy.status = "dead"
        raise_alert(session, proxy.organization_id, "proxy_dead", None, {
            "proxy_id": proxy.id, "host": proxy.host, "port": proxy.port, "error": proxy.last_error,
            "client_ids": clients_using(session, proxy.id)[:100]})
    elif proxy.status != "dead":
        proxy.status = "failing"
    return proxy


def probe(proxy: ProxyInfo, target: str | None = None, timeout: float | None = None) -> str | None:
    """Open a tunnel to ``target`` (``host:port``) through ``proxy``. None when it works, else why not."""
    target = target or settings.PROXY_CHECK_TARGET
    timeout = settings.PROXY_CHECK_TIMEOUT if timeout is None else timeout
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((proxy.host, proxy.port), timeout=timeout) as raw:
            if proxy.scheme == "socks5":
                return _socks5_connect(raw, proxy, host, int(port))
            if proxy.scheme == "https":
                with ssl.create_default_context().wrap_socket(raw, server_hostname=proxy.host) as tls:
                    return _http_connect(tls, proxy, host, int(port))
            return _http_connect(raw, proxy, host, int(port))
    except (OSError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]


def _http_connect(sock, proxy: ProxyInfo, host: str, port: int) -> str | None:
    lines = [f"CONNECT {host}:{port} HTTP/1.1", f"Host: {host}:{port}"]
    if proxy.username:
        token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n" not in head and len(head) < 8192:
        chunk = sock.recv(1024)
        if not chunk:
            break
        head += chunk
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"not an HTTP proxy (answered {status_line[:80]!r})"
    code = int(parts[1])
    if code == 200:
        return None
    if code == 407:
        return "the proxy refused the credentials (407)"
    return f"CONNECT {host}:{port} answered {status_line[:120]}"


def _recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the proxy closed the connection")
        data += chunk
    return data


def _socks5_connect(sock, proxy: ProxyInfo, host: str, port: int) -> str | None:
    methods = b"\x00\x02" if proxy.username else b"\x00"
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exact(sock, 2)
    if version != 5:
        return "not a SOCKS5 proxy"
    if method == 0x02:
        user, password = (proxy.username or "").encode()[:255], (proxy.password or "").encode()[:255]
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if _recv_exact(sock, 2)[1] != 0:
            return "the proxy refused the credentials (SOCKS5)"
    elif method != 0x00:
        return "the proxy accepts none of our authentication methods (SOCKS5)"
    name = host.encode("idna")[:255]
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    reply = _recv_exact(sock, 2)
    if reply[1] != 0:
        return f"SOCKS5 CONNECT {host}:{port} failed (reply code {reply[1]})"
    return None
