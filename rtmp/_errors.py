"""The single exception type of the RTMP core."""

from __future__ import annotations

__all__ = ["RTMPProtocolError"]


class RTMPProtocolError(ValueError):
    """The peer sent something this core cannot or will not accept.

    It is the only exception any parser in :mod:`rtmp` raises on bad input, so a caller
    can wrap ``receive_data``/``next_event`` in one ``except`` and drop the connection.
    """
