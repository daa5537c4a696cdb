from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.livekit import LiveKitServer
from tests.redis_server import RedisServer
from tests.service import ServiceProcess

# The dev and test secrets are short on purpose in places; PyJWT's advice is noise here.
warnings.filterwarnings("ignore", message=".*HMAC key.*")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One running service per test module (a fresh store each)."""
    proc = ServiceProcess(tmp_path_factory.mktemp("service"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh_service(tmp_path: Path) -> Iterator[ServiceProcess]:
    proc = ServiceProcess(tmp_path)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def livekit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveKitServer]:
    """A real livekit-server on 127.0.0.1 for the whole run (started on first use)."""
    server = LiveKitServer(tmp_path_factory.mktemp("livekit"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Debian's redis-server on a free port of 127.0.0.1, one per test module."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
BROWSER_ARGS = [
    "--no-sandbox", "--autoplay-policy=no-user-gesture-required",
    # ICE: host candidates with their addresses (no mDNS names), loopback too
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns,MediaRouter,OptimizationHints,Translate",
    # nothing but 127.0.0.1
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright (no browser download).

    One per module, never longer: Playwright's sync API keeps an asyncio loop running
    in the main thread while it is open, and later modules call asyncio.run()."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/setup --test installs Debian's)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()
