"""Proxies: the organisation's list (``/api/proxies``), what transports get of them
(``ProxyInfo``), and the health check (``clients.check_proxies``).

A client uses at most one proxy (``clients.proxy_id``): the web transport as its browser proxy,
the cloud transport as its ``requests`` proxy. Passwords are stored encrypted and never returned.

The health check opens a tunnel to ``PROXY_CHECK_TARGET`` through each proxy (HTTP ``CONNECT``,
over TLS for ``https`` proxies, or a SOCKS5 handshake), with credentials. A proxy that fails one
check is ``failing``, a second one in a row makes it ``dead`` and raises a ``proxy_dead`` alert;
one good check makes it ``ok`` again.

Proxy hosts go through the same address guard as webhooks (app/security/ssrf.py): a tenant cannot
make the check (or a transport) connect to this machine or the internal network, neither at
creation nor later through DNS. A failed check is reported in a fixed vocabulary
(``CHECK_FAILURES``), never with the bytes the peer sent: the check must not become a way to read
what answers on some address.
"""
from __future__ import annotations

import base64
import socket
import ssl

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import outbox, quotas
from app.audit import service as audit
from app.clients.alerts import raise_alert
from app.clients.models import Client, Proxy
from app.db import get_scoped, scoped_select, utcnow
from app.errors import Conflict, ValidationError
from app.pagination import paginate
from app.security import ssrf
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

def list_proxies(session: Session, principal: Principal, *, limit: int, cursor: str | None = None,
                 status: str | None = None) -> dict:
    stmt = scoped_select(Proxy, principal.organization_id)
    if status:
        stmt = stmt.where(Proxy.status == status)
    return paginate(session, stmt, Proxy.id, limit=limit, cursor=cursor)


def get_proxy(session: Session, principal: Principal, proxy_id: str) -> Proxy:
    return get_scoped(session, Proxy, principal.organization_id, proxy_id)


def check_host(host: str, port: int) -> None:
    """422 when ``host`` is an address (or resolves to one) that the guard refuses."""
    problem = ssrf.check_url(f"http://{f'[{host}]' if ':' in host else host}:{port}/")
    if problem:
        raise ValidationError(details={"host": [problem]})


def create_proxy(session: Session, principal: Principal, *, scheme: str, host: str, port: int, name: str | None = None,
                 username: str | None = None, password: str | None = None) -> Proxy:
    check_host(host, port)
    quotas.enforce(session, principal.organization_id, "proxies", Proxy, Proxy.deleted_at.is_(None))
    proxy = Proxy(organization_id=principal.organization_id, name=name, scheme=scheme, host=host, port=port,
                  username=username, password_encrypted=encrypt(password) if password else None, status="unchecked")
    session.add(proxy)
    session.flush()
    audit.record(session, principal, "proxy.create", target_type="proxy", target_id=proxy.id, changes={
        "name": name, "scheme": scheme, "host": host, "port": port, "username": username,
        "has_password": password is not None})
    return proxy


def update_proxy(session: Session, principal: Principal, proxy_id: str, **fields) -> Proxy:
    proxy = get_scoped(session, Proxy, principal.organization_id, proxy_id, for_update=True)
    if "host" in fields or "port" in fields:
        check_host(fields.get("host", proxy.host), fields.get("port", proxy.port))
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


def delete_proxy(session: Session, principal: Principal, proxy_id: str) -> None:
    proxy = get_scoped(session, Proxy, principal.organization_id, proxy_id, for_update=True)
    users = clients_using(session, proxy.id)
    if users:
        raise Conflict("The proxy is in use by clients; assign them another proxy first", code="proxy_in_use",
                       details={"client_ids": users[:100]})
    proxy.deleted_at = proxy.updated_at = utcnow()
    audit.record(session, principal, "proxy.delete", target_type="proxy", target_id=proxy.id,
                 changes={"host": proxy.host, "port": proxy.port})


def clients_using(session: Session, proxy_id: str) -> list[str]:
    return list(session.scalars(select(Client.id).where(Client.proxy_id == proxy_id, Client.deleted_at.is_(None))
                                .order_by(Client.id)))


