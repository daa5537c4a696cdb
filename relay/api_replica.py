"""API replicas: more processes answering the one HTTP listener (`api_processes`).

Why: one Python process runs on one core, and at saturation most of a call's CPU
is HTTP/1.1 handling, not the API (docs/PERFORMANCE.md). A replica is a child
process that accepts connections on the same listening socket (inherited: the
kernel hands each new connection to whichever process accepts first), serves it
with relay/h11_server.py as the service process does, and answers ListIngress
itself from the SQLite store: WAL lets it read while the service process
writes, and SQLite's data_version tells its room cache when another process has
committed.

Everything that writes or touches a session (Create/Update/DeleteIngress, WHIP,
the operations endpoints) it hands to the service process over the link
(relay/replica_link.py), so the service process stays the one owner of the write
path, the sessions and admission. An acknowledged write is committed before the
answer leaves, so a ListIngress on any process sees it. If the service process
goes away, the link closes and the replica exits: no orphan holds the port. If a
replica dies, the service process starts another (after 1 s, longer if they keep
dying young).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from livekit.protocol import ingress as pb

from api.auth import Authenticator
from api.errors import TwirpError
from api.http import WHIP_MAX_BODY, TwirpASGI
from api.service import EndpointUrls, IngressService, WireResponse
from api.store import open_sqlite_store
from api.twirp import TwirpServer, record_call

from .cli import tune_gc
from .h11_server import H11Server, asgi_scope
from .replica_link import LinkClient, serve_link
from .wire import WireError

log = logging.getLogger("relay.api_replica")  # not __main__ when run with -m

# between a replica's death and its successor: doubled after each replica that
# died young (a crash at start would otherwise respawn every second forever)
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
HEALTHY_AFTER = 60.0  # a replica that lived this long resets the delay
EXIT_GRACE = 2.0
METRICS_FLUSH = 1.0  # how often a replica hands its call counts to the service process

_REQUESTS = {"create": pb.CreateIngressRequest, "update": pb.UpdateIngressRequest,
             "delete": pb.DeleteIngressRequest}


# -- the service process's side -----------------------------------------------------


class ReplicaCalls:
    """What a replica may ask of the service process: the writes, and any HTTP request
    that is not a Twirp call (WHIP, operations endpoints), run through `app`, the
    service's own ASGI app, so the answer is the one it would have given."""

    def __init__(self, service: IngressService, app: Any) -> None:
        self._service = service
        self._app = app

    async def __call__(self, op: str, args: list[Any]) -> Any:
        if op in _REQUESTS:
            request = _REQUESTS[op].FromString(args[0])
            if op == "create":
                info = await self._service.create(request, args[1])
            else:
                info = await getattr(self._service, op)(request)
            return info.SerializeToString()
        if op == "http":
            return await _call_asgi(self._app, *args)
        if op == "metrics":
            for method, code, seconds in args[0]:
                record_call(method, code, seconds)
            return None
        raise ValueError(f"unknown replica call {op!r}")


async def _call_asgi(app: Any, method: str, path: str, query: bytes,
                     headers: list[list[bytes]], body: bytes, client: list[Any]
                     ) -> list[Any]:
    """One HTTP request through an ASGI app, in memory: [status, headers, body]."""
    target = path.encode("latin-1") + (b"?" + query if query else b"")
    scope = asgi_scope(method, target, [(k, v) for k, v in headers],
                       (str(client[0]), int(client[1])))
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return [start.get("status", 500), [list(h) for h in start.get("headers", [])],
            b"".join(chunks)]


