"""The worker's own resource limits, set first thing (before the Start is read).

The service passes them in the environment (relay.wire.WorkerLimits). Each is set
as soft = hard: a worker cannot raise a hard limit again, so code that a hostile
stream gets to run in a decoder stays inside them. Core dumps are off: a worker's
memory holds its join token and the stream's key. Transparent huge pages are off
too: libx264 asks for them for its frame buffers, and a 2 MB page is resident
whole however little of it is used (5 MB of a 720p session's RSS, measured by
bench/sessions.py; its CPU stayed within the noise).
"""

from __future__ import annotations

import ctypes
import logging
import resource
from collections.abc import Mapping

from relay.wire import WorkerLimits

log = logging.getLogger("relay.worker")

CPU_KILL_GRACE = 5  # seconds of CPU between SIGXCPU (soft) and SIGKILL (hard)
PR_SET_THP_DISABLE = 41  # linux/prctl.h


def apply_limits(environ: Mapping[str, str]) -> WorkerLimits:
    """Set the limits the environment asks for; return them."""
    limits = WorkerLimits.from_environment(environ)
    _lower(resource.RLIMIT_CORE, 0)
    _no_huge_pages()
    if limits.memory_mb:
        _lower(resource.RLIMIT_AS, limits.memory_mb * 1024 * 1024)
    if limits.cpu_seconds:
        _lower(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + CPU_KILL_GRACE)
    return limits


def _lower(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit to `soft` (and the hard one to `hard`, default `soft`), never
    raising what the service itself was given."""
    old_hard = resource.getrlimit(which)[1]
    hard = soft if hard is None else hard
    if old_hard != resource.RLIM_INFINITY:
        hard = min(hard, old_hard)
        soft = min(soft, hard)
    resource.setrlimit(which, (soft, hard))


def _no_huge_pages() -> None:
    """Transparent huge pages off for this process (and what it would start)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0:
            log.info("huge pages stay on: prctl failed (errno %d)", ctypes.get_errno())
    except (OSError, AttributeError):  # no prctl here: not Linux
        log.info("huge pages stay on: no prctl")
