"""Callback URLs: http(s) only, and only to public addresses (SSRF guard).

A name is resolved once and every address it resolves to is checked; the
caller then connects to a checked address, so DNS cannot change between the
check and the connection.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

# The 422 type of a refused address, and the kind of a name that does not
# resolve (accepted at submission, a retryable network error at delivery).
FORBIDDEN = "callback_url_forbidden"
UNRESOLVED = "callback_url_unresolved"


class UrlRefused(ValueError):
    """The URL may not be used; `kind` is the 422 error type to report."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line


def parse(url: str) -> Target:
    if len(url) > 2048:
        raise UrlRefused("url_too_long", "URL should have at most 2048 characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("url_parsing", f"Input should be a valid URL, {exc}") from exc
    if parts.scheme and parts.scheme not in ("http", "https"):
        raise UrlRefused("url_scheme", "URL scheme should be 'http' or 'https'")
    if not parts.scheme or not parts.netloc:
        raise UrlRefused("url_parsing", "Input should be a valid URL, relative URL without a base")
    if not parts.hostname or parts.username is not None or any(_unsendable(c) for c in url):
        raise UrlRefused("url_parsing", "Input should be a valid URL, invalid host or characters")
    if port == 0:
        raise UrlRefused("url_parsing", "Input should be a valid URL, invalid port number")
    host = _wire_host(parts.hostname)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    # A request line is ASCII: other characters go as UTF-8, percent-encoded,
    # as a browser sends them.
    path = "".join(chr(b) if b < 0x80 else f"%{b:02X}" for b in path.encode("utf-8", "replace"))
    default_port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host, port or default_port, path)


def _wire_host(host: str) -> str:
    """The host as the resolver, the Host header and TLS get it: an international
    name in its IDNA form (the codec Python's socket and http.client use), so a
    name that can never be sent is refused now, not retried for hours."""
    if ":" in host:  # an IPv6 literal
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise UrlRefused(
            "url_parsing", f"Input should be a valid URL, invalid international domain name: {exc}"
        ) from exc


def _unsendable(char: str) -> bool:
    """Whitespace and control characters, which no request line can carry."""
    return char.isspace() or char < " " or char == "\x7f"


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4-mapped and 6to4/NAT64-embedded forms are judged by the IPv4 inside.
        if ip.ipv4_mapped is not None:
            return is_public(str(ip.ipv4_mapped))
        if ip.sixtofour is not None:
            return is_public(str(ip.sixtofour))
        # Site-local (fec0::/10) is deprecated (RFC 3879) but still routed inside
        # some networks, and Python does not count it as private.
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_multicast
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_private
        or ip.is_unspecified
    )


def literal_address(host: str) -> str | None:
    """The address a host names by itself: dotted, decimal, hex or IPv6 forms."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        # inet_aton accepts what C resolvers accept: "2130706433", "0x7f.1", "127.1".
        return socket.inet_ntoa(socket.inet_aton(host))
    except (OSError, UnicodeError):
        return None


def check_submitted(url: str, allow_private: bool) -> Target:
    """At submission: a name that does not resolve is accepted (checked again at delivery)."""
    target = parse(url)
    if allow_private:
        return target
    try:
        resolve(target, allow_private=False)
    except UrlRefused as exc:
        if exc.kind != UNRESOLVED:
            raise
    return target


def resolve(target: Target, allow_private: bool) -> list[str]:
    """The addresses to connect to, every one of them allowed."""
    literal = literal_address(target.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise UrlRefused(UNRESOLVED, f"host does not resolve: {exc}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        refused = [a for a in addresses if not is_public(a)]
        if refused:
            raise UrlRefused(FORBIDDEN, "Callback URL must resolve to public addresses only")
    return addresses
