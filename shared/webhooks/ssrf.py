"""The SSRF guard of webhooks: which URLs and addresses predq may call back.

Two checks, one policy:

- :func:`check_url` runs at submit time, without DNS. It refuses what is plainly bad: a
  scheme other than http/https, no host, a bad port, ``localhost`` (and ``*.localhost``),
  and literal addresses that are not globally routable (also the legacy forms ``127.1``,
  ``0x7f000001`` and ``2130706433``, which ``inet_aton`` and so the resolver accept).
- :func:`resolve` runs at delivery time. It resolves the host with ``getaddrinfo`` and
  refuses the request when *any* resolved address is not allowed; the caller then connects
  to the returned, checked address (see :class:`Target`), so a DNS answer that changes
  between the check and the connection (rebinding) cannot reach an internal address.

An address is allowed when it is globally routable: not loopback, private, link-local
(169.254.169.254, the cloud metadata endpoint, lives there), shared address space (CGNAT,
100.64.0.0/10), IPv4-mapped IPv6, multicast, unspecified or reserved, and no IPv6 form that
embeds a non-global IPv4 address (6to4, NAT64; Teredo is refused outright). The allow-list
(``PREDQ_WEBHOOK_ALLOW_HOSTS``: host names or CIDRs, empty by default) exempts local
receivers for development and tests. Allowing a loopback address (``127.0.0.1``) also allows
the name ``localhost``, connected to through its allowed loopback addresses only.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., list[tuple[Any, ...]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_SCHEMES = {"http": 80, "https": 443}


class UnsafeUrl(ValueError):
    """The URL is not an http(s) URL predq may call, or its host is plainly not public."""


class BlockedAddress(ValueError):
    """The host resolves to an address the guard refuses (found at delivery time)."""


@dataclass(frozen=True, slots=True)
class AllowList:
    """Hosts and networks exempt from the guard (lower-cased names, parsed networks)."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Entries are host names (``localhost``), addresses (``127.0.0.1``) or CIDRs."""
        names: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            entry = entry.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                names.add(entry)
        return cls(frozenset(names), tuple(networks))

    def allows_name(self, host: str) -> bool:
        return host in self.names

    def allows_ip(self, ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def allows_loopback(self) -> bool:
        """Whether a loopback address (127.0.0.1 or ::1) is allowed: then so is ``localhost``,
        which names nothing else (RFC 6761), reached at an allowed loopback address."""
        return any(self.allows_ip(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1"))


_HINT = ("webhooks must reach a public address (for a local receiver in development, add it "
         "to PREDQ_WEBHOOK_ALLOW_HOSTS, e.g. 127.0.0.1)")


def _is_loopback_name(host: str) -> bool:
    return host.lower() == "localhost" or host.lower().endswith(".localhost")


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be called back (None: it is globally routable)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        if ip.teredo is not None:
            return "a Teredo address"
        embedded = ip.sixtofour
        if embedded is None and any(ip in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and refusal_reason(embedded) is not None:
            return f"an IPv6 address embedding {embedded}"
    checks = (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "loopback"),
        (ip.is_link_local, "link-local"),
        (ip.version == 4 and ip in _CGNAT, "shared address space (CGNAT, 100.64.0.0/10)"),
        (ip.is_multicast, "multicast"),
        (ip.is_private, "private"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "not globally routable"),
    )
    for hit, reason in checks:
        if hit:
            return reason
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """``host`` as an address when it is one, in any form the resolver would accept."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefx." for c in host) and host[0].isdigit():
        try:  # legacy IPv4 forms: 127.1, 0x7f.0.0.1, 2130706433
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


@dataclass(frozen=True, slots=True)
class Target:
    """Where one delivery goes: the checked address, and the names the request must carry.

    ``url`` has the checked address in place of the host name; ``host_header`` is the
    original ``host[:port]``; ``sni_hostname`` is the name TLS must present and verify
    (None for a literal address or plain http).
    """

    url: str
    host_header: str
    sni_hostname: str | None
    ip: IPAddress


def _split(url: str) -> tuple[SplitResult, str, int]:
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise UnsafeUrl("the URL contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        shown = f"{scheme}://" if scheme else "a scheme-less string"
        raise UnsafeUrl(f"only http:// and https:// URLs are accepted, not {shown}")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeUrl("the URL has no host")
    if not host.isascii():  # an internationalized name: its ASCII (punycode) form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise UnsafeUrl(f"the URL's host is not a valid name: {e}") from e
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError as e:
        raise UnsafeUrl(f"the URL's port is invalid: {e}") from e
    return parts, host, port


def check_url(url: str, allow: AllowList) -> None:
    """Refuse (UnsafeUrl) a URL that is plainly bad, without resolving it."""
    _, host, _ = _split(url)
    if allow.allows_name(host):
        return
    if _is_loopback_name(host):
        if allow.allows_loopback():
            return
        raise UnsafeUrl(f"{host!r} is a loopback name; {_HINT}")
    ip = _literal_ip(host)
    if ip is not None and not allow.allows_ip(ip):
        reason = refusal_reason(ip)
        if reason is not None:
            raise UnsafeUrl(f"{ip} is {reason}; {_HINT}")


def resolve(url: str, allow: AllowList, resolver: Resolver = socket.getaddrinfo) -> Target:
    """Resolve and check the URL's host; return the checked address to connect to.

    Raises UnsafeUrl for a bad URL, BlockedAddress when any resolved address is refused,
    and OSError (``socket.gaierror``) when the name does not resolve.
    """
    parts, host, port = _split(url)
    literal = _literal_ip(host)
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        infos = resolver(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        addresses = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise socket.gaierror(f"{host} resolved to no address")
    if _is_loopback_name(host) and not allow.allows_name(host):
        # Only the allowed loopback addresses of localhost (e.g. 127.0.0.1, not ::1).
        addresses = [ip for ip in addresses if ip.is_loopback and allow.allows_ip(ip)]
        if not addresses:
            raise BlockedAddress(f"{host} resolves to no allowed loopback address: refused by "
                                 "the SSRF guard (see PREDQ_WEBHOOK_ALLOW_HOSTS)")
    elif not allow.allows_name(host):
        for ip in addresses:
            reason = None if allow.allows_ip(ip) else refusal_reason(ip)
            if reason is not None:
                raise BlockedAddress(
                    f"{host} resolves to {ip}, which is {reason}: refused by the SSRF guard "
                    "(see PREDQ_WEBHOOK_ALLOW_HOSTS)")
    ip = addresses[0]
    netloc = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
    if "@" in parts.netloc:
        netloc = parts.netloc.rsplit("@", 1)[0] + "@" + netloc
    pinned = parts._replace(netloc=netloc).geturl()
    host_header = parts.netloc.rsplit("@", 1)[-1]
    if not host_header.isascii():
        host_header = host_header.encode("idna").decode("ascii")
    is_https = parts.scheme.lower() == "https"
    sni = host if is_https and literal is None else None
    return Target(url=pinned, host_header=host_header, sni_hostname=sni, ip=ip)
