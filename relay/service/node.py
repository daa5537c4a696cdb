"""The service process of one node: what runs, wired together.

`serve()` is a trio task that reports its bound addresses through `nursery.start()`
and runs until cancelled; the CLI cancels it on SIGINT/SIGTERM. Its parts:

* the control plane (ingest/control.py): the SQLite store and this node's Twirp API;
* the session host (ingest/lifetime.py) and the three fronts that feed it: RTMP(S)
  listeners, WHIP resources on the HTTP listener, URL pulls;
* hypercorn serving the quart-trio app (http/): Twirp, WHIP, health, metrics.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from livekit.protocol import ingress as pb

from api.auth import Authenticator
from api.service import EndpointUrls, IngressApi, IngressService
from api.store import IngressStore, open_sqlite_store
from api.twirp import TwirpServer
from relay.wire import WorkerLimits

from .cluster.control import ClusterControlPlane, url_affinity
from .cluster.journal import LiveJournal
from .cluster.redis_bus import open_redis_bus
from .cluster.server_api import ServerIngressApi
from .config import Config
from .console import ConsoleSettings, console_blueprint
from .http.app import create_app, create_ops_app, record_call
from .http.server import HttpLimits, listener_config, serve_app
from .ingest.admission import Admission
from .ingest.control import ControlPlane, LocalControlPlane
from .ingest.lifetime import SHUTTING_DOWN, SessionHost, WorkerSettings
from .ingest.registry import SessionRegistry
from .ingest.rtmp_front import RtmpFront, RtmpSettings, load_ssl_context
from .ingest.url_front import UrlFront
from .ingest.whip_front import WhipFront
from .ingest.worker_client import open_session_worker, warm_worker_template
from .loop_lag import watch_loop_lag
from .status import NodeStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bound:
    """Where the service listens, as reported once it is ready."""

    http: str
    health: str | None = None
    prometheus: str | None = None
    rtmp: str | None = None  # host:port of the RTMP listener
    rtmps: str | None = None


class NodeCommands:
    """SessionCommands of this node: what the control plane tells its sessions."""

    def __init__(self, registry: SessionRegistry, pulls: UrlFront | None) -> None:
        self.registry = registry
        self.pulls = pulls

    def stop(self, ingress_id: str, reason: str) -> bool:
        return self.registry.stop(ingress_id, reason)

    def start_pull(self, info: pb.IngressInfo) -> None:
        if self.pulls is None:  # no LiveKit server configured: the ingress stays INACTIVE
            log.warning("URL ingress %s not pulled: no ws_url configured", info.ingress_id)
            return
        self.pulls.start(info)


@asynccontextmanager
async def _open_control_plane(config: Config, registry: SessionRegistry, admission: Admission,
                              status: NodeStatus
                              ) -> AsyncIterator[tuple[ControlPlane, IngressStore | None]]:
    """Who owns the ingresses: a LiveKit server on `redis` (cluster mode: no
    store here, a journal of live sessions), or this node's SQLite store (standalone)."""
    if config.redis.configured:
        async with open_redis_bus(config.redis) as bus:
            journal = LiveJournal(Path(config.data_dir) / "cluster-sessions.json")
            yield ClusterControlPlane(bus, registry, partial(
                url_affinity, admission, lambda: status.draining), journal), None
    else:
        async with open_sqlite_store(config.store_path) as store:
            yield LocalControlPlane(store), store


SHUTDOWN_GRACE = 10.0  # seconds live sessions get to leave their rooms and write states


