"""`ingress`: run the service, or drive any LiveKit Ingress API from JSON files.

`ingress serve` runs the service. `ingress create|list|update|delete` are a client
built on the official `livekit-api` package; they read the same JSON files that
`lk ingress create ingress.json` reads (snake_case or lowerCamel, enum names or
numbers), so they work against this service and LiveKit's alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import resource
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import trio
from google.protobuf import json_format
from google.protobuf.message import Message
from livekit import api
from livekit.api.twirp_client import ServerError
from livekit.protocol import ingress as pb

from .config import DEV_API_KEY, DEV_API_SECRET, ConfigError, load_config, log_level
from .node import serve

DEFAULT_API_URL = "http://127.0.0.1:8080"


def _quiet_dev_key_warning() -> None:
    """PyJWT warns about the 6-byte dev secret on every token; the dev banner says it once."""
    warnings.filterwarnings("ignore", message=".*HMAC key.*")


def tune_gc() -> None:
    """Once the service is up: move what startup built out of the collector's sight
    (gc.freeze) and collect the young generation less often. Every HTTP call allocates
    many short-lived objects (measured under hypercorn and trio), and with CPython's
    defaults the collections they trigger, full ones included, showed as the API's
    tail latency: p99.9 of ListIngress under 16 saturating clients 34 ms -> 17-20 ms
    (bench/api.py, docs/PERFORMANCE.md)."""
    gc.freeze()
    gc.set_threshold(20_000, 50, 1_000)


def raise_open_files_limit() -> int:
    """Lift the soft limit on open files to the hard one (as Go's runtime does): the
    defaults (1,000 HTTP + 500 RTMP connections, two pipes per worker) need more than
    the 1,024 many systems start a service with. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    return soft


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config, dev=args.dev)
    except ConfigError as exc:
        print(f"ingress: configuration error: {exc}", file=sys.stderr)
        return 2
    if config.dev:
        _quiet_dev_key_warning()
    logging.basicConfig(level=log_level(config),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    open_files = raise_open_files_limit()
    needed = config.http_max_connections + config.rtmp_max_connections + 64
    if open_files < needed:
        logging.getLogger("relay.service").warning(
            "the open files limit is %d, below the %d the connection caps may need "
            "(http_max_connections + rtmp_max_connections): raise it (ulimit -n)",
            open_files, needed)

    async def main() -> None:
        log = logging.getLogger("relay.service")
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def node(task_status: trio.TaskStatus[None]) -> None:
                await serve(config, stop=stop, task_status=task_status)
                nursery.cancel_scope.cancel()  # stopped in order: nothing left to wait for

            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                await nursery.start(node)
                tune_gc()
                async for signum in signals:
                    if stop.is_set():  # a second signal: do not wait any longer
                        log.warning("signal %d again: exiting now", signum)
                        nursery.cancel_scope.cancel()
                        break
                    log.info("signal %d: shutting down", signum)
                    stop.set()

    try:
        trio.run(main)
    except (OSError, BaseExceptionGroup) as exc:
        cause = _os_error(exc)  # trio's nurseries wrap it in exception groups
        if cause is None:
            raise
        print(f"ingress: cannot start: {cause}", file=sys.stderr)
        return 1
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError (a port in use, an unreadable certificate) behind a failed start."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _os_error(inner)) is not None:
                return found
    return None


def _read_request(path: str, message: Message) -> Message:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    json_format.Parse(text, message, ignore_unknown_fields=True)
    return message


def _to_json(message: Message) -> str:
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2,
                                     always_print_fields_with_no_presence=True)


def _client_args(args: argparse.Namespace) -> tuple[str, str, str]:
    url = args.url or os.environ.get("INGRESS_URL") or DEFAULT_API_URL
    key = args.api_key or os.environ.get("LIVEKIT_API_KEY") or (DEV_API_KEY if args.dev else "")
    secret = (args.api_secret or os.environ.get("LIVEKIT_API_SECRET")
              or (DEV_API_SECRET if args.dev else ""))
    if not key or not secret:
        raise SystemExit("ingress: need --api-key/--api-secret, LIVEKIT_API_KEY/"
                         "LIVEKIT_API_SECRET, or --dev")
    return url, key, secret


async def _call(args: argparse.Namespace) -> Any:
    url, key, secret = _client_args(args)
    if secret == DEV_API_SECRET:
        _quiet_dev_key_warning()
    async with api.LiveKitAPI(url, key, secret) as lkapi:
        client = lkapi.ingress
        if args.command == "create":
            info = await client.create_ingress(_read_request(args.file, pb.CreateIngressRequest()))
            if info.stream_key:
                print(f"URL: {info.url}\nStream key: {info.stream_key}", file=sys.stderr)
            return info
        if args.command == "update":
            req = _read_request(args.file, pb.UpdateIngressRequest())
            if args.id:
                req.ingress_id = args.id
            return await client.update_ingress(req)
        if args.command == "list":
            return await client.list_ingress(
                pb.ListIngressRequest(room_name=args.room or "", ingress_id=args.id or ""))
        return await client.delete_ingress(pb.DeleteIngressRequest(ingress_id=args.id))


def _client(args: argparse.Namespace) -> int:
    try:
        result = asyncio.run(_call(args))
    except ServerError as exc:
        print(f"ingress: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    except (OSError, json_format.ParseError) as exc:
        print(f"ingress: {exc}", file=sys.stderr)
        return 1
    print(_to_json(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ingress", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the ingress service")
    serve.add_argument("--config", help="YAML config file (default: $INGRESS_CONFIG_FILE)")
    serve.add_argument("--dev", action="store_true",
                       help="development mode: key pair devkey/secret, LiveKit on "
                            "ws://127.0.0.1:7880")
    serve.set_defaults(func=_serve)

    def client(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--url", help=f"API URL (default: $INGRESS_URL or {DEFAULT_API_URL})")
        p.add_argument("--api-key")
        p.add_argument("--api-secret")
        p.add_argument("--dev", action="store_true", help="use the development key pair")
        p.set_defaults(func=_client)
        return p

    client("create", "create an ingress from a JSON file").add_argument(
        "file", help="CreateIngressRequest as JSON ('-' for stdin)")
    update = client("update", "update an ingress from a JSON file")
    update.add_argument("file", help="UpdateIngressRequest as JSON ('-' for stdin)")
    update.add_argument("--id", help="ingress id (overrides ingress_id in the file)")
    lst = client("list", "list ingresses")
    lst.add_argument("--room", help="only this room's ingresses")
    lst.add_argument("--id", help="only this ingress")
    client("delete", "delete an ingress").add_argument("id", help="ingress id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
