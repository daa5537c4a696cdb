"""No key material in errors: a pull URL's query, user info and an ingress' stream key
never reach `state.error` or a log, even when a library's error text quotes the URL."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb

from api.redaction import REDACTED, scrub, url_secrets
from relay.service.ingest.lifetime import Live
from relay.worker.url_input import SourceError, probe_http
from tests.service import ServiceProcess

SECRET = "SECRETtoken123"
PASSWORD = "hunter2pw"


def invalid_url_error(url: str) -> str:
    """The worker's own text for a URL urllib refuses (nothing is connected to)."""
    with pytest.raises(SourceError) as err:
        probe_http(url, timeout=1)
    return str(err.value)


@pytest.mark.parametrize("url", [
    f"http://127.0.0.1:9/a b?token={SECRET}",  # a space in the path
    f"http://127.0.0.1:9/a\x01b?token={SECRET}&x=1",  # a control character
    f"http://127.0.0.1:9/live?token={SECRET}&note=a b",  # a space in the query itself
    f"http://user:{PASSWORD}@127.0.0.1:9/a b?sig={SECRET}",
    f"http://127.0.0.1:9/a%20b?token={SECRET}&sig=ab%2Bcd\x7f",
])
def test_urllib_texts_that_quote_the_url_are_scrubbed(url: str) -> None:
    raw = invalid_url_error(url)
    assert raw.startswith("invalid URL http://127.0.0.1:9/")
    scrubbed = scrub(raw, url)
    assert SECRET not in scrubbed and PASSWORD not in scrubbed, scrubbed
    assert scrubbed.startswith("invalid URL http://127.0.0.1:9/")  # still says what failed


def test_secret_parts_of_a_url() -> None:
    url = f"https://u:{PASSWORD}@cdn.example/a.m3u8?X-Sig={SECRET}&exp=17&q=ab%2Bcd#frag-ment"
    pieces = url_secrets(url)
    for piece in (SECRET, PASSWORD, f"u:{PASSWORD}", "ab%2Bcd", "ab+cd", "frag-ment"):
        assert piece in pieces, piece
    assert "17" not in pieces  # too short to be a secret; replacing it would garble text
    assert scrub(f"fetching {url} failed", url) == (
        f"fetching https://{REDACTED}@cdn.example/a.m3u8?{REDACTED}#{REDACTED} failed")
    srt = f"srt://10.0.0.1:9000?streamid=publish:cam&passphrase={SECRET}"
    assert SECRET not in scrub(f"bad option passphrase={SECRET}", srt)
    assert scrub("no secret here", "") == "no secret here"
    assert SECRET not in scrub(f"x {SECRET}", f"http://[::1/?token={SECRET}")  # unparsable


def test_a_failing_session_keeps_no_key_material() -> None:
    url = f"http://127.0.0.1:9/a b?token={SECRET}"
    live = Live("url", pb.IngressInfo(ingress_id="IN_x", url=url), "UR_x", 1)
    live.fail(invalid_url_error(url))
    assert SECRET not in live.error and SECRET not in live.reason
    assert live.error.startswith("invalid URL http://127.0.0.1:9/a b: ")
    push = Live("rtmp", pb.IngressInfo(ingress_id="IN_y", stream_key="StreamKey2345",
                                       url="rtmp://h/x"), "RT_y", 1)
    push.fail("decoder said: rtmp://h/x/StreamKey2345 is broken")
    assert push.error == f"decoder said: rtmp://h/x/{REDACTED} is broken"


@pytest.fixture
def silent_livekit() -> Iterator[str]:
    """A ws_url whose server takes the TCP connection and never answers: the worker's
    join waits, so its URL's own failure is what ends the session."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"ws://127.0.0.1:{server.getsockname()[1]}"


def test_an_invalid_pull_url_errors_without_its_secret(tmp_path: Path,
                                                       silent_livekit: str) -> None:
    """End to end: the real service and its URL worker process. urllib refuses the URL
    with a text quoting its path and query; neither the ingress' state nor the
    service's log (the worker's included) may show the token."""
    service = ServiceProcess(tmp_path, ws_url=silent_livekit)
    service.start()
    try:
        url = f"http://127.0.0.1:9/live/a b?token={SECRET}"

        async def create(client: Any) -> pb.IngressInfo:
            return await client.create_ingress(pb.CreateIngressRequest(
                input_type=pb.IngressInput.URL_INPUT, url=url, room_name="r",
                participant_identity="puller"))

        info = service.api(create)
        deadline = time.monotonic() + 20
        while True:
            async def get(client: Any) -> pb.IngressState:
                return (await client.list_ingress(pb.ListIngressRequest(
                    ingress_id=info.ingress_id))).items[0].state

            state = service.api(get)
            if state.status == pb.IngressState.ENDPOINT_ERROR or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state.status == pb.IngressState.ENDPOINT_ERROR, state
        assert state.error.startswith("invalid URL http://127.0.0.1:9/live/a b: "), state.error
        assert SECRET not in state.error
        time.sleep(0.5)  # the worker's and the service's last log lines
        log = service.log()
        assert "session failed: invalid URL http://127.0.0.1:9/live/a b" in log, log
        assert SECRET not in log
    finally:
        service.stop()