async def serve(config: Config, *, stop: trio.Event | None = None,
                task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the node until `stop` is set (then stop in order and return) or until
    cancelled (then everything ends at once).

    The orderly stop: refuse new sessions (/availability answers 503), end the live
    ones with "server shutting down" and wait, at most SHUTDOWN_GRACE seconds, for
    each to write its final state, then close the listeners and, last, the store."""
    if config.dev:
        log.warning("DEVELOPMENT MODE: API key %r with the well-known secret; "
                    "never expose this node", config.api_key)
    status = NodeStatus(config.cpu_cost.min_idle_ratio)
    registry = SessionRegistry()
    host_name = config.bind_address
    workers = None
    if config.ws_url:
        workers = WorkerSettings(config.ws_url, config.api_key, config.api_secret,
                                 config.url_allow_private_addresses)
    else:
        log.warning("no ws_url configured: RTMP sessions are accepted but publish nowhere")
    # without ws_url no worker runs: a session is the RTMP front alone (0.4% of a
    # core, docs/PERFORMANCE.md), which cpu_cost does not describe
    admission = Admission(status, config.cpu_cost) if workers else Admission.unlimited()
    async with _open_control_plane(config, registry, admission, status) as (control, store), \
            trio.open_nursery() as nursery:
        launch = partial(open_session_worker, limits=WorkerLimits(
            config.worker_memory_limit_mb, config.worker_cpu_time_limit))
        host = SessionHost(control, registry, workers=workers, admission=admission,
                           draining=lambda: status.draining, launch=launch)
        pulls = whip = None
        if workers is not None:
            nursery.start_soon(warm_worker_template)
            pulls = UrlFront(host)
            await nursery.start(pulls.run)
            node_ip = config.rtc_config.node_ip
            whip = WhipFront(host, host_addresses=(node_ip,) if node_ip else (),
                             ice_ports=config.rtc_config.ice_ports())
            await nursery.start(whip.run)
        commands = NodeCommands(registry, pulls)
        await nursery.start(control.run, commands)
        twirp = None  # in cluster mode the API is the LiveKit server's
        ingresses: IngressApi | None = None  # what the console lists and edits
        if store is not None:
            service = IngressService(store, EndpointUrls(config.rtmp_url, config.whip_url),
                                     commands, rtmp_passthrough=config.rtmp_passthrough)
            twirp = TwirpServer(service, Authenticator({config.api_key: config.api_secret}),
                                record=record_call)
            ingresses = service
        elif config.ws_url:  # a cluster worker: the ingresses are the LiveKit server's
            ingresses = ServerIngressApi(config.ws_url, config.api_key, config.api_secret)
        nursery.start_soon(status.sample_cpu)
        nursery.start_soon(watch_loop_lag)
        console = None if ingresses is None else console_blueprint(ingresses, ConsoleSettings(
            config.api_key, config.api_secret, config.ws_url, dev=config.dev))
        app = create_app(status, twirp, whip, console)
        limits = HttpLimits(request_timeout=config.http_request_timeout,
                            max_connections=config.http_max_connections)
        http = (await nursery.start(partial(
            serve_app, app, listener_config(host_name, config.http_port,
                                            cert_file=config.http_cert_file,
                                            key_file=config.http_key_file),
            limits=limits)))[0]
        health = prometheus = None
        ops_app = create_ops_app(status)
        if config.health_port > 0:
            health = (await nursery.start(partial(
                serve_app, ops_app, listener_config(host_name, config.health_port),
                limits=limits)))[0]
        if config.prometheus_port > 0:
            prometheus = (await nursery.start(partial(
                serve_app, ops_app, listener_config(host_name, config.prometheus_port),
                limits=limits)))[0]
        rtmp = rtmps = None
        if config.rtmp_port >= 0 or config.rtmps_port >= 0:
            ingest = RtmpFront(host, RtmpSettings(
                handshake_timeout=config.rtmp_handshake_timeout,
                idle_timeout=config.rtmp_idle_timeout,
                max_message_size=config.rtmp_max_message_size,
                max_connections=config.rtmp_max_connections,
                max_unauthenticated=config.rtmp_max_unauthenticated_connections,
            ))
            if config.rtmp_port >= 0:
                rtmp = await nursery.start(ingest.serve, host_name, config.rtmp_port)
            if config.rtmps_port >= 0:
                context = load_ssl_context(config.rtmps_cert_file, config.rtmps_key_file)
                rtmps = await nursery.start(ingest.serve, host_name, config.rtmps_port,
                                            context)
        bound = Bound(http, health, prometheus, rtmp, rtmps)
        parts = [f"api {http}"] + [f"{name} {addr}" for name, addr in
                                   (("rtmp", rtmp), ("rtmps", rtmps)) if addr]
        where = (f"worker of the LiveKit server on redis {config.redis.describe()}"
                 if store is None else f"store {config.store_path}")
        log.info("ingress service ready: %s, %s", ", ".join(parts), where)
        task_status.started(bound)
        try:
            await (stop.wait() if stop is not None else trio.sleep_forever())
            log.info("stopping: ending %d live sessions", len(registry))
            status.drain()
            registry.stop_all(SHUTTING_DOWN)
            with trio.move_on_after(SHUTDOWN_GRACE) as grace:
                await registry.wait_empty()
            if grace.cancelled_caught:
                log.warning("%d sessions still live after %.0f s: ending them anyway",
                            len(registry), SHUTDOWN_GRACE)
            nursery.cancel_scope.cancel()
        finally:  # cancelled: no time to wait for anything
            status.drain()
            registry.stop_all(SHUTTING_DOWN)
