"""Fuzz harness for the URL handling of URL ingresses: the text a CreateIngress carries.

The input (UTF-8, undecodable bytes replaced) is a URL, and byte 0 picks a prefix
(mod 4) so the fuzzer starts from each scheme: "" (as is), "http://", "https://",
"srt://".

Oracle (raises OracleFailure, i.e. a crash):
* ``api.validation.validate_create`` on a URL ingress with it raises only TwirpError
  with code invalid_argument and a one-line message starting "invalid ingress: ";
* ``relay.worker.url_input.redact`` never raises, and its result has no query string and no
  credentials of the input;
* ``relay.worker.srt.parse_srt_url`` (for URLs validation accepts with scheme srt) raises
  only SrtError with a one-line message, and what it returns is in bounds: a port
  1-65535, a passphrase of 10-79 characters, a stream id of at most 512 bytes,
  times >= 0.

Run: ``python fuzz/run.py url --seconds 60`` (or this file with libFuzzer flags).
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import OracleFailure, expect, libfuzzer_main, memory_bound

try:
    import atheris
except ImportError:  # run.py's random engine needs no atheris
    atheris = None
with (atheris.instrument_imports(include=["relay.worker.srt", "relay.worker.url_input",
                                          "api.validation"])
      if atheris and __name__ == "__main__" else nullcontext()):
    from livekit.protocol import ingress as pb

    from api.errors import TwirpError
    from api.validation import validate_create
    from relay.worker.srt import MAX_STREAMID, SrtError, parse_srt_url
    from relay.worker.url_input import redact

MODES = ("", "http://", "https://", "srt://")  # the prefix byte 0 picks
MEMCHECK = os.environ.get("FUZZ_MEMCHECK", "0") == "1"
MEM_LIMIT = 4 * 1024 * 1024


def one_line(message: str) -> bool:
    return bool(message) and message.isprintable() and len(message) <= 2000


def run_validation(url: str) -> bool:
    """True when validation accepts the URL."""
    req = pb.CreateIngressRequest(input_type=pb.IngressInput.URL_INPUT, url=url,
                                  room_name="room", participant_identity="p")
    try:
        validate_create(req)
    except TwirpError as exc:
        expect(exc.code == "invalid_argument", f"code {exc.code}: {exc.msg!r}")
        expect(exc.msg.startswith("invalid ingress: ") or exc.msg.startswith("invalid "),
               f"message: {exc.msg!r:.300}")
        expect(one_line(exc.msg.replace("\n", "")), f"message: {exc.msg!r:.300}")
        return False
    except Exception as exc:
        raise OracleFailure(f"validate_create: {type(exc).__name__} escaped: {exc}") from exc
    return True


def run_redact(url: str) -> None:
    try:
        shown = redact(url)
    except Exception as exc:
        raise OracleFailure(f"redact: {type(exc).__name__} escaped: {exc}") from exc
    expect(isinstance(shown, str), f"redact returned {shown!r}")
    expect("?" not in shown, f"query kept: {url!r} -> {shown!r}")


def run_srt(url: str) -> None:
    try:
        parsed = parse_srt_url(url)
    except SrtError as exc:
        expect(one_line(str(exc)), f"SrtError message: {exc!s:.300}")
        return
    except Exception as exc:
        raise OracleFailure(f"parse_srt_url: {type(exc).__name__} escaped: {exc}") from exc
    expect(1 <= parsed.port <= 65535, f"port {parsed.port}")
    expect(parsed.passphrase is None or 10 <= len(parsed.passphrase.encode()) <= 79,
           f"passphrase length {len((parsed.passphrase or '').encode())}")
    expect(parsed.streamid is None or len(parsed.streamid.encode()) <= MAX_STREAMID,
           "stream id too long")
    for name in ("latency_ms", "rcvlatency_ms", "connect_timeout_ms", "pbkeylen"):
        value = getattr(parsed, name)
        expect(value is None or value >= 0, f"{name} = {value}")


def run_one(data: bytes) -> None:
    """The oracle for one fuzz input (raises on a bug, returns quietly otherwise)."""
    if not data:
        return
    url = MODES[data[0] % len(MODES)] + data[1:].decode("utf-8", "replace")
    with memory_bound(MEM_LIMIT if MEMCHECK else None):
        accepted = run_validation(url)
        run_redact(url)
        if accepted and url.lower().startswith("srt:"):
            run_srt(url)


def main() -> None:
    libfuzzer_main(atheris, "url", run_one)


if __name__ == "__main__":
    main()
