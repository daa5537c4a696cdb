"""The worker's side of the wire from the service (its stdin): the next messages.

Every input reads the front the same way: a read, the messages it completes, and
an end that is either the front's `EndOfStream` or the pipe closing.
"""

from __future__ import annotations

import trio

from relay.wire import EndOfStream, Message, MessageReader

FRONT_CLOSED = "the service closed the session"


async def receive_from_front(reader: MessageReader,
                             stdin: trio.abc.ReceiveStream) -> list[Message]:
    """The messages completed by the next read; `[EndOfStream]` when stdin closes."""
    data = await stdin.receive_some(1 << 16)
    if not data:
        return [EndOfStream(FRONT_CLOSED, drain=False)]
    reader.receive_data(data)
    return list(reader)
