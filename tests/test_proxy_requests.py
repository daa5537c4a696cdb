"""The egress gate's request parser (relay/worker/_proxy_requests.py), sans-IO: bytes in,
events out, whatever the chunks the bytes arrive in.

Every input is fed whole, split in two at every offset, and byte by byte: the events
(or the error) must be the same. The gate itself, with sockets: tests/test_egress.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.worker._proxy_requests import (
    HEAD_LIMIT,
    NEED_DATA,
    PAUSED,
    Connect,
    ConnectionClosed,
    Forward,
    ProxyRequestError,
    ProxyRequests,
)

Outcome = tuple[list[object], int | None, bytes]  # events, the error's status, the tunnel's


def splits(data: bytes) -> Iterator[list[bytes]]:
    """`data` whole, in two at every offset, and byte by byte."""
    yield [data]
    for at in range(1, len(data)):
        yield [data[:at], data[at:]]
    yield [data[i:i + 1] for i in range(len(data))]


def run(chunks: list[bytes], *, eof: bool = True) -> Outcome:
    """Feed the chunks (then the end of the input), reading every event in between as
    a shell does; stop at ConnectionClosed or the error. At PAUSED, the tunnel's bytes
    are the trailing data and the chunks not fed (a shell copies those itself)."""
    parser = ProxyRequests()
    events: list[object] = []
    try:
        for index, chunk in enumerate(chunks):
            parser.receive_data(chunk)
            while (event := parser.next_event()) is not NEED_DATA:
                if event is PAUSED:
                    return events, None, parser.trailing_data + b"".join(chunks[index + 1:])
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    return events, None, b""
        if eof:
            parser.receive_data(b"")
            while (event := parser.next_event()) is not PAUSED:
                assert event is not NEED_DATA
                events.append(event)
                if isinstance(event, ConnectionClosed):
                    break
    except ProxyRequestError as exc:
        return events, exc.status, b""
    return events, None, b""


def outcome(data: bytes, *, eof: bool = True) -> Outcome:
    """The outcome of `data`, checked to be the same however it is split."""
    first = run([data], eof=eof)
    for chunks in splits(data):
        assert run(chunks, eof=eof) == first, chunks
    return first


def test_a_get_is_forwarded_in_origin_form_without_proxy_headers() -> None:
    data = (b"GET http://Media.Example:8080/a/b.m3u8?x=1#frag HTTP/1.1\r\n"
            b"Host: media.example:8080\r\nProxy-Connection: keep-alive\r\n"
            b"proxy-authorization: Basic eA==\r\nUser-Agent: t\r\n\r\n")
    events, error, _ = outcome(data)
    assert error is None
    assert events == [
        Forward(b"GET", "media.example", 8080, b"GET /a/b.m3u8?x=1 HTTP/1.1\r\n"
                b"Host: media.example:8080\r\nUser-Agent: t\r\n\r\n"),
        ConnectionClosed(),
    ]


def test_requests_follow_one_another_and_may_change_origin() -> None:
    data = (b"HEAD http://a.test/x HTTP/1.1\r\n\r\n"
            b"GET http://[2001:db8::1]:81 HTTP/1.0\r\nRange: bytes=0-\r\n\r\n"
            b"GET http://a.test/y HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    events, error, _ = outcome(data)
    assert error is None
    assert events == [
        Forward(b"HEAD", "a.test", 80, b"HEAD /x HTTP/1.1\r\n\r\n"),
        Forward(b"GET", "2001:db8::1", 81, b"GET / HTTP/1.0\r\nRange: bytes=0-\r\n\r\n"),
        Forward(b"GET", "a.test", 80, b"GET /y HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        ConnectionClosed(),
    ]


def test_events_come_as_soon_as_a_head_is_whole() -> None:
    parser = ProxyRequests()
    parser.receive_data(b"GET http://a.test/ HTTP/1.1\r\n\r")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"\nGET http://b.test/ HTTP/1.1\r\n")
    assert isinstance(parser.next_event(), Forward)
    assert parser.next_event() is NEED_DATA  # the second head is not whole yet
    parser.receive_data(b"\r\n")
    event = parser.next_event()
    assert isinstance(event, Forward) and event.host == "b.test"
    assert parser.next_event() is NEED_DATA


@pytest.mark.parametrize(("authority", "host", "port"), [
    (b"media.example:443", "media.example", 443),
    (b"[2001:db8::1]:8443", "2001:db8::1", 8443),
    (b"2001:db8::1:8443", "2001:db8::1", 8443),  # Python 3.11's http.client, no brackets
    (b"10.0.0.1:65535", "10.0.0.1", 65535),
])
def test_connect_opens_a_tunnel_and_hands_back_what_followed(authority: bytes, host: str,
                                                            port: int) -> None:
    data = b"CONNECT " + authority + b" HTTP/1.1\r\nHost: x\r\n\r\n\x16\x03\x01 hello"
    assert outcome(data, eof=False) == ([Connect(host, port)], None, b"\x16\x03\x01 hello")


def test_after_connect_the_parser_is_done() -> None:
    parser = ProxyRequests()
    parser.receive_data(b"CONNECT a.test:443 HTTP/1.1\r\n\r\nGET http://a.test/ HTTP/1.1\r\n\r\n")
    assert parser.next_event() == Connect("a.test", 443)
    assert parser.next_event() is PAUSED  # what follows is the tunnel's, not a request
    assert parser.trailing_data == b"GET http://a.test/ HTTP/1.1\r\n\r\n"
    with pytest.raises(RuntimeError):
        parser.receive_data(b"more")


def test_the_end_of_the_input_between_requests_closes() -> None:
    assert outcome(b"") == ([ConnectionClosed()], None, b"")
    parser = ProxyRequests()
    parser.receive_data(b"")
    assert parser.next_event() == ConnectionClosed()
    assert parser.next_event() == ConnectionClosed()
    with pytest.raises(RuntimeError):
        parser.receive_data(b"late")


GOOD = b"GET http://a.test/ HTTP/1.1\r\n\r\n"


@pytest.mark.parametrize(("data", "status"), [
    (b"POST http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 405),
    (b"PUT http://a.test/ HTTP/1.1\r\n\r\n", 405),
    (b"get http://a.test/ HTTP/1.1\r\n\r\n", 405),  # methods are case-sensitive
    (GOOD + b"CONNECT a.test:443 HTTP/1.1\r\n\r\n", 405),  # not after forwarded requests
    (b"GET /origin-form HTTP/1.1\r\n\r\n", 400),
    (b"GET https://a.test/ HTTP/1.1\r\n\r\n", 400),  # https is CONNECT's
    (b"GET ftp://a.test/x HTTP/1.1\r\n\r\n", 400),
    (b"GET http:///x HTTP/1.1\r\n\r\n", 400),
    (b"GET http://a.test:0/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://a.test:99999/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://a.test:x/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://[::1/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://a.test/ HTTP/2\r\n\r\n", 400),
    (b"GET  http://a.test/ HTTP/1.1\r\n\r\n", 400),
    (b"GET http://a.test/\r\n\r\n", 400),
    (b"\r\n\r\n", 400),
    (b"not http at all\r\n\r\n", 400),
    (b"GET http://a.test/ HTTP/1.1\r\nX: a\nHost: b\r\n\r\n", 400),  # a bare LF
    (b"GET http://a.test/ HTTP/1.1\r\nX: a\rb\r\n\r\n", 400),  # a bare CR
    (b"GET http://a.test/ HTTP/1.1\r\nX: \0\r\n\r\n", 400),
    (b"GET http://a.test/ HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400),  # a body
    (b"GET http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"CONNECT a.test HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a.test: HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT :443 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a.test:0 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a.test:65536 HTTP/1.1\r\n\r\n", 400),
    (b"CONNECT a.test:\xb2 HTTP/1.1\r\n\r\n", 400),  # a digit to str.isdigit(), not a port
    (b"GET http://a.test/ HTTP/1.1\r\n", 400),  # the input ends inside a head
    (GOOD + b"GET", 400),
])
def test_what_a_pull_does_not_send_is_refused(data: bytes, status: int) -> None:
    events, error, _ = outcome(data)
    assert error == status
    forwarded = Forward(b"GET", "a.test", 80, b"GET / HTTP/1.1\r\n\r\n")
    assert events == ([forwarded] if data.startswith(GOOD) else [])


def test_a_head_is_at_most_head_limit_bytes() -> None:
    line = b"GET http://a.test/ HTTP/1.1\r\nX: "
    fits = line + b"a" * (HEAD_LIMIT - len(line)) + b"\r\n\r\n"
    assert len(fits) == HEAD_LIMIT + 4
    events, error, _ = run([fits])
    assert error is None and isinstance(events[0], Forward)
    over = line + b"a" * (HEAD_LIMIT - len(line) + 1) + b"\r\n\r\n"
    assert run([over]) == ([], 400, b"")
    assert run([over[i:i + 1000] for i in range(0, len(over), 1000)]) == ([], 400, b"")


def test_an_endless_head_is_refused_without_its_end() -> None:
    """The buffer never holds more than HEAD_LIMIT + 3 bytes of an unfinished head (the
    most a head that still fits may have before its blank line is whole): the refusal
    comes with the byte after them, not at the end of the input."""
    start = b"GET http://a.test/ HTTP/1.1\r\nX: "
    parser = ProxyRequests()
    parser.receive_data(start + b"a" * (HEAD_LIMIT - len(start)) + b"\r\n\r")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"a")
    with pytest.raises(ProxyRequestError) as caught:
        parser.next_event()
    assert caught.value.status == 400


def test_an_error_is_final() -> None:
    parser = ProxyRequests()
    parser.receive_data(b"POST http://a.test/ HTTP/1.1\r\n\r\n" + GOOD)
    with pytest.raises(ProxyRequestError) as first:
        parser.next_event()
    with pytest.raises(ProxyRequestError) as again:
        parser.next_event()
    assert again.value is first.value and first.value.status == 405


@given(st.lists(st.binary(min_size=1, max_size=64), max_size=8),
       st.sampled_from([b"", GOOD, b"CONNECT a.test:1 HTTP/1.1\r\n\r\n"]))
def test_any_input_gives_events_or_the_documented_error(chunks: list[bytes], prefix: bytes
                                                        ) -> None:
    """Whatever the bytes: events, NEED_DATA, PAUSED or ProxyRequestError, nothing else
    (no IndexError, no UnicodeError from a stray byte)."""
    events, error, _ = run([chunk for chunk in (prefix, *chunks) if chunk])
    assert error in (None, 400, 405)
    assert all(isinstance(e, Connect | Forward | ConnectionClosed) for e in events)


def test_a_folded_header_line_is_refused() -> None:
    """obs-fold (RFC 9112 5.2): a proxy refuses it or unfolds it; the gate refuses, so
    an indented `Proxy-Authorization` cannot pass as the previous header's value."""
    parser = ProxyRequests()
    parser.receive_data(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n"
                        b" Proxy-Authorization: Basic eA==\r\n\r\n")
    with pytest.raises(ProxyRequestError) as caught:
        parser.next_event()
    assert caught.value.status == 400
