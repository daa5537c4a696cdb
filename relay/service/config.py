"""Service configuration: a YAML file (keys of the reference service), env overrides.

Precedence, lowest first: defaults, the YAML file (`--config` or INGRESS_CONFIG_FILE),
YAML text in INGRESS_CONFIG_BODY, LIVEKIT_API_KEY / LIVEKIT_API_SECRET / LIVEKIT_URL,
then INGRESS_<KEY> for any top-level scalar key (e.g. INGRESS_HTTP_PORT=9000).
An unknown key is an error that names it: a typo must not silently become a default.

RTMP/RTMPS ingest keys of our own (the reference service has no equivalent; they apply
to both listeners):

* ``rtmp_handshake_timeout`` (seconds, default 10): time from the TCP accept to the
  publish request (TLS handshake, RTMP handshake, connect, createStream, publish). A
  peer that is slower, e.g. dribbling bytes (slowloris), is disconnected.
* ``rtmp_idle_timeout`` (seconds, default 30): a live publish that sends nothing for
  this long ends with ENDPOINT_ERROR. Encoders send media continuously.
* ``rtmp_max_message_size`` (bytes, default 8 MiB, 4 KiB..16 MiB-1): the largest RTMP
  message accepted (a video access unit is one message); a larger one is a protocol
  error that ends that connection only.
* ``rtmp_max_connections`` (default 500): simultaneous connections, both listeners
  together; further connections are closed at once with a log line.
* ``rtmp_max_unauthenticated_connections`` (default 64): of those, how many may be
  before an accepted publish (handshake, connect, a publish being looked up). Peers
  that never publish cannot take the publishers' slots; past it a new connection is
  closed at once with a log line.

URL pulls (our own key):

* ``url_allow_private_addresses`` (default false; true under ``serve --dev`` unless
  set): let URL ingresses reach loopback, private, link-local (169.254.169.254, the
  cloud metadata service), CGNAT, unique-local and other non-public addresses. Off,
  a pull connects only to public addresses, checked at connect time for every
  connection (relay/worker/egress.py); a refused URL ends in ERROR without a word of
  what the target would have answered, so the API is no port scanner of the node's
  network.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"
DEV_WS_URL = "ws://127.0.0.1:7880"
MIN_SECRET_LENGTH = 32  # outside --dev; LiveKit's server warns under 32 characters

LOG_LEVELS = ("debug", "info", "warn", "warning", "error")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class RtcConfig:
    """WebRTC (WHIP) transport settings, as `rtc_config.*` of the reference service."""

    udp_port: int = 0
    port_range_start: int = 0
    port_range_end: int = 0
    node_ip: str = ""
    use_external_ip: bool = False

    def ice_ports(self) -> tuple[int, int]:
        """The UDP ports WHIP sessions gather ICE host candidates on, (0, 0): any.

        Each WHIP session is its own process with its own peer connection, so one port
        cannot carry every session as LiveKit's `udp_port` mux does: a session takes
        a free port of `port_range_start`..`port_range_end`; `udp_port` alone is a
        range of one port (one WHIP session at a time).
        """
        if self.port_range_start and self.port_range_end:
            return self.port_range_start, self.port_range_end
        if self.udp_port:
            return self.udp_port, self.udp_port
        return 0, 0


@dataclass(frozen=True)
class CpuCostConfig:
    """Admission control (`cpu_cost.*`, relay/service/ingest/admission.py): CPU cores a session is
    expected to use, and the share of all cores kept idle (`min_idle_ratio`).

    The defaults are measured for this implementation (docs/PERFORMANCE.md), not
    LiveKit's (2.0 cores per transcoding session, which would refuse every session
    on a 2-core node):

    * RTMP transcoding, 0.5: a 720p30 default-preset session takes 0.40-0.41 core
      (bench/transcode.py 0.41 CPU s per media s; bench/sessions.py 0.40, 1.59 for
      4), 0.56 with the 1080p preset; 0.5 leaves a margin for start-up and audio.
    * WHIP transcoding, 0.5: not measured on its own; the same decode and
      three-layer encode as RTMP, so the same figure.
    * WHIP without transcoding (and RTMP with enable_transcoding=false), 0.25:
      bench/whip.py measured 0.22 core per passthrough session with Opus audio
      (0.08 with video only).
    * URL, 0.5: a pull decodes and transcodes like an RTMP session.
    * min_idle_ratio, 0.05: LiveKit's reserve (0.1 core on 2 cores).
    """

    rtmp_cpu_cost: float = 0.5
    whip_cpu_cost: float = 0.5
    whip_bypass_transcoding_cpu_cost: float = 0.25
    url_cpu_cost: float = 0.5
    min_idle_ratio: float = 0.05


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class RedisConfig:
    """`redis.*`, as LiveKit's: with an address (or Sentinel or cluster addresses) the
    node works for a LiveKit server on that Redis (cluster mode,
    relay/service/cluster/); without, it is standalone."""

    address: str = ""
    username: str = ""
    password: str = ""
    db: int = 0
    use_tls: bool = False
    sentinel_master_name: str = ""
    sentinel_username: str = ""
    sentinel_password: str = ""
    sentinel_addresses: tuple[str, ...] = ()
    cluster_addresses: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.address or self.sentinel_addresses or self.cluster_addresses)

    def describe(self) -> str:
        if self.sentinel_addresses:
            return f"sentinel {self.sentinel_master_name} at {','.join(self.sentinel_addresses)}"
        if self.cluster_addresses:
            return f"cluster at {','.join(self.cluster_addresses)}"
        return self.address


@dataclass(frozen=True)
class Config:
    api_key: str = ""
    api_secret: str = ""
    ws_url: str = ""
    bind_address: str = "127.0.0.1"
    http_port: int = 8080
    rtmp_port: int = 1935
    rtmps_port: int = -1
    rtmps_cert_file: str = ""
    rtmps_key_file: str = ""
    rtmp_handshake_timeout: float = 10.0
    rtmp_idle_timeout: float = 30.0
    rtmp_max_message_size: int = 8 * 1024 * 1024
    rtmp_max_connections: int = 500
    rtmp_max_unauthenticated_connections: int = 64
    # beyond the reference: RTMP ingresses may set enable_transcoding=false (H.264
    # without B-frames goes to the room as sent); off keeps LiveKit's validation
    rtmp_passthrough: bool = False
    # beyond the reference: URL pulls may reach private and local addresses
    url_allow_private_addresses: bool = False
    health_port: int = 0
    prometheus_port: int = 0
    # TLS on the HTTP listener (API, WHIP): a page served over https can only POST
    # WHIP to an https URL
    http_cert_file: str = ""
    http_key_file: str = ""
    # a request's head and body within this many seconds of its first byte; connections
    # per HTTP listener (relay/service/http/server.py)
    http_request_timeout: float = 10.0
    http_max_connections: int = 1000
    # limits each session worker sets on itself (relay/worker/limits.py); 0: none
    worker_memory_limit_mb: int = 4096
    worker_cpu_time_limit: int = 0
    rtmp_base_url: str = ""
    whip_base_url: str = ""
    data_dir: str = "data"
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    rtc_config: RtcConfig = field(default_factory=RtcConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    cpu_cost: CpuCostConfig = field(default_factory=CpuCostConfig)
    dev: bool = False

    @property
    def public_host(self) -> str:
        return "localhost" if self.bind_address in ("0.0.0.0", "::", "") else self.bind_address

    @property
    def rtmp_url(self) -> str:
        if self.rtmp_base_url or self.rtmp_port <= 0:
            return self.rtmp_base_url
        return f"rtmp://{self.public_host}:{self.rtmp_port}/x"

    @property
    def whip_url(self) -> str:
        if self.whip_base_url or self.http_port <= 0:
            return self.whip_base_url
        scheme = "https" if self.http_cert_file else "http"
        return f"{scheme}://{self.public_host}:{self.http_port}/w"

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir) / "ingress.sqlite3"


_NESTED = {"logging": LoggingConfig, "rtc_config": RtcConfig, "cpu_cost": CpuCostConfig,
           "redis": RedisConfig}
_ALIASES = {"whip_port": "http_port"}
_UNSUPPORTED = {
    "api_processes": "api_processes: removed; one process serves the HTTP listener, and "
                     "more capacity comes from more nodes",
}


def _coerce(key: str, value: Any, kind: Any) -> Any:
    if kind == "tuple[str, ...]":  # a YAML list, or "a,b" from the environment
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    kind = {"int": int, "float": float, "str": str, "bool": bool}.get(kind, kind)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None


def _build(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _ALIASES.get(raw_key, raw_key) if not prefix else raw_key
        if not prefix and raw_key in _UNSUPPORTED:
            raise ConfigError(_UNSUPPORTED[raw_key])
        if key not in fields or key == "dev":
            raise ConfigError(f"unknown config key: {prefix}{raw_key}")
        if key in values:
            raise ConfigError(f"{prefix}{raw_key}: given twice (whip_port is http_port)")
        if not prefix and key in _NESTED:
            values[key] = _build(_NESTED[key], value or {}, f"{key}.")
        else:
            values[key] = _coerce(prefix + raw_key, value, fields[key].type)
    return cls(**values)


def load_config(path: str | os.PathLike[str] | None = None, *, dev: bool = False,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read the configuration; ConfigError when anything is wrong."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = path or env.get("INGRESS_CONFIG_FILE")
    if path:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        data.update(_parse_yaml(text, str(path)))
    if env.get("INGRESS_CONFIG_BODY"):
        data.update(_parse_yaml(env["INGRESS_CONFIG_BODY"], "INGRESS_CONFIG_BODY"))
    for name, key in (("LIVEKIT_API_KEY", "api_key"), ("LIVEKIT_API_SECRET", "api_secret"),
                      ("LIVEKIT_URL", "ws_url")):
        if env.get(name):
            data[key] = env[name]
    scalar = {f.name for f in dataclasses.fields(Config) if f.name not in _NESTED} - {"dev"}
    for name, value in env.items():
        if name.startswith("INGRESS_") and name not in ("INGRESS_CONFIG_FILE",
                                                        "INGRESS_CONFIG_BODY"):
            key = name[len("INGRESS_"):].lower()
            if key in scalar:
                data.pop(next((a for a, k in _ALIASES.items() if k == key), ""), None)
                data[key] = value
    config = _build(Config, data)
    if dev:
        config = dataclasses.replace(
            config, dev=True,
            api_key=config.api_key or DEV_API_KEY,
            api_secret=config.api_secret or DEV_API_SECRET,
            ws_url=config.ws_url or DEV_WS_URL,
            # a local test source (a file server on 127.0.0.1) is the usual dev pull
            url_allow_private_addresses=(config.url_allow_private_addresses
                                         or "url_allow_private_addresses" not in data),
        )
    _check(config)
    return config


def _parse_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config keys")
    return data


def _check(config: Config) -> None:
    if not config.api_key or not config.api_secret:
        raise ConfigError(
            "api_key and api_secret are required (config file, or LIVEKIT_API_KEY and "
            "LIVEKIT_API_SECRET); `serve --dev` uses the development key pair"
        )
    if config.dev and not is_loopback(config.bind_address):
        raise ConfigError(
            f"bind_address: {config.bind_address or '(all interfaces)'} is not a loopback "
            "address; `serve --dev` only listens on 127.0.0.1/::1/localhost, because its "
            "key pair devkey/secret is public. Give your own api_key and api_secret "
            "(at least 32 characters) without --dev to listen on other addresses")
    if not config.dev and len(config.api_secret) < MIN_SECRET_LENGTH:
        raise ConfigError(
            f"api_secret (LIVEKIT_API_SECRET): {len(config.api_secret)} characters, at least "
            f"{MIN_SECRET_LENGTH} are required (HS256 tokens are signed with it; LiveKit "
            "warns under 32); only `serve --dev` on a loopback address accepts a shorter one")
    if config.logging.level.lower() not in LOG_LEVELS:
        raise ConfigError(f"logging.level: one of {', '.join(LOG_LEVELS)}, "
                          f"got {config.logging.level!r}")
    for name in ("http_port", "rtmp_port", "rtmps_port", "health_port", "prometheus_port"):
        port = getattr(config, name)
        if not -1 <= port <= 65535:
            raise ConfigError(f"{name}: {port} is not a port (-1 turns it off)")
    if config.http_port < 0:
        raise ConfigError("http_port: the HTTP listener (API, WHIP) cannot be turned off")
    if bool(config.http_cert_file) != bool(config.http_key_file):
        raise ConfigError("http_cert_file and http_key_file: give both or neither")
    for name in ("worker_memory_limit_mb", "worker_cpu_time_limit"):
        if getattr(config, name) < 0:
            raise ConfigError(f"{name}: {getattr(config, name)} is below 0 (0 turns it off)")
    if 0 < config.worker_memory_limit_mb < 512:
        raise ConfigError(f"worker_memory_limit_mb: {config.worker_memory_limit_mb} is below "
                          "512; a session worker maps ~1.4 GiB (0 turns the limit off)")
    if config.redis.sentinel_addresses and not config.redis.sentinel_master_name:
        raise ConfigError("redis.sentinel_addresses needs redis.sentinel_master_name")
    if config.redis.cluster_addresses and config.redis.db:
        raise ConfigError("redis.db: a Redis cluster has only database 0")
    if config.http_max_connections < 1:
        raise ConfigError(f"http_max_connections: {config.http_max_connections} is below 1")
    for name in ("rtmp_handshake_timeout", "rtmp_idle_timeout", "http_request_timeout"):
        if not 0 < getattr(config, name) < 86400:
            raise ConfigError(f"{name}: {getattr(config, name)} is not a number of seconds > 0")
    if not 4096 <= config.rtmp_max_message_size <= 0xFFFFFF:
        raise ConfigError(f"rtmp_max_message_size: {config.rtmp_max_message_size} is not "
                          "between 4096 and 16777215 bytes")
    if config.rtmp_max_connections < 1:
        raise ConfigError(f"rtmp_max_connections: {config.rtmp_max_connections} is below 1")
    if config.rtmp_max_unauthenticated_connections < 1:
        raise ConfigError("rtmp_max_unauthenticated_connections: "
                          f"{config.rtmp_max_unauthenticated_connections} is below 1")
    if config.rtmps_port >= 0 and not (config.rtmps_cert_file and config.rtmps_key_file):
        raise ConfigError("rtmps_port needs rtmps_cert_file and rtmps_key_file")
    rtc = config.rtc_config
    for name in ("udp_port", "port_range_start", "port_range_end"):
        if not 0 <= getattr(rtc, name) <= 65535:
            raise ConfigError(f"rtc_config.{name}: {getattr(rtc, name)} is not a UDP port")
    if bool(rtc.port_range_start) != bool(rtc.port_range_end) or (
            rtc.port_range_start > rtc.port_range_end):
        raise ConfigError("rtc_config.port_range_start and port_range_end: give both, "
                          f"start <= end (got {rtc.port_range_start}..{rtc.port_range_end})")


def is_loopback(address: str) -> bool:
    """Whether listening on `address` reaches this machine only (127.0.0.0/8, ::1,
    localhost); "" and 0.0.0.0 / :: are every interface."""
    if address.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def log_level(config: Config) -> int:
    level = config.logging.level.lower()
    return logging.WARNING if level == "warn" else getattr(logging, level.upper())