async def run_replicas(count: int, listener: socket.socket, settings: dict[str, Any],
                       calls: ReplicaCalls,
                       task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Keep `count` replicas serving `listener` until cancelled."""
    async with trio.open_nursery() as nursery:
        for index in range(1, count + 1):
            nursery.start_soon(_keep_replica, index, listener, settings, calls)
        task_status.started()


async def _keep_replica(index: int, listener: socket.socket, settings: dict[str, Any],
                        calls: ReplicaCalls) -> None:
    delay = RESTART_DELAY
    while True:
        started = trio.current_time()
        ours, theirs = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "relay.api_replica", str(listener.fileno()),
                 str(theirs.fileno())],
                pass_fds=(listener.fileno(), theirs.fileno()), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        log.info("api replica %d started (pid %d)", index, process.pid)
        link = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve_until_exit, link, settings | {"index": index},
                                   calls, process)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await _end(process)
                await link.aclose()
        if trio.current_time() - started >= HEALTHY_AFTER:
            delay = RESTART_DELAY
        log.error("api replica %d (pid %d) exited with %s; starting another in %.0f s",
                  index, process.pid, process.returncode, delay)
        await trio.sleep(delay)
        delay = min(delay * 2, MAX_RESTART_DELAY)


async def _serve_until_exit(link: trio.SocketStream, settings: dict[str, Any],
                            calls: ReplicaCalls, process: trio.Process) -> None:
    try:
        await serve_link(link, settings, calls)
    except (trio.BrokenResourceError, WireError) as exc:
        log.error("api replica pid %d: link failed: %s; ending it", process.pid, exc)
        process.kill()


async def _end(process: trio.Process) -> None:
    if process.returncode is None:
        process.terminate()
        with trio.move_on_after(EXIT_GRACE):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


# -- the replica process -------------------------------------------------------------


class ForwardingIngressApi:
    """ListIngress from the store; Create/Update/DeleteIngress by the service process."""

    def __init__(self, local: IngressService, link: LinkClient) -> None:
        self.list = local.list
        self._link = link

    async def create(self, req: pb.CreateIngressRequest, request_id: str = ""
                     ) -> WireResponse:
        data = await self._link.call("create", req.SerializeToString(), request_id)
        return WireResponse(pb.IngressInfo, data)

    async def update(self, req: pb.UpdateIngressRequest) -> WireResponse:
        return WireResponse(pb.IngressInfo,
                            await self._link.call("update", req.SerializeToString()))

    async def delete(self, req: pb.DeleteIngressRequest) -> WireResponse:
        return WireResponse(pb.IngressInfo,
                            await self._link.call("delete", req.SerializeToString()))


class ForwardingApp:
    """The replica's ASGI app: Twirp calls to its own TwirpASGI (ListIngress answered
    here, the writes forwarded as calls); every other request (WHIP, `/`,
    `/availability`, `/metrics`, unknown paths) whole to the service process, whose
    own app answers it, CORS, body limits and all."""

    def __init__(self, twirp: TwirpServer, link: LinkClient) -> None:
        self._twirp = TwirpASGI(twirp, fallback=self._forward)
        self._link = link

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/twirp/"):
            await self._twirp(scope, receive, send)
        else:
            await self._forward(scope, receive, send)

    async def _forward(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # a body past WHIP_MAX_BODY is cut one byte beyond it: the service's app then
        # refuses it as it would have the whole one, and the rest is read and dropped
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")[:WHIP_MAX_BODY + 1 - len(body)]
            if not message.get("more_body", False):
                break
        client = list(scope.get("client") or ("", 0))
        try:
            status, headers, out = await self._link.call(
                "http", scope["method"], scope["path"], scope["query_string"],
                [list(h) for h in scope["headers"]], bytes(body), client)
        except TwirpError as err:  # the service process is gone or failed
            await _reply(send, err.status, f"{err.msg}\n".encode())
            return
        await send({"type": "http.response.start", "status": status,
                    "headers": [tuple(h) for h in headers]})
        await send({"type": "http.response.body", "body": out})


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class CallCounts:
    """The replica's answered calls, handed to the service process every second."""

    def __init__(self) -> None:
        self.pending: list[tuple[str, str, float]] = []

    def record(self, method: str, code: str, seconds: float) -> None:
        self.pending.append((method, code, seconds))

    async def flush_forever(self, link: LinkClient) -> None:
        while True:
            await trio.sleep(METRICS_FLUSH)
            if self.pending:
                batch, self.pending = self.pending, []
                await link.notify("metrics", batch)


async def replica_main(listen_fd: int, link_fd: int) -> None:
    link = LinkClient(trio.SocketStream(trio.socket.from_stdlib_socket(
        socket.socket(fileno=link_fd))))
    async with trio.open_nursery() as nursery:
        settings = await nursery.start(_follow_link, link, nursery.cancel_scope)
        logging.getLogger().setLevel(settings["log_level"])
        async with open_sqlite_store(Path(settings["store"]), shared=True) as store:
            local = IngressService(store, EndpointUrls("", ""))
            counts = CallCounts()
            twirp = TwirpServer(ForwardingIngressApi(local, link),
                                Authenticator({settings["api_key"]: settings["api_secret"]}),
                                record=counts.record)
            app = ForwardingApp(twirp, link)
            nursery.start_soon(counts.flush_forever, link)
            await nursery.start(H11Server(app).serve, socket.socket(fileno=listen_fd))
            log.info("api replica %d ready (pid %d)", settings["index"], os.getpid())
            tune_gc()
            await trio.sleep_forever()


async def _follow_link(link: LinkClient, scope: trio.CancelScope,
                       task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED
                       ) -> None:
    """Run the link; when it ends, so does the replica: the service process is gone."""
    try:
        await link.run(task_status=task_status)
        log.info("the service process closed the link: exiting")
    finally:
        scope.cancel()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s "
                        "api-replica[%(process)d] %(name)s: %(message)s")
    listen_fd, link_fd = int(sys.argv[1]), int(sys.argv[2])

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_exit_when_link_closes, listen_fd, link_fd, nursery)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return

    trio.run(run)


async def _exit_when_link_closes(listen_fd: int, link_fd: int, nursery: trio.Nursery) -> None:
    try:
        await replica_main(listen_fd, link_fd)
    finally:
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    main()
