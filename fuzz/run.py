"""Run one fuzz harness for a fixed time and print executions, execs/s and crashes.

    python fuzz/run.py session --seconds 60
    python fuzz/run.py flv --seconds 60 --engine random     # without atheris
    python fuzz/run.py session --merge                     # fold new finds into corpus/

With atheris (the default when installed) the harness runs under libFuzzer in a child
process: coverage-guided, new inputs go to the scratch dir ``fuzz/.work/<harness>/corpus``
(never the committed corpus), crashes to ``fuzz/.work/<harness>/crashes``, the full log to
``fuzz/.work/<harness>/fuzz.log``; it stops at the first crash like libFuzzer does.
Without atheris a blind random mutator runs in-process over the committed corpus and
keeps going after crashes. Extra libFuzzer flags go after ``--``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import os
import random
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
HARNESSES = {"session": "fuzz_session", "flv": "fuzz_flv", "sdp": "fuzz_sdp",
             "url": "fuzz_url", "http": "fuzz_http", "proxy": "fuzz_proxy",
             "psrpc": "fuzz_psrpc", "lksignal": "fuzz_lksignal", "twcc": "fuzz_twcc"}
MAX_LEN = {"session": 32768, "flv": 16384, "sdp": 16384, "url": 4096, "http": 8192,
           "proxy": 20000, "psrpc": 8192, "lksignal": 8192, "twcc": 4096}
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFF, 0x1000000, 0x7FFFFFFF, 0xFFFFFFFF)


def _atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def _crash_files(folder: Path) -> set[Path]:
    prefixes = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
    if not folder.exists():
        return set()
    return {p for p in folder.iterdir() if p.name.startswith(prefixes)}


def run_atheris(args: argparse.Namespace, work: Path, extra: list[str]) -> tuple[int, float, int]:
    """libFuzzer in a child process; returns (executions, execs/s, crashes)."""
    scratch, crashes = work / "corpus", work / "crashes"
    scratch.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    before = _crash_files(crashes)
    corpus = FUZZ_DIR / "corpus" / args.harness
    cmd = [sys.executable, str(FUZZ_DIR / f"{HARNESSES[args.harness]}.py")]
    cmd += [f"-max_len={args.max_len}", "-timeout=10", "-rss_limit_mb=2048"]
    if args.merge:
        cmd += ["-merge=1", str(corpus), str(scratch)]
    else:
        cmd += [f"-max_total_time={args.seconds}", "-print_final_stats=1"]
        cmd += [f"-artifact_prefix={crashes}/", *extra, str(scratch), str(corpus)]
    wrapper = work / "harness.sh"  # what libFuzzer re-runs for -merge (needs an executable)
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{cmd[1]}" "$@"\n')
    wrapper.chmod(0o755)
    env = dict(os.environ, FUZZ_MEMCHECK="1" if args.memcheck else "0", FUZZ_ARGV0=str(wrapper))
    execs, rate = 0, 0.0
    start = time.monotonic()
    quiet = False  # inside libFuzzer's recommended-dictionary dump
    with open(work / "fuzz.log", "w") as log:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=log, text=True, env=env)
        assert proc.stderr is not None
        for line in proc.stderr:
            log.write(line)
            if m := re.match(r"#(\d+)\s", line):
                execs = int(m.group(1))
            if m := re.match(r"stat::number_of_executed_units: (\d+)", line):
                execs = int(m.group(1))
            if m := re.match(r"stat::average_exec_per_sec: (\d+)", line):
                rate = float(m.group(1))
            quiet = quiet or line.startswith("###### Recommended dictionary")
            if not quiet and not re.match(r"#\d+\s+(NEW|REDUCE)", line):
                sys.stderr.write(line)
            quiet = quiet and not line.startswith("###### End of recommended")
        proc.wait()
    if not rate and execs:
        rate = execs / max(time.monotonic() - start, 1e-9)
    found = sorted(_crash_files(crashes) - before)
    for path in found:
        print(f"crash input: {path}")
    if proc.returncode == 72 and not found:  # libFuzzer's -interrupted_exitcode (Ctrl-C)
        print("interrupted")
    elif proc.returncode and not found and not args.merge:
        print(f"fuzzer exited with {proc.returncode} (see {work / 'fuzz.log'})")
        return execs, rate, 1
    return execs, rate, len(found)


def mutate(data: bytes, pool: list[bytes], rng: random.Random, max_len: int) -> bytes:
    """A few random byte-level edits (bit flips, ints, inserts, deletes, splices)."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2:
            size = rng.choice((1, 2, 3, 4))
            value = rng.choice(INTERESTING) & ((1 << (8 * size)) - 1)
            buf[pos : pos + size] = value.to_bytes(size, rng.choice(("big", "little")))
        elif op == 3:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4:
            del buf[pos : pos + rng.randint(1, 64)]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            buf[pos:pos] = buf[start : start + rng.randint(1, 256)]
        elif op == 6:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            buf[pos:] = other[start : start + rng.randint(1, 4096)]
        elif op == 7:
            del buf[pos:]
    return bytes(buf[:max_len])


def run_random(args: argparse.Namespace, work: Path) -> tuple[int, float, int]:
    """Blind mutation in-process (no coverage feedback); keeps going after crashes."""
    os.environ["FUZZ_MEMCHECK"] = "1" if args.memcheck else "0"
    sys.path.insert(0, str(FUZZ_DIR))
    harness = importlib.import_module(HARNESSES[args.harness])
    target: Callable[[bytes], None] = harness.run_one
    pool = [p.read_bytes() for p in sorted((FUZZ_DIR / "corpus" / args.harness).iterdir())]
    crashes = work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    seen: set[str] = set()
    execs = found = 0
    start = time.monotonic()
    deadline = start + args.seconds
    while time.monotonic() < deadline:
        data = mutate(rng.choice(pool), pool, rng, args.max_len)
        execs += 1
        try:
            target(data)
        except Exception as exc:
            found += 1
            path = crashes / f"crash-{hashlib.sha1(data).hexdigest()}"
            path.write_bytes(data)
            key = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if key not in seen:
                seen.add(key)
                print(f"crash input: {path}\n{''.join(traceback.format_exception(exc))}")
    elapsed = time.monotonic() - start
    return execs, execs / max(elapsed, 1e-9), found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("harness", choices=sorted(HARNESSES))
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--memcheck", action="store_true", help="tracemalloc bound per input")
    parser.add_argument("--merge", action="store_true", help="add scratch finds to corpus/")
    parser.add_argument("--seed", type=int, default=1, help="random engine seed")
    parser.add_argument("--work", type=Path, default=None, help="scratch dir")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    args.max_len = args.max_len or MAX_LEN[args.harness]
    work = args.work or FUZZ_DIR / ".work" / args.harness
    work.mkdir(parents=True, exist_ok=True)
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "random"
    if engine == "atheris" and not _atheris_available():
        sys.exit("atheris is not installed (pip install atheris), or use --engine random")
    if args.merge and engine != "atheris":
        sys.exit("--merge needs atheris")
    if engine == "atheris":
        execs, rate, crashes = run_atheris(args, work, extra)
    else:
        execs, rate, crashes = run_random(args, work)
    if args.merge:
        print(f"merged into {FUZZ_DIR / 'corpus' / args.harness}")
        sys.exit(1 if crashes else 0)
    print(
        f"harness={args.harness} engine={engine} seconds={args.seconds} "
        f"executions={execs} execs_per_sec={rate:.0f} crashes={crashes}"
    )
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
