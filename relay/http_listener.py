"""HTTP listeners: the API/WHIP listening socket, and hypercorn for the others.

The API/WHIP socket is made here, bound and listening, so that API replicas
(relay/api_replica.py) can inherit it; relay/h11_server.py serves it in every
process. The separate health and Prometheus ports are served by hypercorn.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

HTTP_BACKLOG = 1024


def open_http_listener(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; it is not inherited unless passed on purpose."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepts
        sock.bind((host, port))
        sock.listen(HTTP_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


async def serve_http(app: Any, binds: list[str],
                     task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
                     ) -> None:
    """hypercorn on `binds` ("host:port"); reports the bound URLs."""
    hconfig = HypercornConfig()
    hconfig.bind = binds
    hconfig.backlog = HTTP_BACKLOG
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("hypercorn.error")
    hconfig.graceful_timeout = 2.0
    hconfig.keep_alive_timeout = 75
    await hypercorn_serve(app, hconfig, task_status=task_status)
