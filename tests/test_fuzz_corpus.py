"""The fuzz corpora as regression tests, plus a short fixed fuzz run of each harness.

Every file under fuzz/corpus/<harness>/ (seeds from the real captures, merged fuzzer
finds and every fixed crasher) goes through that harness's full oracle, with the
tracemalloc bound on: only RTMPProtocolError, caps held, whole == re-split, FLV == live;
for the WHIP core (sdp) only WhipOfferError, and CRLF == LF; for URL ingresses (url)
only invalid_argument from validation, a redaction that never raises, only SrtError
from the SRT URL parser; for the egress gate's request parser (proxy) only
ProxyRequestError, whole == re-split, clean forwarded heads, the buffer's bound; for the
psrpc core (psrpc) only PsrpcProtocolError, valid own messages, every request ended
once, nothing left at the end of time, the objects still usable; for the LiveKit
signalling core (lksignal) only SignalProtocolError leaving the client as it was, sane
events of the documented types, the pending bound, the client still usable; for the
congestion control (twcc) only FeedbackError leaving the estimator as it was, results
as the header says, the estimate within its bounds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))

import fuzz_flv  # noqa: E402
import fuzz_http  # noqa: E402
import fuzz_lksignal  # noqa: E402
import fuzz_proxy  # noqa: E402
import fuzz_psrpc  # noqa: E402
import fuzz_sdp  # noqa: E402
import fuzz_session  # noqa: E402
import fuzz_twcc  # noqa: E402
import fuzz_url  # noqa: E402

HARNESSES: dict[str, ModuleType] = {"session": fuzz_session, "flv": fuzz_flv, "sdp": fuzz_sdp,
                                    "url": fuzz_url, "http": fuzz_http, "proxy": fuzz_proxy,
                                    "psrpc": fuzz_psrpc, "lksignal": fuzz_lksignal,
                                    "twcc": fuzz_twcc}
CASES = [
    pytest.param(name, path, id=f"{name}/{path.name}")
    for name in HARNESSES
    for path in sorted((FUZZ / "corpus" / name).iterdir())
]


def test_corpus_is_small() -> None:
    """The committed corpus stays a regression set, not a dump of a long run."""
    total = sum(p.stat().st_size for p in (FUZZ / "corpus").rglob("*") if p.is_file())
    assert total < 2 * 1024 * 1024


@pytest.mark.parametrize(("name", "path"), CASES)
def test_corpus_file(name: str, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    harness = HARNESSES[name]
    monkeypatch.setattr(harness, "MEMCHECK", True)
    harness.run_one(path.read_bytes())


def test_every_mode_is_seeded() -> None:
    """Each harness mode (selected by the first byte) has at least one seed."""
    for name, harness in HARNESSES.items():
        modes = {p.read_bytes()[0] % len(harness.MODES) for p in (FUZZ / "corpus" / name).iterdir()}
        assert modes == set(range(len(harness.MODES))), name


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_short_fuzz_run(name: str, tmp_path: Path) -> None:
    """10 s of fuzzing (atheris if installed, else the random mutator) finds nothing."""
    proc = subprocess.run(
        [sys.executable, str(FUZZ / "run.py"), name, "--seconds", "10", "--work", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "crashes=0" in proc.stdout
