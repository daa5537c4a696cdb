"""Egress policy of URL pulls: which addresses a pull may connect to.

A URL ingress makes this node connect wherever its creator says. Without a policy,
`http://127.0.0.1:6379/`, `http://169.254.169.254/latest/meta-data/` or a host on the
private network would be fetched, and the error text in ListIngress ("connection
refused", "HTTP 404 ...") would make the API a port scanner of the node's network. By
default a pull may reach only global unicast addresses; `url_allow_private_addresses`
(and `serve --dev`) turns the check off.

Sans-IO: `refusal()` and `check()` look at addresses only. `resolve()` adds the one
lookup, through an injected `getaddrinfo`, so that the caller connects to exactly the
addresses that were checked (no second lookup that DNS rebinding could answer
differently). relay/worker/egress_gate.py applies it to every TCP connection of an
http(s) pull; url_input.py hands `resolve()` to the SRT caller (relay/worker/srt.py).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

IPAddress = IPv4Address | IPv6Address
# The kind of address refused ("loopback", "private", ...), None when it is allowed.
Refuse = Callable[[IPAddress], str | None]
AddrInfo = tuple[Any, ...]  # one of getaddrinfo's 5-tuples
ALLOW_KEY = "url_allow_private_addresses"

_REFUSED_V4 = tuple((IPv4Network(net), kind) for net, kind in (
    ("0.0.0.0/8", "unspecified"),  # "this network": 0.0.0.0 connects to this host on Linux
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "shared (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # cloud metadata services (169.254.169.254)
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),  # IETF protocol assignments
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),  # the retired 6to4 relay anycast
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved"),  # benchmarking
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # and 255.255.255.255, broadcast
))
_REFUSED_V6 = tuple((IPv6Network(net), kind) for net, kind in (
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/96", "reserved"),  # IPv4-compatible ::a.b.c.d, deprecated and unrouted
    ("64:ff9b:1::/48", "private"),  # local-use NAT64
    ("100::/64", "reserved"),  # discard-only
    ("2001::/23", "reserved"),  # IETF protocol assignments, Teredo among them
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "private"),  # unique local addresses
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),  # site-local, deprecated
    ("ff00::/8", "multicast"),
))
# Every routable IPv6 address is in 2000::/3; the rest is reserved or one of the above.
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")
_NAT64 = IPv6Network("64:ff9b::/96")


class Refused(Exception):
    """The target is refused by the policy. The message names the host as the URL gave
    it and says nothing the target could have answered (no port, no reachability)."""

    def __init__(self, host: str, kind: str, *, literal: bool) -> None:
        shown = host if host.isprintable() and len(host) <= 255 else repr(host[:255])
        verb = "is" if literal else "resolves to"
        super().__init__(f"URL refused: {shown} {verb} a private or local address "
                         f"(set {ALLOW_KEY} to allow)")
        self.host = host
        self.kind = kind


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 form reaches: IPv4-mapped (::ffff:a.b.c.d), NAT64
    (64:ff9b::/96) or 6to4 (2002::/16)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress | str) -> str | None:
    """Why a pull may not connect to `address` ("loopback", "private", "link-local",
    ...), or None: it may. The default policy; an explicit table, not the `is_private`
    family, whose meaning changed between Python releases."""
    if isinstance(address, str):
        address = ip_address(address)
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return refusal(embedded)
        for network, kind in _REFUSED_V6:
            if address in network:
                return kind
        return None if address in _GLOBAL_UNICAST_V6 else "reserved"
    for network, kind in _REFUSED_V4:
        if address in network:
            return kind
    return None


def is_literal(host: str) -> bool:
    """Whether a URL's host is an IP address rather than a name."""
    try:
        ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def check(host: str, infos: Sequence[AddrInfo], refuse: Refuse = refusal) -> list[AddrInfo]:
    """The IPv4/IPv6 entries of getaddrinfo's answer for `host`, if every one of them is
    allowed; Refused if any is not (a name that resolves to a public and a private
    address is refused: the connection could go to either)."""
    allowed = []
    for info in infos:
        if info[0] not in (socket.AF_INET, socket.AF_INET6):
            continue
        kind = refuse(ip_address(info[4][0]))
        if kind is not None:
            raise Refused(host, kind, literal=is_literal(host))
        allowed.append(info)
    return allowed


def resolve(host: str, port: int, type: int = socket.SOCK_STREAM, *,
            refuse: Refuse = refusal,
            getaddrinfo: Callable[..., Sequence[AddrInfo]] = socket.getaddrinfo
            ) -> list[AddrInfo]:
    """getaddrinfo once, then `check()`: connect to these entries' addresses, never to
    the name again. Same signature as getaddrinfo's common use (srt.py calls it so);
    socket.gaierror as getaddrinfo raises it."""
    return check(host, getaddrinfo(host, port, type=type), refuse)
