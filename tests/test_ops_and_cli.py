"""Operations endpoints and the `ingress` CLI against a running service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.service import ServiceProcess

SECRET = "s3cret-" + "x" * 25  # 32 characters: the shortest secret accepted outside --dev


def test_health_availability_metrics(service: ServiceProcess) -> None:
    r = httpx.get(service.url + "/")
    assert (r.status_code, r.text) == (200, "Healthy")
    assert httpx.get(service.url + "/availability").status_code == 200
    httpx.post(service.url + "/twirp/livekit.Ingress/ListIngress", content=b"",
               headers={"Content-Type": "application/protobuf"})
    text = httpx.get(service.url + "/metrics").text
    for name in ("livekit_ingress_available 1.0", "livekit_node_cpu_load",
                 "livekit_ingress_requests", "livekit_ingress_publish_status",
                 'ingress_relay_api_requests_total{code="unauthenticated",method="ListIngress"}'):
        assert name in text, name
    # the README's table of metrics is what /metrics declares, no more and no less
    declared = {line.split()[2] for line in text.splitlines() if (line.startswith("# TYPE")
                and line.split()[3] != "gauge") or (line.startswith("# TYPE")
                and not line.split()[2].endswith("_created"))}
    ours = {n for n in declared if n.startswith(("livekit_", "ingress_relay_"))}
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    listed = set(re.findall(r"^  \| `((?:livekit|ingress_relay)_\w+)` \|", readme, re.M))
    assert listed == ours


def test_separate_health_and_prometheus_ports(tmp_path: Path) -> None:
    import socket

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    health, prom = free_port(), free_port()
    proc = ServiceProcess(tmp_path, health_port=health, prometheus_port=prom)
    proc.start()
    try:
        assert httpx.get(f"http://127.0.0.1:{health}/").text == "Healthy"
        assert httpx.get(f"http://127.0.0.1:{health}/availability").status_code == 200
        assert "livekit_node_cpu_load" in httpx.get(f"http://127.0.0.1:{prom}/metrics").text
    finally:
        assert proc.stop() == 0


def test_bad_config_is_refused_with_the_key(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"api_key: k\napi_secret: {SECRET}\nrtmp_prot: 1\n")
    proc = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown config key: rtmp_prot" in proc.stderr


def serve_refused(tmp_path: Path, *args: str, env: dict[str, str]) -> str:
    """Run `ingress serve` expecting a refusal at start: exit status 2, nothing bound;
    its stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("INGRESS_", "LIVEKIT_"))}
    proc = subprocess.run([sys.executable, "-m", "relay", "serve", *args], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path,
                          env=base | {"INGRESS_HTTP_PORT": "0", "INGRESS_RTMP_PORT": "-1",
                                      "INGRESS_DATA_DIR": str(tmp_path / "data")} | env)
    assert proc.returncode == 2, proc.stderr
    assert "ingress service ready" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before the store was opened
    return proc.stderr.strip()


def test_dev_mode_on_a_non_loopback_address_is_refused(tmp_path: Path) -> None:
    for address in ("0.0.0.0", "::"):
        stderr = serve_refused(tmp_path, "--dev", env={"INGRESS_BIND_ADDRESS": address})
        assert stderr.startswith(f"ingress: configuration error: bind_address: {address} is "
                                 "not a loopback address; `serve --dev` only listens on "), stderr
        assert "devkey/secret is public" in stderr


def test_a_short_api_secret_is_refused_at_start(tmp_path: Path) -> None:
    stderr = serve_refused(tmp_path, env={"LIVEKIT_API_KEY": "k",
                                          "LIVEKIT_API_SECRET": "x" * 31})
    assert stderr.startswith("ingress: configuration error: api_secret (LIVEKIT_API_SECRET): "
                             "31 characters, at least 32 are required"), stderr
    assert "x" * 31 not in stderr


def test_a_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        path = tmp_path / "c.yaml"
        path.write_text(f"api_key: k\napi_secret: {SECRET}\n"
                        f"http_port: {taken.getsockname()[1]}\n"
                        f"rtmp_port: -1\ndata_dir: {tmp_path / 'data'}\n")
        proc = subprocess.run([sys.executable, "-m", "relay", "serve", "--config", str(path)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "ingress: cannot start: [Errno 98] Address already in use"), proc.stderr
    assert "Traceback" not in proc.stderr


def cli(service: ServiceProcess, *args: str, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "INGRESS_URL": service.url, "LIVEKIT_API_KEY": service.api_key,
           "LIVEKIT_API_SECRET": service.api_secret}
    return subprocess.run([sys.executable, "-m", "relay", *args], capture_output=True,
                          text=True, env=env, input=stdin, timeout=60)


def test_cli_reads_lk_style_json_files(service: ServiceProcess, tmp_path: Path) -> None:
    spec = tmp_path / "ingress.json"
    spec.write_text(json.dumps({
        "input_type": "RTMP_INPUT", "name": "cli", "room_name": "cli-room",
        "participant_identity": "cli-id", "unknown_field_is_ignored": 1,
        "video": {"name": "cam", "source": "CAMERA", "preset": 5},
        "audio": {"preset": "OPUS_MONO_64KBS"},
    }))
    made = cli(service, "create", str(spec))
    assert made.returncode == 0, made.stderr
    info = json.loads(made.stdout)
    assert info["ingress_id"].startswith("IN_")
    assert info["video"] == {"name": "cam", "source": "CAMERA",
                             "preset": "H264_720P_30FPS_3_LAYERS_HIGH_MOTION"}
    assert f"Stream key: {info['stream_key']}" in made.stderr
    assert "URL: rtmp://127.0.0.1:1935/live" in made.stderr

    listed = cli(service, "list", "--room", "cli-room")
    assert [i["ingress_id"] for i in json.loads(listed.stdout)["items"]] == [info["ingress_id"]]

    updated = cli(service, "update", "-", "--id", info["ingress_id"],
                  stdin='{"participantName": "Renamed", "enabled": false}')
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["participant_name"] == "Renamed"

    bad = cli(service, "create", "-", stdin='{"inputType": 1}')
    assert bad.returncode == 1
    assert "invalid_argument: invalid ingress: no participant identity" in bad.stderr

    deleted = cli(service, "delete", info["ingress_id"])
    assert deleted.returncode == 0 and json.loads(deleted.stdout)["ingress_id"] == info[
        "ingress_id"]
    gone = cli(service, "delete", info["ingress_id"])
    assert gone.returncode == 1 and "not_found: ingress does not exist" in gone.stderr


def test_lag_window_keeps_the_worst_of_the_last_seconds() -> None:
    from relay.service.loop_lag import LagWindow

    window = LagWindow(10.0)
    assert window.add(0.0, 0.001) == 0.001
    assert window.add(1.0, 0.5) == 0.5  # a stall
    assert window.add(2.0, 0.002) == 0.5
    assert window.add(10.9, 0.001) == 0.5  # still inside the 10 s
    assert window.add(11.1, 0.003) == 0.003  # the stall has left the window


def test_the_service_lifts_its_open_files_limit() -> None:
    """A service started with 1,024 open files (a common default) lifts it to the hard
    limit: the connection caps need more."""
    import subprocess
    import sys

    probe = ("import resource\n"
             "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))\n"
             "from relay.service.cli import raise_open_files_limit\n"
             "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["4096", "(4096,", "4096)"]
