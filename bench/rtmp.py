"""RTMP ingest figures: demux speed of the sans-IO core, server CPU with N publishers.

  1. Demux throughput. ffmpeg encodes ~10 s of 1080p30 H.264 (--bitrate, default
     2.5 Mbit/s) + AAC into a temporary FLV file and publishes it once (-c copy) to a
     capture listener in this script, which records every byte the client sent. The
     capture is fed to rtmp.ServerSession (receive_data / next_event / data_to_send, in
     64 KiB reads) and the FLV file to PyAV's FLV demuxer (av.open + demux), each
     --repeat times; MB/s of input on one core, and the ratio.
  2. N concurrent publishers (--publishers, default 100) on loopback. The real service
     runs as a child process; a load generator in a second process opens N RTMP
     connections (handshake, connect, createStream, publish on N ingresses) and replays
     the FLV's tags as RTMP messages paced by their timestamps (looping, timestamps
     kept increasing), i.e. N x --bitrate. The server's CPU (utime+stime from
     /proc/<pid>/stat) is measured over --seconds once all are live. The CPU of one
     `ffmpeg -re -stream_loop -1 -c copy` publisher is measured too, to compare the two
     ways to generate the load.

Run: .venv/bin/python bench/rtmp.py [--publishers 100] [--seconds 20] [--skip-demux]
No assertions: it prints figures (targets: core >= 100 MB/s per core; 100 publishers
at 2.5 Mbit/s under 50% of one core).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio

import rtmp
from rtmp._chunks import MSG_AMF0_COMMAND
from rtmp._handshake import client_c2, client_hello

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def encode(path: Path, bitrate: str, seconds: int) -> list[str]:
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
           "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
           "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000", "-t", str(seconds),
           "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency",
           "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate,
           "-pix_fmt", "yuv420p", "-g", "60", "-bf", "0", "-c:a", "aac", "-b:a", "128k",
           "-f", "flv", str(path)]
    subprocess.run(cmd, check=True)
    return cmd


# -- 1. demux throughput ------------------------------------------------------------------


async def capture(flv: Path) -> bytes:
    """Publish the file once with ffmpeg -c copy; return every byte the client sent."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    raw = bytearray()
    proc = await trio.lowlevel.open_process(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-i", str(flv), "-c", "copy",
         "-f", "flv", f"rtmp://127.0.0.1:{port}/live/KEY"])
    stream = await listeners[0].accept()
    session = rtmp.ServerSession()
    with trio.fail_after(120):
        while data := await stream.receive_some(65536):
            raw += data
            session.receive_data(data)
            while isinstance(event := session.next_event(), rtmp.Event):
                if isinstance(event, rtmp.PublishRequested):
                    session.accept_publish()
            out = session.data_to_send()
            if out:
                await stream.send_all(out)
        await proc.wait()
    await stream.aclose()
    await listeners[0].aclose()
    return bytes(raw)


def demux_core(raw: bytes, read_size: int = 65536) -> tuple[int, int]:
    session = rtmp.ServerSession()
    frames = events = 0
    for i in range(0, len(raw), read_size):
        session.receive_data(raw[i:i + read_size])
        while isinstance(event := session.next_event(), rtmp.Event):
            events += 1
            if type(event) is rtmp.VideoFrame:
                frames += 1
            elif type(event) is rtmp.PublishRequested:
                session.accept_publish()
        session.data_to_send()
    return events, frames


def demux_pyav(data: bytes) -> tuple[int, int]:
    import av

    packets = frames = 0
    with av.open(io.BytesIO(data), format="flv") as container:
        for packet in container.demux():
            if packet.size:
                packets += 1
                if packet.stream.type == "video":
                    frames += 1
    return packets, frames


def best_rate(fn, data: bytes, repeat: int) -> tuple[float, tuple[int, int]]:
    best, result = float("inf"), (0, 0)
    for _ in range(repeat):
        start = time.process_time()
        result = fn(data)
        best = min(best, time.process_time() - start)
    return len(data) / best / 1e6, result


