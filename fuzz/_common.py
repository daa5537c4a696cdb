"""Shared oracle pieces of the RTMP fuzz harnesses (imported after ``rtmp`` is instrumented).

The harnesses check more than "no exception": the core promises that only
:class:`rtmp.RTMPProtocolError` escapes, that memory stays under its caps and that results
do not depend on how the input was split into reads. Everything here is deterministic in
the input bytes, so a crash file always reproduces.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rtmp

FUZZ_DIR = Path(__file__).resolve().parent
ROOT = FUZZ_DIR.parent
CAPTURES = ROOT / "tests" / "rtmp" / "captures"
CORPUS = FUZZ_DIR / "corpus"
HANDSHAKE_LEN = 1 + 2 * 1536  # C0 + C1 + C2
BYTEWISE_MAX = 256  # inputs up to this size are also fed one byte at a time


class OracleFailure(AssertionError):
    """The code under test broke one of its promises (a fuzzer crash, not bad input)."""


def capture(name: str) -> bytes:
    """Raw client->server bytes of a real publisher session (see tests/rtmp/captures)."""
    return (CAPTURES / f"{name}.bin").read_bytes()


class DetRandom:
    """Deterministic handshake randomness (picklable, so prefixed sessions can be cloned).

    Server output can then be compared byte for byte between two runs.
    """

    def __init__(self, seed: bytes = b"fuzz") -> None:
        self.seed = seed
        self.counter = 0

    def __call__(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        return bytes(out[:n])


def check_error(exc: BaseException) -> str:
    """Return the message of an allowed error; raise OracleFailure for anything else.

    There is no catch-all in the core: an exception of another type escapes as itself
    (and, outside this function, crashes the fuzzer). Two parser safety nets map what
    bad bytes could still cause where they are read (IndexError past a tag body's end,
    RecursionError in AMF); reaching one means a parser missed a check, so the fuzzer
    treats it as a bug too: any non-RTMPProtocolError in the ``__context__`` chain.
    """
    if not isinstance(exc, rtmp.RTMPProtocolError):
        raise OracleFailure(f"{type(exc).__name__} escaped: {exc}") from exc
    ctx = exc.__context__
    while ctx is not None:
        if not isinstance(ctx, rtmp.RTMPProtocolError):
            raise OracleFailure(
                f"safety net caught {type(ctx).__name__}: {ctx} (reported as {exc})"
            ) from ctx
        ctx = ctx.__context__
    return str(exc)


def split(data: bytes, *, always_cut: bool = False) -> list[bytes]:
    """A deterministic re-chunking of ``data``: byte by byte if short, else hashed cuts.

    An empty piece is included because ``receive_data(b"")`` must be harmless.
    """
    n = len(data)
    if n <= BYTEWISE_MAX:
        return [b""] + [data[i : i + 1] for i in range(n)]
    rng = random.Random(hashlib.blake2b(data, digest_size=8).digest())
    cuts = sorted(rng.sample(range(1, n), min(n - 1, rng.randint(1, 48))))
    pieces = [b""]
    prev = 0
    for c in cuts:
        pieces.append(data[prev:c])
        prev = c
    pieces.append(data[prev:])
    return pieces


def same(a: Any, b: Any) -> bool:
    """Equality that treats NaN as equal to itself (AMF numbers may be NaN)."""
    return a == b or repr(a) == repr(b)


def expect_same(what: str, a: Any, b: Any, labels: tuple[str, str] = ("whole", "split")) -> None:
    """Raise OracleFailure showing both sides when two results differ."""
    if not same(a, b):
        raise OracleFailure(
            f"{what} differ:\n  {labels[0]}: {a!r:.2000}\n  {labels[1]}: {b!r:.2000}"
        )


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise OracleFailure(message)


@contextmanager
def memory_bound(limit: int | None) -> Iterator[None]:
    """Fail if Python allocations peak above ``limit`` bytes inside the block (None: off)."""
    if limit is None:
        yield
        return
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    try:
        yield
    finally:
        peak = tracemalloc.get_traced_memory()[1] - base
        if started:
            tracemalloc.stop()
    if peak > limit:
        raise OracleFailure(f"memory peak {peak} bytes above the bound {limit}")


def corpus_files(harness: str) -> list[Path]:
    return sorted(p for p in (CORPUS / harness).iterdir() if p.is_file())


def libfuzzer_main(atheris: Any, harness: str, target: Callable[[bytes], None]) -> None:
    """libFuzzer's entry, for a harness run as a script. libFuzzer's -merge/-fork
    re-run argv[0]: run.py points FUZZ_ARGV0 at an executable wrapper."""
    if atheris is None:
        sys.exit(f"atheris is not installed: use `python fuzz/run.py {harness} --engine random`")
    atheris.Setup([os.environ.get("FUZZ_ARGV0", sys.argv[0]), *sys.argv[1:]], target)
    atheris.Fuzz()
