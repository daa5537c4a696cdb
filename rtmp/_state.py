"""What :meth:`ServerSession.next_event` returns when it has no event.

Two sentinels, in the style of h11's ``NEED_DATA``/``PAUSED``: classes whose ``repr`` is
their name and whose type is themselves, compared with ``is``. Neither is an
:data:`rtmp.Event`, so ``isinstance(x, rtmp.Event)`` tells events from them.

* :data:`NEED_DATA`: nothing more can be parsed until :meth:`receive_data` gets bytes.
* :data:`PAUSED`: a :class:`PublishRequested` awaits ``accept_publish`` /
  ``reject_publish``; nothing is parsed until then, however many bytes are buffered.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NEED_DATA", "PAUSED", "Sentinel"]


class Sentinel(type):
    """Metaclass of the sentinels: each is a class that is an instance of itself (h11)."""

    def __new__(
        cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwds: Any
    ) -> Sentinel:
        assert bases == (Sentinel,)
        v = super().__new__(cls, name, bases, namespace, **kwds)
        v.__class__ = v  # type: ignore[assignment]
        return v

    def __repr__(self) -> str:
        return self.__name__


class NEED_DATA(Sentinel, metaclass=Sentinel):
    """``next_event()``: no event until more bytes are received."""


class PAUSED(Sentinel, metaclass=Sentinel):
    """``next_event()``: a publish awaits ``accept_publish``/``reject_publish``."""
