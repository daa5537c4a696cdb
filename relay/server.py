"""The service: store, control API, operations endpoints, and (later) ingest servers.

`serve()` is a trio task that reports its bound addresses through `nursery.start()`
and runs until cancelled; the CLI cancels it on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from api.auth import Authenticator
from api.http import create_app, create_ops_app
from api.service import EndpointUrls, IngressService
from api.store import open_sqlite_store
from api.twirp import TwirpServer

from .admission import Admission
from .api_replica import ReplicaCalls, run_replicas
from .config import Config, log_level
from .h11_server import H11Server, open_listener
from .ops import NodeStatus
from .pipeline import WorkerSinkFactory
from .rtmp_ingest import RtmpIngest, RtmpSettings, load_ssl_context
from .sessions import SHUTTING_DOWN, SessionRegistry
from .url_ingest import UrlIngest
from .whip_ingest import WhipIngest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bound:
    """Where the service listens, as reported once it is ready."""

    http: str
    health: str | None = None
    prometheus: str | None = None
    rtmp: str | None = None  # host:port of the RTMP listener
    rtmps: str | None = None


async def serve(config: Config,
                task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
    if config.dev:
        log.warning("DEVELOPMENT MODE: API key %r with the well-known secret; "
                    "never expose this node", config.api_key)
    status = NodeStatus(config.cpu_cost.min_idle_ratio)
    admission = Admission(status, config.cpu_cost)  # shared by every ingest front
    sessions = SessionRegistry()
    async with open_sqlite_store(config.store_path) as store, trio.open_nursery() as nursery:
        url_pulls = None
        if config.ws_url:
            url_pulls = UrlIngest(store, sessions, ws_url=config.ws_url,
                                  api_key=config.api_key, api_secret=config.api_secret,
                                  admission=admission)
            await nursery.start(url_pulls.run)
        service = IngressService(store, EndpointUrls(config.rtmp_url, config.whip_url), sessions,
                                 rtmp_passthrough=config.rtmp_passthrough, url_pulls=url_pulls)
        twirp = TwirpServer(service, Authenticator({config.api_key: config.api_secret}))
        nursery.start_soon(status.sample_cpu)
        host = config.bind_address
        whip = None
        if config.ws_url:
            node_ip = config.rtc_config.node_ip
            whip = WhipIngest(store, sessions, ws_url=config.ws_url, api_key=config.api_key,
                              api_secret=config.api_secret,
                              host_addresses=(node_ip,) if node_ip else (),
                              ice_ports=config.rtc_config.ice_ports(),
                              draining=lambda: status.draining, admission=admission)
            await nursery.start(whip.run)
        app = create_app(twirp, status, whip)
        listener = open_listener(host, config.http_port)
        http = (await nursery.start(H11Server(app).serve, listener))[0]
        if config.api_processes > 1:
            await nursery.start(run_replicas, config.api_processes - 1, listener, {
                "store": str(config.store_path), "api_key": config.api_key,
                "api_secret": config.api_secret, "log_level": log_level(config),
            }, ReplicaCalls(service, app))
        ops_app = create_ops_app(status)
        health = prometheus = None
        if config.health_port > 0:
            health = (await nursery.start(H11Server(ops_app).serve,
                                          open_listener(host, config.health_port)))[0]
        if config.prometheus_port > 0:
            prometheus = (await nursery.start(H11Server(ops_app).serve,
                                              open_listener(host, config.prometheus_port)))[0]
        rtmp = rtmps = None
        sink_factory = None
        if config.ws_url:
            sink_factory = WorkerSinkFactory(store, config.ws_url, config.api_key,
                                             config.api_secret)
        else:
            log.warning("no ws_url configured: sessions are accepted but publish nowhere")
        if config.rtmp_port >= 0 or config.rtmps_port >= 0:
            # without ws_url no worker runs: a session is the RTMP front alone (0.4% of
            # a core, docs/PERFORMANCE.md), which cpu_cost does not describe
            ingest = RtmpIngest(store, sessions, RtmpSettings(
                handshake_timeout=config.rtmp_handshake_timeout,
                idle_timeout=config.rtmp_idle_timeout,
                max_message_size=config.rtmp_max_message_size,
                max_connections=config.rtmp_max_connections,
            ), sink_factory=sink_factory, draining=lambda: status.draining,
                admission=admission if sink_factory is not None else None)
            if config.rtmp_port >= 0:
                rtmp = await nursery.start(ingest.serve, host, config.rtmp_port)
            if config.rtmps_port >= 0:
                context = load_ssl_context(config.rtmps_cert_file, config.rtmps_key_file)
                rtmps = await nursery.start(ingest.serve, host, config.rtmps_port, context)
        bound = Bound(http, health, prometheus, rtmp, rtmps)
        parts = [f"api {http}"] + [f"{name} {addr}" for name, addr in
                                   (("rtmp", rtmp), ("rtmps", rtmps)) if addr]
        log.info("ingress service ready: %s, store %s", ", ".join(parts), config.store_path)
        task_status.started(bound)
        try:
            await trio.sleep_forever()
        finally:
            status.drain()
            sessions.stop_all(SHUTTING_DOWN)