# ------------------------------------------------------------------------------- health check

def enqueue_checks(session: Session) -> int:
    """``clients.check_proxies``: one ``clients.check_proxy`` job per live proxy, every organisation."""
    ids = list(session.scalars(select(Proxy.id).where(Proxy.deleted_at.is_(None)).order_by(Proxy.id)))
    outbox.enqueue_many(session, "clients.check_proxy", [(i,) for i in ids])
    return len(ids)


def proxy_to_check(session: Session, proxy_id: str) -> ProxyInfo | None:
    proxy = session.get(Proxy, proxy_id)
    return proxy_info(proxy) if proxy is not None and proxy.deleted_at is None else None


def record_check(session: Session, proxy_id: str, error: str | None) -> Proxy | None:
    """Apply one check's result: ok, or one step towards dead (alerting when it gets there)."""
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


#: what a failed check reports (``proxies.last_error``, the ``proxy_dead`` alert): nothing else
CHECK_FAILURES = {
    "refused": "the proxy refused the connection, or closed it",
    "timeout": "the proxy did not answer in time",
    "unresolvable": "the proxy's host name does not resolve",
    "blocked_address": "the proxy's address is not allowed (not a public address)",
    "tls_failed": "the TLS handshake with an https proxy failed",
    "not_a_proxy": "what answers is not a proxy of this scheme",
    "auth_failed": "the proxy refused the credentials",
    "tunnel_refused": "the proxy refused to open a tunnel to the check target",
}


class CheckFailed(Exception):
    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def probe(proxy: ProxyInfo, target: str | None = None, timeout: float | None = None) -> str | None:
    """Open a tunnel to ``target`` (``host:port``) through ``proxy``. None when it works, else one
    of CHECK_FAILURES."""
    target = target or settings.PROXY_CHECK_TARGET
    timeout = settings.PROXY_CHECK_TIMEOUT if timeout is None else timeout
    host, _, port = target.rpartition(":")
    try:
        with ssrf.guarded_create_connection((proxy.host, proxy.port), timeout) as raw:
            raw.settimeout(timeout)
            if proxy.scheme == "socks5":
                _socks5_connect(raw, proxy, host, int(port))
            elif proxy.scheme == "https":
                try:
                    tls = ssl.create_default_context().wrap_socket(raw, server_hostname=proxy.host)
                except ssl.SSLError:
                    raise CheckFailed("tls_failed") from None
                with tls:
                    _http_connect(tls, proxy, host, int(port))
            else:
                _http_connect(raw, proxy, host, int(port))
    except CheckFailed as failed:
        return failed.code
    except ssrf.BlockedAddress:
        return "blocked_address"
    except socket.gaierror:
        return "unresolvable"
    except TimeoutError:
        return "timeout"
    except ssl.SSLError:
        return "tls_failed"
    except (OSError, ValueError, UnicodeError):
        return "refused"
    return None


def _http_connect(sock, proxy: ProxyInfo, host: str, port: int) -> None:
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
    if not head:
        raise CheckFailed("refused")
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise CheckFailed("not_a_proxy")
    code = int(parts[1])
    if code == 407:
        raise CheckFailed("auth_failed")
    if code != 200:
        raise CheckFailed("tunnel_refused")


def _recv_exact(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise CheckFailed("refused" if not data else "not_a_proxy")
        data += chunk
    return data


def _socks5_connect(sock, proxy: ProxyInfo, host: str, port: int) -> None:
    methods = b"\x00\x02" if proxy.username else b"\x00"
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exact(sock, 2)
    if version != 5:
        raise CheckFailed("not_a_proxy")
    if method == 0x02:
        user, password = (proxy.username or "").encode()[:255], (proxy.password or "").encode()[:255]
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        if _recv_exact(sock, 2)[1] != 0:
            raise CheckFailed("auth_failed")
    elif method != 0x00:
        raise CheckFailed("auth_failed")  # none of our authentication methods is accepted
    name = host.encode("idna")[:255]
    sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big"))
    if _recv_exact(sock, 2)[1] != 0:
        raise CheckFailed("tunnel_refused")