def bench_demux(flv: Path, repeat: int) -> None:
    raw = trio.run(capture, flv)
    flv_bytes = flv.read_bytes()
    core_mbs, (events, frames) = best_rate(demux_core, raw, repeat)
    av_mbs, (packets, av_frames) = best_rate(demux_pyav, flv_bytes, repeat)
    print(f"capture: {len(raw) / 1e6:.2f} MB of RTMP from ffmpeg -c copy "
          f"(FLV file {len(flv_bytes) / 1e6:.2f} MB)")
    print(f"rtmp core  (ServerSession, 64 KiB reads): {core_mbs:7.1f} MB/s per core "
          f"({events} events, {frames} video frames)")
    print(f"PyAV flv demuxer (av.open + demux):        {av_mbs:7.1f} MB/s per core "
          f"({packets} packets, {av_frames} video frames)")
    print(f"ratio core / PyAV: {core_mbs / av_mbs:.2f}  (best of {repeat}, CPU time)")


# -- 2. N publishers -----------------------------------------------------------------------


def flv_messages(flv: Path) -> tuple[list[tuple[int, int, bytes]], int]:
    """(timestamp ms, type, body) of every tag, and the file's duration in ms."""
    reader = rtmp.FLVReader()
    reader.feed(flv.read_bytes())
    out = []
    while (tag := reader.next_tag()) is not None:
        out.append((tag.timestamp, tag.tag_type, tag.data))
    duration = out[-1][0] + 33 if out else 0
    return out, duration


async def publish_one(addr: tuple[str, int], key: str, messages: list[tuple[int, int, bytes]],
                      duration: int, stop_at: float, counters: list[int]) -> None:
    stream = await trio.open_tcp_stream(*addr)
    writer = rtmp.ChunkWriter(128)
    reader = rtmp.ChunkReader()
    c0c1 = client_hello(os.urandom)
    await stream.send_all(c0c1)
    got = b""
    while len(got) < 3073:
        got += await stream.receive_some(65536)
    await stream.send_all(client_c2(got[:3073], os.urandom))
    reader.feed(got[3073:])

    async def command(name: str, txn: float, *args: object, sid: int = 0) -> None:
        await stream.send_all(writer.write(8 if sid else 3, MSG_AMF0_COMMAND, sid, 0,
                                           rtmp.amf0_encode(name, txn, *args)))

    async def reply(name: str) -> list[object]:
        while True:
            while (msg := reader.next_message()) is not None:
                if msg.type_id == MSG_AMF0_COMMAND:
                    values = rtmp.amf0_decode_all(msg.payload)
                    if values[0] == name or (name == "_result" and values[0] == "_error"):
                        return values
            reader.feed(await stream.receive_some(65536))

    await stream.send_all(writer.set_chunk_size(4096))
    await command("connect", 1.0, {"app": "live", "tcUrl": f"rtmp://{addr[0]}/live"})
    await reply("_result")
    await command("createStream", 2.0, None)
    sid = int((await reply("_result"))[3])
    await command("publish", 3.0, None, key, "live", sid=sid)
    status = (await reply("onStatus"))[3]
    if status.get("code") != "NetStream.Publish.Start":
        raise RuntimeError(f"publish refused: {status}")
    counters[0] += 1

    async def drain() -> None:  # acks and pings from the server
        while await stream.receive_some(65536):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        start = trio.current_time()
        offset = 0
        while trio.current_time() < stop_at:
            for ts, type_id, body in messages:
                due = start + (offset + ts) / 1000
                if due > trio.current_time():
                    await trio.sleep_until(due)
                if trio.current_time() >= stop_at:
                    break
                csid = 6 if type_id == 9 else 4 if type_id == 8 else 5
                await stream.send_all(writer.write(csid, type_id, sid, offset + ts, body))
                counters[1] += len(body)
            offset += duration
        await command("FCUnpublish", 4.0, None, key)
        await command("deleteStream", 5.0, float(sid))
        nursery.cancel_scope.cancel()
    await stream.aclose()


async def load_generator(host: str, port: int, keys: list[str], flv: Path, seconds: float
                         ) -> None:
    messages, duration = flv_messages(flv)
    counters = [0, 0]
    stop_at = trio.current_time() + seconds
    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(publish_one, (host, port), key, messages, duration, stop_at,
                               counters)
            await trio.sleep(random.uniform(0.005, 0.02))  # staggered starts
        while counters[0] < len(keys):
            await trio.sleep(0.05)
        print(f"LIVE {counters[0]}", flush=True)
    print(f"SENT {counters[1]}", flush=True)


