"""Outbound HTTP that user input can aim: an allow-listed host, a checked address, no redirects.

A URL stored by an admin user (a schedule's heartbeat URL) or named in a payload (a webhook)
must not make a worker a proxy into its own network (server-side request forgery), so
``request``:

- takes only ``http(s)`` URLs without credentials, whose host is a name or a canonical IP
  literal (numeric spellings such as ``http://2130706433/`` are refused);
- takes only hosts in an ``AllowList`` (exact names, ``*.example.com`` for any name under
  example.com, IP literals only when listed); ``ANY_HOST`` waives this for URLs the
  project's developers wrote;
- refuses the request if any address the host resolves to is loopback, private (RFC 1918,
  carrier-grade NAT), unique-local or site-local, unless ``TASKQUEUE['OUTBOUND_ALLOW_PRIVATE']``
  is True; link-local (the metadata service at 169.254.169.254), known metadata addresses,
  multicast, reserved and unspecified addresses are refused always. An IPv4 address inside
  an IPv6 one (``::ffff:127.0.0.1``, 6to4, NAT64) is judged as IPv4;
- connects to the address it checked, with the URL's host in the ``Host`` header and, for
  https, in SNI and the certificate check: a DNS answer that changes after the check (DNS
  rebinding) cannot move the request. Proxy environment variables are ignored;
- never follows a redirect (a 3xx is returned as it is) and reads at most ``max_body`` bytes.

Messages name the host, never the URL: monitors such as healthchecks.io keep a secret in
the path.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

from taskqueue.conf import settings as tq_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_TIMEOUT = 5.0
DEFAULT_MAX_BODY = 64 * 1024
PRIVATE_SETTING = "TASKQUEUE['OUTBOUND_ALLOW_PRIVATE']"
# Instance metadata services that sit outside link-local space (Alibaba, Azure's wire
# server) or inside it (AWS, GCP, Azure, ECS task metadata): refused even when private
# addresses are allowed.
METADATA = ("169.254.169.254", "169.254.170.2", "100.100.100.200", "168.63.129.16", "fd00:ec2::254")
METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, METADATA))
# Named apart from is_private for clearer messages, or not covered by it (fec0::/10).
PRIVATE_NETWORKS = (
    (ipaddress.ip_network("fc00::/7"), "a unique-local address"),
    (ipaddress.ip_network("fec0::/10"), "a site-local address"),
    (ipaddress.ip_network("100.64.0.0/10"), "a shared (carrier-grade NAT) address"),
)
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_HOST_LABELS = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
# Numeric host names that resolvers read as IPv4 (127.1, 0x7f.0.0.1, 2130706433).
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$")


class OutboundRefused(ValueError):
    """The URL, its host or an address it resolves to is not allowed; the message says why."""


# --- hosts and the allow-list -------------------------------------------------------------


def normalize_host(host: str) -> str:
    """Return ``host`` lower-cased, IDNA-encoded and without a trailing dot."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    literal = _ip_literal(host)
    if literal is not None:
        return str(literal)
    try:
        encoded = host.encode("idna").decode("ascii")
    except UnicodeError:
        encoded = ""
    if not _HOST_LABELS.match(encoded):
        raise OutboundRefused(f"host {host!r} is not a valid host name")
    if _NUMERIC_HOST.match(encoded):
        raise OutboundRefused(
            f"host {host!r} is a numeric address in a non-standard spelling: "
            "write the IP address in its usual dotted form"
        )
    return encoded


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """The hosts a kind of request may go to; ``setting`` names where they are configured."""

    names: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()
    any_host: bool = False
    setting: str = ""

    @classmethod
    def parse(cls, entries: Any, setting: str) -> AllowList:
        """Build from a setting's value; ``ImproperlyConfigured`` names the bad entry."""
        problems = allow_list_problems(entries, setting)
        if problems:
            raise ImproperlyConfigured("; ".join(problems))
        return cls.of(entries, setting)

    @classmethod
    def of(cls, entries: Iterable[str], setting: str) -> AllowList:
        """Build from entries already checked by ``allow_list_problems``."""
        entries = list(entries)
        names = frozenset(normalize_host(entry) for entry in entries if entry[:2] != "*.")
        suffixes = tuple("." + normalize_host(entry[2:]) for entry in entries if entry[:2] == "*.")
        return cls(names, suffixes, False, setting)

    def allows(self, host: str) -> bool:
        """Whether the normalized ``host`` is listed (wildcards never match IP literals)."""
        if self.any_host or host in self.names:
            return True
        if _ip_literal(host) is not None:
            return False
        return any(host.endswith(suffix) for suffix in self.suffixes)

    def describe(self) -> str:
        listed = sorted(self.names) + sorted("*" + suffix for suffix in self.suffixes)
        return ", ".join(listed) if listed else "empty"


