"""The official JS client (`livekit-server-sdk` from npm, run by node) against the service.

It speaks application/json with lowerCamel names and enum names, so this proves the
JSON path. `.ci/run` installs the npm package into tests/js/node_modules.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.service import ServiceProcess

JS_DIR = Path(__file__).parent / "js"


def run_js_client(service: ServiceProcess) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (JS_DIR / "node_modules" / "livekit-server-sdk").exists():
        pytest.fail("node and tests/js/node_modules are required: run `npm ci` in tests/js "
                    "(.ci/run does)")
    proc = subprocess.run([node, "ingress_client.mjs", service.url, service.api_key,
                           service.api_secret], cwd=JS_DIR, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_js_client_create_list_update_delete(service: ServiceProcess) -> None:
    out = run_js_client(service)
    rtmp, whip, url = out["rtmp"], out["whip"], out["url"]
    # protobuf-es renders our snake_case JSON back as lowerCamel: every field survived
    assert rtmp["ingressId"].startswith("IN_") and len(rtmp["streamKey"]) == 12
    assert rtmp["inputType"] == "RTMP_INPUT" and rtmp["reusable"] is True
    assert rtmp["url"] == "rtmp://127.0.0.1:1935/live"
    assert rtmp["video"] == {"name": "camera", "source": "CAMERA",
                             "preset": "H264_1080P_30FPS_3_LAYERS"}
    assert rtmp["audio"] == {"name": "mic", "source": "MICROPHONE", "options": {
        "audioCodec": "OPUS", "bitrate": 64000, "channels": 1, "disableDtx": True}}
    assert rtmp["participantName"] == "JS OBS"
    assert whip["inputType"] == "WHIP_INPUT" and whip["enableTranscoding"] is True
    options = whip["video"]["options"]
    assert (options["videoCodec"], options["frameRate"]) == ("VP8", 25)
    assert [{k: v for k, v in layer.items() if k in ("quality", "width", "height", "bitrate")}
            for layer in options["layers"]] == [
        {"quality": "HIGH", "width": 1280, "height": 720, "bitrate": 2000000}]
    assert url["inputType"] == "URL_INPUT" and url["url"] == "https://127.0.0.1/video.mp4"
    assert url["streamKey"] == "" and url["reusable"] is False
    assert rtmp["state"]["status"] == "ENDPOINT_INACTIVE"
    ids = [rtmp["ingressId"], whip["ingressId"], url["ingressId"]]
    assert [i["ingressId"] for i in out["listRoom"]] == ids
    assert out["listRoom"][0] == rtmp
    assert [i["ingressId"] for i in out["listId"]] == [whip["ingressId"]]
    assert out["updated"]["name"] == "js-rtmp-2" and out["updated"]["roomName"] == "js-room-2"
    assert out["updated"]["enabled"] is False and out["updated"]["video"] == rtmp["video"]
    assert out["deleted"]["ingressId"] == whip["ingressId"]
    assert [i["ingressId"] for i in out["listAfter"]] == [url["ingressId"]]
    assert out["invalid"] == {"code": "invalid_argument", "status": 400,
                              "message": "invalid ingress: layer width must be even"}
    assert out["notFound"] == {"code": "not_found", "status": 404,
                               "message": "ingress does not exist"}
    assert out["unauthorized"]["status"] == 401
    assert out["unauthorized"]["message"] == "invalid authorization token"