def bench_publishers(flv: Path, n: int, seconds: float, bitrate: str) -> None:
    from livekit.protocol import ingress as pb

    from tests.service import ServiceProcess

    workdir = Path(tempfile.mkdtemp(prefix="bench-rtmp-"))
    svc = ServiceProcess(workdir, rtmp_port=0, logging={"level": "info"},
                         rtmp_max_connections=max(500, n + 10))
    svc.start()
    try:
        async def make(client):
            return [await client.create_ingress(pb.CreateIngressRequest(
                input_type=pb.IngressInput.RTMP_INPUT, room_name="bench",
                participant_identity=f"p{i}")) for i in range(n)]

        infos = svc.api(make)
        keys = [info.stream_key for info in infos]
        host, port = svc.rtmp_addr.rsplit(":", 1)
        warmup = 5.0
        gen = subprocess.Popen(
            [sys.executable, __file__, "_generate", host, port, str(flv),
             str(seconds + warmup + 5), *keys], stdout=subprocess.PIPE, text=True)
        assert gen.stdout is not None
        line = gen.stdout.readline()
        if not line.startswith("LIVE"):
            raise RuntimeError(f"load generator failed: {line!r}")
        time.sleep(warmup)
        pid = svc.proc.pid
        gen_cpu0, cpu0, t0 = cpu_seconds(gen.pid), cpu_seconds(pid), time.monotonic()
        time.sleep(seconds)
        cpu1, t1, gen_cpu1 = cpu_seconds(pid), time.monotonic(), cpu_seconds(gen.pid)

        async def states(client):
            return (await client.list_ingress(pb.ListIngressRequest(room_name="bench"))).items

        live = sum(1 for i in svc.api(states)
                   if i.state.status == pb.IngressState.ENDPOINT_BUFFERING)
        sent = int(gen.stdout.readline().split()[1])
        gen.wait()
        time.sleep(1)
        ended = svc.log().count(" ended after ")
        frames = sum(int(x) for x in __import__("re").findall(r"video h264 \S+ frames=(\d+)",
                                                              svc.log()))
        server = (cpu1 - cpu0) / (t1 - t0)
        print(f"{n} publishers x {bitrate}bit/s for {t1 - t0:.1f} s (after {warmup:g} s "
              f"warm-up): {live}/{n} BUFFERING during the window")
        print(f"server CPU: {server * 100:.1f}% of one core "
              f"({server * 100 / n:.2f}% per publisher)")
        print(f"load generator CPU (Python/trio, one process): "
              f"{(gen_cpu1 - gen_cpu0) / (t1 - t0) * 100:.1f}% of one core")
        print(f"generator sent {sent / 1e6:.1f} MB of media in total; server sessions "
              f"ended: {ended}, video frames counted: {frames}")
    finally:
        svc.stop()

    # one ffmpeg -re -stream_loop -1 -c copy publisher, for comparison
    svc = ServiceProcess(workdir / "ff", rtmp_port=0, logging={"level": "info"})
    (workdir / "ff").mkdir()
    svc.start()
    try:
        info = svc.api(lambda c: c.create_ingress(pb.CreateIngressRequest(
            input_type=pb.IngressInput.RTMP_INPUT, room_name="bench",
            participant_identity="ff")))
        ff = subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                               "-stream_loop", "-1", "-i", str(flv), "-c", "copy", "-f", "flv",
                               f"rtmp://{svc.rtmp_addr}/live/{info.stream_key}"])
        time.sleep(2)
        c0, t0 = cpu_seconds(ff.pid), time.monotonic()
        time.sleep(5)
        c1, t1 = cpu_seconds(ff.pid), time.monotonic()
        ff.terminate()
        ff.wait()
        print(f"one `ffmpeg -re -stream_loop -1 -c copy` publisher: "
              f"{(c1 - c0) / (t1 - t0) * 100:.2f}% of one core "
              f"(x{n} = {(c1 - c0) / (t1 - t0) * 100 * n:.0f}%)")
    finally:
        svc.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_generate":
        host, port, flv, seconds, *keys = sys.argv[2:]
        trio.run(load_generator, host, int(port), keys, Path(flv), float(seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publishers", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--bitrate", default="2.5M")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-demux", action="store_true")
    parser.add_argument("--skip-publishers", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        flv = Path(tmp) / "capture-1080p.flv"
        cmd = encode(flv, args.bitrate, 10)
        print("encoded:", " ".join(cmd))
        if not args.skip_demux:
            bench_demux(flv, args.repeat)
        if not args.skip_publishers:
            bench_publishers(flv, args.publishers, args.seconds, args.bitrate)


if __name__ == "__main__":
    main()
