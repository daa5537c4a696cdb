"""Configuration: reference keys, env overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.service.config import ConfigError, is_loopback, load_config

SECRET = "s3cret-" + "x" * 25  # 32 characters, the shortest accepted outside --dev
KEYS = f"api_key: k\napi_secret: {SECRET}\n"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_file_keys(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, KEYS + """
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
    assert (config.api_key, config.api_secret, config.ws_url) == ("k", SECRET, "ws://lk:7880")
    assert (config.rtmp_port, config.http_port, config.health_port) == (1936, 9090, 8081)
    assert config.logging.level == "debug" and config.rtc_config.udp_port == 7885
    assert config.cpu_cost.rtmp_cpu_cost == 1.5
    assert config.rtmp_url == "rtmp://127.0.0.1:1936/x"
    assert config.whip_url == "https://127.0.0.1:9090/w"  # TLS on the HTTP listener
    assert str(config.store_path) == "/tmp/x/ingress.sqlite3"
    assert (config.http_cert_file, config.http_key_file) == ("/c.pem", "/k.pem")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, KEYS + "http_port: 1\n")
    config = load_config(path, environ={
        "LIVEKIT_API_KEY": "envkey", "LIVEKIT_API_SECRET": "env" + SECRET,
        "LIVEKIT_URL": "ws://x", "INGRESS_HTTP_PORT": "9000", "INGRESS_BIND_ADDRESS": "0.0.0.0"})
    assert (config.api_key, config.api_secret, config.ws_url) == (
        "envkey", "env" + SECRET, "ws://x")
    assert config.http_port == 9000 and config.bind_address == "0.0.0.0"
    assert config.whip_url == "http://localhost:9000/w"


def test_config_body_env(tmp_path: Path) -> None:
    config = load_config(environ={"INGRESS_CONFIG_BODY": KEYS})
    assert config.api_key == "k"


@pytest.mark.parametrize(("text", "message"), [
    (KEYS + "rtmp_prot: 1\n", "unknown config key: rtmp_prot"),
    (KEYS + "logging: {lvl: x}\n", "unknown config key: logging.lvl"),
    (KEYS + "rtc_config: {udp: 1}\n", "unknown config key: rtc_config.udp"),
    (KEYS + "rtmp_port: abc\n", "rtmp_port: expected int, got 'abc'"),
    (KEYS + "rtmp_port: 70000\n", "rtmp_port: 70000 is not a port"),
    (KEYS + "http_port: -1\n", "http_port: the HTTP listener"),
    (KEYS + "logging: {level: loud}\n", "logging.level: one of"),
    (KEYS + "redis: {adress: x}\n", "unknown config key: redis.adress"),
    (KEYS + "http_port: 1\nwhip_port: 2\n", "whip_port: given twice"),
    (KEYS + "rtmps_port: 1937\n", "rtmps_port needs rtmps_cert_file"),
    (KEYS + "rtc_config: {udp_port: 70000}\n",
     "rtc_config.udp_port: 70000 is not a UDP port"),
    (KEYS + "rtc_config: {port_range_start: 50000}\n",
     "rtc_config.port_range_start and port_range_end: give both"),
    (KEYS + "rtc_config: {port_range_start: 50010, port_range_end: 50000}\n",
     "start <= end (got 50010..50000)"),
    (KEYS + "api_processes: 2\n",
     "api_processes: removed; one process serves the HTTP listener"),
    (KEYS + "http_cert_file: /c.pem\n",
     "http_cert_file and http_key_file: give both or neither"),
    ("api_key: k\n", "api_key and api_secret are required"),
    ("api_key: k\napi_secret: short\n",
     "api_secret (LIVEKIT_API_SECRET): 5 characters, at least 32 are required"),
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
    config = load_config(write(tmp_path, KEYS + text), environ={})
    assert config.rtc_config.ice_ports() == ports


def test_a_short_secret_is_refused_outside_dev(tmp_path: Path) -> None:
    for environ in ({"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET[:31]},
                    {"INGRESS_CONFIG_BODY": f"api_key: k\napi_secret: {SECRET[:31]}\n"}):
        with pytest.raises(ConfigError) as err:
            load_config(environ=environ)
        assert str(err.value).startswith(
            "api_secret (LIVEKIT_API_SECRET): 31 characters, at least 32 are required")
        assert SECRET[:31] not in str(err.value)  # the message never shows the secret
    assert load_config(environ={"LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET}
                       ).api_secret == SECRET


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1",
                                     "2001:db8::1", "ingress.example.org"])
def test_dev_mode_refuses_a_non_loopback_bind_address(address: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(dev=True, environ={"INGRESS_BIND_ADDRESS": address})
    text = str(err.value)
    assert text.startswith(f"bind_address: {address or '(all interfaces)'} is not a loopback "
                           "address; `serve --dev` only listens on 127.0.0.1")
    assert "devkey/secret is public" in text
    # own keys do not make --dev safe to expose: the mode itself is refused there
    with pytest.raises(ConfigError, match="is not a loopback address"):
        load_config(dev=True, environ={"INGRESS_BIND_ADDRESS": address,
                                       "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET})


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_dev_mode_on_loopback_keeps_the_dev_key_pair(address: str) -> None:
    assert is_loopback(address)
    config = load_config(dev=True, environ={"INGRESS_BIND_ADDRESS": address})
    assert (config.api_key, config.api_secret, config.bind_address) == (
        "devkey", "secret", address)
