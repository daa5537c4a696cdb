"""Small trio helpers shared by the service's modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


def sole_exception(exc: BaseException) -> BaseException:
    """The exception inside nested one-member exception groups (or `exc` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextmanager
def unwrap_single_exception() -> Iterator[None]:
    """Let a lone exception out of a nursery-backed context manager as itself.

    A context manager that yields inside a nursery would hand its caller's own
    exception back wrapped in an ExceptionGroup; callers should see what they raised.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise sole_exception(group) from None
        raise
