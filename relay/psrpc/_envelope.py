"""The envelope of every psrpc message on Redis, and the core's one error type for bad input.

internal/bus/serialization.go: a message is published as ``internal.Msg{type_url, value,
channel}`` with ``type_url = "type.googleapis.com/" + full name`` and ``channel`` empty on
Redis: byte for byte a ``google.protobuf.Any``; readers parse it as ``Any`` (unknown fields
discarded) and resolve the type by the name after the last ``/``.
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message

from . import _proto as pb

__all__ = ["MAX_PAYLOAD", "TYPE_URL_PREFIX", "PsrpcProtocolError", "decode", "decode_payload",
           "encode"]

MAX_PAYLOAD = 1 << 20
"""Bytes a Redis message may have; larger ones are refused before parsing (our bound:
psrpc has none, LiveKit's messages are a few KiB)."""
TYPE_URL_PREFIX = "type.googleapis.com/"

M = TypeVar("M", bound=Message)


class PsrpcProtocolError(ValueError):
    """A message from the bus that this core cannot accept: oversized, not an envelope,
    an unexpected type, or a body that does not parse as its type.

    It is the only exception ``receive`` raises for what comes from Redis, so a transport
    catches it, logs it and goes on: the object that raised it stays usable (one bad
    message affects nothing else).
    """


def encode(message: Message) -> bytes:
    """What psrpc's Redis bus publishes for ``message``."""
    full_name = message.DESCRIPTOR.full_name
    return pb.Msg(type_url=TYPE_URL_PREFIX + full_name,
                  value=message.SerializeToString()).SerializeToString()


def decode(payload: bytes, *types: type[Message]) -> Message:
    """The message in an envelope, which must be of one of ``types``.

    Raises :class:`PsrpcProtocolError` for anything else.
    """
    if len(payload) > MAX_PAYLOAD:
        raise PsrpcProtocolError(f"message of {len(payload)} bytes (limit {MAX_PAYLOAD})")
    envelope = pb.Msg()
    try:
        envelope.ParseFromString(payload)
    except DecodeError as exc:
        raise PsrpcProtocolError(f"not a psrpc envelope: {exc}") from None
    name = envelope.type_url.rpartition("/")[2]
    for message_type in types:
        if message_type.DESCRIPTOR.full_name == name:
            return decode_payload(envelope.value, message_type)
    expected = ", ".join(t.DESCRIPTOR.full_name for t in types)
    raise PsrpcProtocolError(f"type {envelope.type_url[:100]!r} where {expected} was expected")


def decode_payload(data: bytes, message_type: type[M]) -> M:
    """``data`` (a ``raw_request``/``raw_response`` or an envelope's value) as
    ``message_type``; :class:`PsrpcProtocolError` if it does not parse."""
    if len(data) > MAX_PAYLOAD:
        raise PsrpcProtocolError(f"payload of {len(data)} bytes (limit {MAX_PAYLOAD})")
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        raise PsrpcProtocolError(f"malformed {name}: {exc}") from None
    return message
