"""Configuration: reference keys, env overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.service.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_file_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
api_key: k
api_secret: s
ws_url: ws://lk:7880
rtmp_port: 1936
whip_port: 9090
health_port: 8081
prometheus_port: 9100
logging: {level: debug}
rtc_config: {udp_port: 7885, node_ip: 127.0.0.1}
cpu_cost: {rtmp_cpu_cost: 1.5}
data_dir: /tmp/x
http_cert_file: /c.pem
http_key_file: /k.pem
"""), environ={})
    assert (config.api_key, config.api_secret, config.ws_url) == ("k", "s", "ws://lk:7880")
    assert (config.rtmp_port, config.http_port, config.health_port) == (1936, 9090, 8081)
    assert config.logging.level == "debug" and config.rtc_config.udp_port == 7885
    assert config.cpu_cost.rtmp_cpu_cost == 1.5
    assert config.rtmp_url == "rtmp://127.0.0.1:1936/x"
    assert config.whip_url == "https://127.0.0.1:9090/w"  # TLS on the HTTP listener
    assert str(config.store_path) == "/tmp/x/ingress.sqlite3"
    assert (config.http_cert_file, config.http_key_file) == ("/c.pem", "/k.pem")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "api_key: k\napi_secret: s\nhttp_port: 1\n")
    config = load_config(path, environ={
        "LIVEKIT_API_KEY": "envkey", "LIVEKIT_API_SECRET": "envsecret",
        "LIVEKIT_URL": "ws://x", "INGRESS_HTTP_PORT": "9000", "INGRESS_BIND_ADDRESS": "0.0.0.0"})
    assert (config.api_key, config.api_secret, config.ws_url) == ("envkey", "envsecret", "ws://x")
    assert config.http_port == 9000 and config.bind_address == "0.0.0.0"
    assert config.whip_url == "http://localhost:9000/w"


def test_config_body_env(tmp_path: Path) -> None:
    config = load_config(environ={"INGRESS_CONFIG_BODY": "api_key: a\napi_secret: b\n"})
    assert config.api_key == "a"


@pytest.mark.parametrize(("text", "message"), [
    ("api_key: k\napi_secret: s\nrtmp_prot: 1\n", "unknown config key: rtmp_prot"),
    ("api_key: k\napi_secret: s\nlogging: {lvl: x}\n", "unknown config key: logging.lvl"),
    ("api_key: k\napi_secret: s\nrtc_config: {udp: 1}\n", "unknown config key: rtc_config.udp"),
    ("api_key: k\napi_secret: s\nrtmp_port: abc\n", "rtmp_port: expected int, got 'abc'"),
    ("api_key: k\napi_secret: s\nrtmp_port: 70000\n", "rtmp_port: 70000 is not a port"),
    ("api_key: k\napi_secret: s\nhttp_port: -1\n", "http_port: the HTTP listener"),
    ("api_key: k\napi_secret: s\nlogging: {level: loud}\n", "logging.level: one of"),
    ("api_key: k\napi_secret: s\nredis: {address: x}\n", "redis: not supported yet"),
    ("api_key: k\napi_secret: s\nhttp_port: 1\nwhip_port: 2\n", "whip_port: given twice"),
    ("api_key: k\napi_secret: s\nrtmps_port: 1937\n", "rtmps_port needs rtmps_cert_file"),
    ("api_key: k\napi_secret: s\nrtc_config: {udp_port: 70000}\n",
     "rtc_config.udp_port: 70000 is not a UDP port"),
    ("api_key: k\napi_secret: s\nrtc_config: {port_range_start: 50000}\n",
     "rtc_config.port_range_start and port_range_end: give both"),
    ("api_key: k\napi_secret: s\nrtc_config: {port_range_start: 50010, port_range_end: 50000}\n",
     "start <= end (got 50010..50000)"),
    ("api_key: k\napi_secret: s\napi_processes: 2\n",
     "api_processes: removed; one process serves the HTTP listener"),
    ("api_key: k\napi_secret: s\nhttp_cert_file: /c.pem\n",
     "http_cert_file and http_key_file: give both or neither"),
    ("api_key: k\n", "api_key and api_secret are required"),
    ("- a list\n", "expected a mapping"),
    ("api_key: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), environ={})
    assert message in str(err.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent\.yaml"):
        load_config("/nonexistent.yaml", environ={})


def test_dev_mode_defaults() -> None:
    config = load_config(dev=True, environ={})
    assert (config.api_key, config.api_secret) == ("devkey", "secret")
    assert config.ws_url == "ws://127.0.0.1:7880" and config.dev
    assert config.bind_address == "127.0.0.1"


@pytest.mark.parametrize(("text", "ports"), [
    ("", (0, 0)),
    ("rtc_config: {udp_port: 7882}\n", (7882, 7882)),
    ("rtc_config: {udp_port: 7882, port_range_start: 50000, port_range_end: 50099}\n",
     (50000, 50099)),
])
def test_ice_ports(tmp_path: Path, text: str, ports: tuple[int, int]) -> None:
    config = load_config(write(tmp_path, "api_key: k\napi_secret: s\n" + text), environ={})
    assert config.rtc_config.ice_ports() == ports
