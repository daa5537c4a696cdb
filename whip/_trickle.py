"""WHIP PATCH bodies: trickled candidates and ICE restarts (RFC 8840 sdpfrags, RFC 9725 §4.3).

A fragment is a few SDP lines (``application/trickle-ice-sdpfrag``): optional
session-level ``a=ice-ufrag``/``a=ice-pwd``/``a=ice-options``/``a=group``, then per
media ``m=`` + ``a=mid:`` with that media's ``a=candidate:`` lines and an optional
``a=end-of-candidates``. New credentials mean an ICE restart; the caller decides what
that does to the session (:meth:`TrickleUpdate.is_ice_restart`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ._sdp import (
    WhipOfferError,
    check_ice_credentials,
    decode_body,
    sdp_lines,
    show,
    split_attribute,
    uint,
)

__all__ = ["MAX_CANDIDATES", "Candidate", "TrickleUpdate", "parse_trickle"]

MAX_CANDIDATES = 100  # per fragment: a host has a handful; more is a mistake or abuse
_FOUNDATION = re.compile(r"[A-Za-z0-9+/]{1,32}")  # RFC 8839: 1*32ice-char
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z|~]+")  # RFC 8866 token
_HOSTNAME = re.compile(r"[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63})*\.?")  # mDNS: <uuid>.local


@dataclass(frozen=True)
class Candidate:
    """One ``a=candidate:`` line (RFC 8839 §5.1).

    ``ip`` is an IPv4/IPv6 address or, for browsers hiding local addresses, an mDNS host
    name (``<uuid>.local``); ``protocol`` and ``type`` are lower case. ``raw`` is the
    attribute as sent (``candidate:...``), the string WebRTC APIs take; ``mid`` the
    media section it came under (None when the fragment names none).
    """

    foundation: str
    component: int
    protocol: str  # "udp" | "tcp" | ...
    priority: int
    ip: str
    port: int
    type: str  # "host" | "srflx" | "prflx" | "relay" | ...
    related_address: str | None
    related_port: int | None
    raw: str
    mid: str | None


@dataclass(frozen=True)
class TrickleUpdate:
    """A parsed PATCH body. Credentials are both present or both None."""

    ice_ufrag: str | None
    ice_pwd: str | None
    candidates: tuple[Candidate, ...]
    end_of_candidates: bool

    def is_ice_restart(self, current_ufrag: str) -> bool:
        """True when the fragment carries a ufrag other than the session's current one."""
        return self.ice_ufrag is not None and self.ice_ufrag != current_ufrag


def _address(text: str) -> bool:
    if _HOSTNAME.fullmatch(text) and len(text) <= 253 and not text.replace(".", "").isdigit():
        return True
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _candidate(number: int, value: str, mid: str | None) -> Candidate:
    """The value of an ``a=candidate:`` attribute (after the colon)."""
    parts = value.split()

    def bad(why: str) -> WhipOfferError:
        return WhipOfferError(400, f"line {number}: malformed a=candidate ({why}): "
                              f"{show(value)}")

    if len(parts) < 8 or parts[6] != "typ":
        raise bad("expected <foundation> <component> <transport> <priority> <address> "
                  "<port> typ <type>")
    foundation, component, protocol, priority, address, port, _, kind = parts[:8]
    component_id = uint(component, 256)
    prio, port_number = uint(priority, 0xFFFFFFFF), uint(port, 65535)
    if not _FOUNDATION.fullmatch(foundation):
        raise bad("foundation must be 1 to 32 of A-Z a-z 0-9 + /")
    if not component_id:
        raise bad("component must be 1-256")
    if not _TOKEN.fullmatch(protocol) or not _TOKEN.fullmatch(kind):
        raise bad("bad transport or type")
    if prio is None:
        raise bad("priority must be 0-4294967295")
    if not _address(address):
        raise bad("address must be an IP address or a host name")
    if port_number is None:
        raise bad("port must be 0-65535")
    related_address: str | None = None
    related_port: int | None = None
    for name, ext in zip(parts[8::2], parts[9::2], strict=False):  # extensions: name value
        if name == "raddr":
            if not _address(ext):
                raise bad("raddr must be an IP address or a host name")
            related_address = ext
        elif name == "rport":
            related_port = uint(ext, 65535)
            if related_port is None:
                raise bad("rport must be 0-65535")
    return Candidate(foundation, component_id, protocol.lower(), prio, address, port_number,
                     kind.lower(), related_address, related_port, f"candidate:{value}", mid)


def parse_trickle(body: str | bytes) -> TrickleUpdate:
    """Parse a PATCH body; malformed or oversized input raises ``WhipOfferError(400, ...)``.

    Bounded: at most 64 KiB and :data:`MAX_CANDIDATES` candidates. Unknown lines and
    attributes are skipped; a candidate that does not parse is an error rather than
    being dropped, so a publisher learns why its path never works.
    """
    text = decode_body(body, "trickle fragment")
    ufrag: str | None = None
    pwd: str | None = None
    mid: str | None = None
    candidates: list[Candidate] = []
    end = False
    for number, kind, value in sdp_lines(text):
        if kind == "m":
            mid = None  # until its a=mid
            continue
        if kind != "a":
            continue
        name, attr = split_attribute(value)
        if name == "mid":
            mid = attr or None
        elif name in ("ice-ufrag", "ice-pwd"):
            previous = ufrag if name == "ice-ufrag" else pwd
            if previous is not None and previous != attr:
                raise WhipOfferError(400, f"line {number}: a second, different a={name}")
            if name == "ice-ufrag":
                ufrag = attr or ""
            else:
                pwd = attr or ""
        elif name == "candidate":
            if len(candidates) == MAX_CANDIDATES:
                raise WhipOfferError(400, f"more than {MAX_CANDIDATES} candidates")
            candidates.append(_candidate(number, attr or "", mid))
        elif name == "end-of-candidates":
            end = True
    if (ufrag is None) != (pwd is None):
        raise WhipOfferError(400, "a=ice-ufrag and a=ice-pwd must come together")
    if ufrag is not None and pwd is not None:
        check_ice_credentials(ufrag, pwd)
    return TrickleUpdate(ufrag, pwd, tuple(candidates), end)