# For URLs the project's developers wrote (code, settings): any host, addresses still judged.
ANY_HOST = AllowList(any_host=True)


def allow_list_problems(entries: Any, setting: str) -> list[str]:
    """What is wrong with an allow-list setting's value (empty when it is valid)."""
    if isinstance(entries, str) or not isinstance(entries, list | tuple):
        return [
            f"{setting} must be a list of host names ('hc-ping.com', '*.example.com', an IP "
            f"address), got {type(entries).__name__}"
        ]
    problems = []
    for entry in entries:
        wildcard = isinstance(entry, str) and entry.startswith("*.")
        name = entry[2:] if wildcard else entry
        try:
            if not isinstance(name, str) or not name.strip() or "*" in name:
                raise OutboundRefused(name)
            if wildcard and _ip_literal(normalize_host(name)) is not None:
                raise OutboundRefused(name)  # a wildcard of addresses means nothing
            normalize_host(name)
        except OutboundRefused:
            problems.append(
                f"{setting} entry {entry!r} is not a host name: write 'hc-ping.com', "
                "'*.example.com' (any name under example.com) or an IP address, without "
                "scheme, port or path"
            )
    return problems


# --- URLs and addresses --------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line
    addresses: tuple[str, ...] = ()


def loggable_origin(url: Any) -> str:
    """The host (and port) of ``url`` for logs, never its path or credentials."""
    try:
        parts = urlsplit(str(url))
        host, port = parts.hostname or "?", parts.port
    except ValueError:
        return "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


def parse_url(url: Any) -> Target:
    """Check the shape of ``url`` (http(s), a valid host, no credentials); no DNS."""
    if not isinstance(url, str):
        raise OutboundRefused(f"must be an http:// or https:// URL, got {type(url).__name__}")
    # Checked before urlsplit, which silently drops tabs and newlines.
    if any(ord(char) < 33 or ord(char) == 127 for char in url):
        raise OutboundRefused("contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundRefused(f"is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise OutboundRefused("must be an http:// or https:// URL")
    if not parts.hostname:
        raise OutboundRefused("has no host")
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused(
            f"carries credentials before the host {parts.hostname!r}; they are not supported "
            "(put a token in the path or query instead)"
        )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    default = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, normalize_host(parts.hostname), port or default, path)


def address_problem(address: IPAddress, allow_private: bool) -> str | None:
    """Why a request must not go to ``address``, or None when it may."""
    if address in METADATA_ADDRESSES:
        return "a cloud metadata service address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or _nat64_embedded(address)
        if embedded is not None:
            # The connection goes to the IPv4 address: judge that one alone.
            problem = address_problem(embedded, allow_private)
            return f"{problem} ({embedded} inside {address})" if problem else None
        if address.sixtofour is not None:
            problem = address_problem(address.sixtofour, allow_private)
            if problem:
                return f"{problem} ({address.sixtofour} inside {address})"
    for always_refused, what in (
        (address.is_unspecified, "the unspecified address"),
        (address.is_multicast, "a multicast address"),
        (address.is_link_local, "a link-local address (where metadata services listen)"),
        # ::1 lies in IPv6's reserved ::/8 but is judged as loopback below.
        (address.is_reserved and not address.is_loopback, "a reserved address"),
    ):
        if always_refused:
            return what
    if allow_private:
        return None
    for refused, what in (
        (address.is_loopback, "a loopback address"),
        *((address in network, what) for network, what in PRIVATE_NETWORKS),
        (address.is_private, "a private address"),
        (not address.is_global, "an address that is not publicly routable"),
    ):
        if refused:
            return what
    return None


