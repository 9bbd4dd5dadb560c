"""The SSRF guard: connections to addresses that users choose reach only public addresses.

It guards every outbound connection whose target a tenant controls: webhook deliveries, proxy
health checks (and the proxy hosts themselves), the cloud transport's ``base_url``.

Checked twice. At registration (``check_url``) a URL must be http(s), and an IP literal or a name
that resolves to a non-public address is refused with a clear message. At connect time, which is
what actually protects (DNS answers change, rebinding), ``guarded_session()`` resolves the host
itself, refuses the request when ANY resolved address is non-public, and connects to the address
it checked; the URL's host stays in the ``Host`` header and the TLS SNI/certificate check. Requests
go through urllib3 directly (``thread_pool_manager()``): no proxy, nothing from the environment,
and redirects are never followed (the caller passes ``redirect=False``; a 3xx is a failed delivery).

Non-public: unspecified, loopback, private (RFC 1918), link-local (169.254.0.0/16, cloud metadata
at 169.254.169.254), CGNAT shared space (100.64.0.0/10), multicast, reserved and other
non-global ranges; IPv6 loopback, ULA (fc00::/7), link-local (fe80::/10), site-local, multicast;
and IPv4 embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, NAT64) judged by its IPv4 part.
Which non-public addresses may be reached anyway is ``WEBHOOK_ALLOW_PRIVATE`` (``policy()``):
``true`` all of them, ``loopback`` this machine only, ``false`` none. Unset, it is ``loopback`` in
development when the api listens on a loopback address only (``HOST``), so nobody but this
machine's own users can register targets, and ``false`` everywhere else.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from typing import cast
from urllib.parse import urlsplit

import certifi
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.connection import allowed_gai_family
from urllib3.util.timeout import _DEFAULT_TIMEOUT

from config import settings

MAX_URL_LENGTH = 2048
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_METADATA = ipaddress.ip_address("169.254.169.254")


POLICIES = ("all", "loopback", "none")
_LOOPBACK_REASONS = ("loopback", "IPv4-mapped loopback")


class BlockedAddress(OSError):
    """A connection to a non-public address was refused."""

    def __init__(self, address: str, reason: str):
        super().__init__(f"refused to connect to {address}: {reason} address "
                         "(targets must be public addresses; see WEBHOOK_ALLOW_PRIVATE)")
        self.address, self.reason = address, reason


def blocked_reason(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why ``address`` may not be a webhook target, or None when it is public."""
    ip = (ipaddress.ip_address(str(address).split("%", 1)[0]) if not isinstance(address, ipaddress._BaseAddress)
          else address)
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        if embedded is not None:
            inner = blocked_reason(embedded)
            if inner:
                kind = "IPv4-mapped" if ip.ipv4_mapped else ("6to4" if ip.sixtofour else "NAT64")
                return f"{kind} {inner}"
            if ip.ipv4_mapped:
                return None  # ::ffff:8.8.8.8 is 8.8.8.8
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip == _METADATA:
        return "link-local (cloud metadata)"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if ip.version == 4 and ip in _CGNAT:
        return "carrier-grade NAT (shared)"
    if ip.version == 6 and ip.is_site_local:
        return "site-local"
    if ip.is_private:
        return "private"
    if ip.is_reserved:
        return "reserved"
    if not ip.is_global:
        return "non-global"
    return None


def policy() -> str:
    """Which non-public addresses outbound connections may reach: ``all``, ``loopback`` or ``none``."""
    return settings.private_targets


def refusal(address) -> str | None:
    """Why a connection to ``address`` is refused under the current policy, or None."""
    reason = blocked_reason(address)
    if reason is None:
        return None
    allowed = policy()
    if allowed == "all" or (allowed == "loopback" and reason in _LOOPBACK_REASONS):
        return None
    return reason


def resolve(host: str, port: int) -> list[tuple]:
    """``getaddrinfo`` results for a TCP connection to ``host:port``, every one of them checked."""
    host = host.strip("[]")
    infos = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
    for info in infos:
        address = cast(str, info[4][0])  # an AF_INET/AF_INET6 sockaddr: (host, port, ...)
        reason = refusal(address)
        if reason:
            raise BlockedAddress(address, reason)
    return infos