def _nat64_embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if any(address in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def resolve(host: str, port: int) -> tuple[str, ...]:
    """The addresses ``host`` resolves to for a TCP connection, in the resolver's order."""
    literal = _ip_literal(host)
    if literal is not None:
        return (str(literal),)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise OutboundRefused(f"host {host!r} could not be resolved: {exc}") from None
    # A scope id (fe80::1%eth0) is not part of the address that is judged.
    return tuple(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))


def check_url(
    url: Any,
    allowed: AllowList,
    *,
    allow_private: bool | None = None,
) -> Target:
    """Check ``url`` against ``allowed`` and, resolving its host, its addresses.

    ``allow_private`` None reads ``TASKQUEUE['OUTBOUND_ALLOW_PRIVATE']``. Raises
    ``OutboundRefused`` naming the host and the reason.
    """
    target = parse_url(url)
    if not allowed.allows(target.host):
        what = "IP address" if _ip_literal(target.host) is not None else "host"
        parent = target.host.partition(".")[2]
        hint = f" (or a '*.{parent}' wildcard)" if what == "host" and "." in parent else ""
        raise OutboundRefused(
            f"{what} {target.host!r} is not allowed: add {target.host!r}{hint} to "
            f"{allowed.setting} (now {allowed.describe()})"
        )
    if allow_private is None:
        allow_private = tq_settings.OUTBOUND_ALLOW_PRIVATE is True
    addresses = resolve(target.host, target.port)
    for address in addresses:
        problem = address_problem(ipaddress.ip_address(address), allow_private)
        if problem is not None:
            resolved = "is" if address == target.host else f"resolves to {address},"
            hint = ""
            if not allow_private and address_problem(ipaddress.ip_address(address), True) is None:
                hint = f"; set {PRIVATE_SETTING} = True to allow private and loopback addresses"
            raise OutboundRefused(
                f"host {target.host!r} {resolved} {problem}, which taskqueue refuses{hint}"
            )
    return Target(target.scheme, target.host, target.port, target.path, addresses)


# --- the request ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    """What the server answered; ``body`` is at most the requested number of bytes."""

    status: int
    reason: str
    body: bytes
    location: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def is_redirect(self) -> bool:
        return 300 <= self.status < 400


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to checked addresses, whatever the host name resolves to by now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._addresses = target.addresses

    def _open_socket(self) -> socket.socket:
        error: OSError | None = None
        for address in self._addresses:
            try:
                return socket.create_connection((address, self.port), self.timeout)
            except OSError as exc:
                error = exc
        raise error or OSError("no address to connect to")

    def connect(self) -> None:
        self.sock = self._open_socket()


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = http.client.HTTPS_PORT

    def __init__(self, target: Target, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(target, timeout)
        self._tls = context

    def connect(self) -> None:
        # The certificate is checked against the name in the URL, not the address.
        self.sock = self._tls.wrap_socket(self._open_socket(), server_hostname=self.host)


def request(
    url: str,
    allowed: AllowList,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_body: int = DEFAULT_MAX_BODY,
    allow_private: bool | None = None,
    tls_context: ssl.SSLContext | None = None,
) -> Response:
    """Send one request through the guard; redirects are returned, never followed.

    Raises ``OutboundRefused`` before any connection when the URL or its addresses are not
    allowed, and ``OSError`` (timeouts included) or ``http.client.HTTPException`` when the
    exchange fails.
    """
    target = check_url(url, allowed, allow_private=allow_private)
    connection = (
        _PinnedHTTPSConnection(target, timeout, tls_context or ssl.create_default_context())
        if target.scheme == "https"
        else _PinnedHTTPConnection(target, timeout)
    )
    try:
        connection.request(method, target.path, body=body, headers=dict(headers or {}))
        reply = connection.getresponse()
        content = reply.read(max_body)
        return Response(reply.status, reply.reason, content, reply.getheader("Location"))
    finally:
        connection.close()