def guarded_create_connection(address: tuple[str, int], timeout=_DEFAULT_TIMEOUT, source_address=None,
                              socket_options=None) -> socket.socket:
    """Like ``urllib3.util.connection.create_connection``, but only to checked addresses."""
    host, port = address
    last_error: OSError | None = None
    for family, socktype, proto, _canon, sockaddr in resolve(host, port):
        sock = None
        try:
            sock = socket.socket(family, socktype, proto)
            for option in socket_options or ():
                sock.setsockopt(*option)
            if timeout is not _DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            peer = sock.getpeername()[0]
            if refusal(peer):  # defence in depth: what we reached
                raise BlockedAddress(peer, refusal(peer))
            return sock
        except BlockedAddress:
            if sock is not None:
                sock.close()
            raise
        except OSError as exc:
            last_error = exc
            if sock is not None:
                sock.close()
    raise last_error or OSError(f"no address found for {host}")


class _GuardedConnectionMixin:
    """Mixed into urllib3's connection classes (which have the attributes used here). urllib3's
    errors want that connection: mypy sees only the mixin, hence the ``type: ignore`` below."""

    _dns_host: str
    port: int
    timeout: float
    source_address: tuple[str, int] | None
    socket_options: list | None
    host: str

    def _new_conn(self) -> socket.socket:  # mirrors urllib3's, with the guarded connect
        try:
            return guarded_create_connection((self._dns_host, self.port), self.timeout,
                                             source_address=self.source_address,
                                             socket_options=self.socket_options)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc  # type: ignore[arg-type]  # self: a connection
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self, f"Connection to {self.host} timed out. (connect timeout={self.timeout})") from exc
        except OSError as exc:
            raise NewConnectionError(
                self, f"Failed to establish a new connection: {exc}") from exc  # type: ignore[arg-type]  # as above


class GuardedHTTPConnection(_GuardedConnectionMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedConnectionMixin, HTTPSConnection):
    pass


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedPoolManager(PoolManager):
    """A urllib3 pool manager (a pool of keep-alive connections per host) whose every connection
    goes through the guard. No proxy ever (a proxy would connect for us, unchecked), nothing read
    from the environment; the caller passes ``redirect=False`` and ``retries=False``."""

    def __init__(self, **kwargs):
        kwargs.setdefault("cert_reqs", "CERT_REQUIRED")
        kwargs.setdefault("ca_certs", certifi.where())
        super().__init__(**kwargs)
        self.pool_classes_by_scheme = {"http": GuardedHTTPConnectionPool, "https": GuardedHTTPSConnectionPool}


def guarded_pool_manager(pool_maxsize: int = 4) -> GuardedPoolManager:
    """Connection pools for webhook deliveries: up to 32 hosts, ``pool_maxsize`` kept-alive
    connections each."""
    return GuardedPoolManager(num_pools=32, maxsize=pool_maxsize, block=False)


_local = threading.local()


def thread_pool_manager() -> GuardedPoolManager:
    """This thread's guarded pool manager (kept for connection reuse: a worker thread delivering to
    the same host again reuses its connection; rebuilt when the guard setting changes, so a
    connection opened while private targets were allowed is never reused after)."""
    key = policy()
    cached = getattr(_local, "pools", None)
    if cached is None or cached[0] != key:
        if cached is not None:
            cached[1].clear()
        cached = (key, guarded_pool_manager())
        _local.pools = cached
    return cached[1]


def find_blocked(exc: BaseException | None) -> BlockedAddress | None:
    """The BlockedAddress behind a urllib3 exception chain, if that is what failed."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, BlockedAddress):
            return e
        stack.extend([e.__cause__, e.__context__, getattr(e, "reason", None)])
        stack.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))
    return None


def check_url(url: str) -> str | None:
    """Why ``url`` cannot be a webhook target, or None. Registration-time: scheme and shape, and
    when private targets are not allowed, the host's current addresses."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return f"Give a URL of at most {MAX_URL_LENGTH} characters."
    if any(c.isspace() for c in url):
        return "A URL may not contain spaces."
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "Not a valid URL."
    if parts.scheme not in ("http", "https"):
        return "Only http and https URLs are allowed."
    host = parts.hostname
    if not host:
        return "The URL has no host."
    if policy() == "all":
        return None
    try:
        reason = refusal(host)
    except ValueError:
        reason = None  # a name, not an address
        try:
            resolve(host, port or (443 if parts.scheme == "https" else 80))
        except BlockedAddress as exc:
            return f"{host} resolves to {exc.address}, a {exc.reason} address; targets must be public."
        except (OSError, UnicodeError):
            return None  # not resolvable now; checked again at every connection
    if reason:
        return f"{host} is a {reason} address; targets must be public."
    return None


def redact_url(url: str) -> str:
    """``url`` without credentials or query string, for logs and audit rows (they may hold tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "[invalid url]"
    if parts.username or parts.password:
        netloc = "***@" + netloc
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?…" if parts.query else "")
