"""The web console in Debian's headless Chromium, driven by Playwright (the system
browser, no browser download), against the service, a real livekit-server and
Debian's ffmpeg as the publisher.

One story, as an operator lives it: a wrong secret does not sign in, the right one
does; an RTMP ingress is created through the form (the API's own message shown next
to the field first); the OBS settings are read off the page and ffmpeg pushes with
them; the list turns PUBLISHING without a reload; the preview plays the input size
and LOW changes it; a form without its CSRF token is refused; delete, confirmed.
Screenshots of the list and the preview go to build/screenshots/.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import ingress as pb

from tests.conftest import CHROMIUM
from tests.livekit import API_KEY, API_SECRET, LiveKitServer, free_port
from tests.service import ServiceProcess

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                 "(scripts/setup --test installs Debian's)")]


@pytest.fixture(scope="module")
def console_service(livekit: LiveKitServer, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[ServiceProcess]:
    rtmp_port = free_port()
    proc = ServiceProcess(tmp_path_factory.mktemp("console"), api_key=API_KEY,
                          api_secret=API_SECRET, ws_url=livekit.url, rtmp_port=rtmp_port,
                          rtmp_base_url=f"rtmp://127.0.0.1:{rtmp_port}/live")
    proc.start()
    yield proc
    proc.stop()


def ingress_ids(service: ServiceProcess) -> list[str]:
    async def call(client: Any) -> list[str]:
        listed = await client.list_ingress(pb.ListIngressRequest())
        return [info.ingress_id for info in listed.items]

    return service.api(call)


def sign_in(page: Any, base: str) -> None:
    """From the sign-in page to the list, with the test key pair."""
    page.get_by_label("API key").fill(API_KEY)
    page.get_by_label("API secret").fill(API_SECRET)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{base}/console/")


def unlabelled_fields(page: Any) -> list[str]:
    """Form fields a screen reader could not name (no label, no aria-label)."""
    return page.evaluate("""() => [...document.querySelectorAll(
        'input:not([type=hidden]), select, textarea')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
        .map(el => el.name || el.id)""")


def test_console_from_sign_in_to_delete(console_service: ServiceProcess, browser: Any
                                        ) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    base = console_service.url
    context = browser.new_context(viewport={"width": 1280, "height": 900},
                                  permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    publisher: subprocess.Popen[bytes] | None = None
    try:
        # sign-in: a wrong secret is refused, the right one signs in
        page.goto(f"{base}/console/")
        assert page.url.endswith("/console/sign-in")
        assert unlabelled_fields(page) == []
        page.get_by_label("API key").fill(API_KEY)
        page.get_by_label("API secret").fill(API_SECRET + "x")
        with page.expect_response(lambda r: r.request.method == "POST") as refused:
            page.get_by_role("button", name="Sign in").click()
        assert refused.value.status == 401
        assert "do not sign in" in page.locator("#sign-in-error").inner_text()
        assert not [c for c in context.cookies() if c["name"] == "ingress_console"]
        sign_in(page, base)
        cookie = next(c for c in context.cookies() if c["name"] == "ingress_console")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert API_SECRET not in str(context.storage_state())

        # keyboard: the first Tab reaches the skip link, Enter moves to the content
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"

        # create through the form; the API's own message first, next to its field
        page.get_by_role("link", name="New ingress").first.click()
        assert unlabelled_fields(page) == []
        page.get_by_label("Name", exact=True).fill("console e2e")
        page.get_by_label("Input", exact=True).select_option("RTMP_INPUT")
        page.get_by_label("Room name").fill("console-room")
        page.get_by_role("button", name="Create ingress").click()
        assert page.locator("#participant_identity-error").inner_text() == (
            "invalid ingress: no participant identity")
        assert page.get_by_label("Name", exact=True).input_value() == "console e2e"  # kept
        page.get_by_label("Participant identity").fill("console-pub")
        page.get_by_role("button", name="Create ingress").click()
        page.wait_for_url("**/console/ingress/*")
        ingress_id = page.url.rsplit("/", 1)[1]
        assert ingress_ids(console_service) == [ingress_id]

        # what OBS needs, read off the page; a copy button answers
        server = page.locator('code[data-setting="OBS Server"]').inner_text()
        key = page.locator('code[data-setting="OBS Stream Key"]').inner_text()
        assert server.startswith("rtmp://127.0.0.1:") and key
        page.locator("button.copy").nth(1).click()
        page.wait_for_function("() => document.querySelectorAll('button.copy')[1]"
                               ".textContent === 'Copied'")
        assert page.evaluate("navigator.clipboard.readText()") == key

        publisher = subprocess.Popen(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-re",
             "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=30",
             "-f", "lavfi", "-i", "sine=frequency=440", "-t", "90",
             "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency",
             "-pix_fmt", "yuv420p", "-g", "30", "-bf", "0", "-b:v", "2000k",
             "-c:a", "aac", "-f", "flv", f"{server}/{key}"], stderr=subprocess.PIPE)

        # the list turns PUBLISHING by itself (the page is not reloaded)
        page.get_by_role("link", name="Ingresses").click()
        page.evaluate("window.notReloaded = true")
        row = page.locator(f'tr[data-ingress="{ingress_id}"]')
        row.locator('.status[data-status="publishing"]').wait_for()
        page.wait_for_function(  # the input's size arrives with the next report
            f"""() => document.querySelector('tr[data-ingress="{ingress_id}"]')
                .textContent.includes('1280x720')""")
        assert page.evaluate("window.notReloaded") is True
        page.screenshot(path=str(SCREENSHOTS / "console-list.png"))

        # the preview plays the input size; LOW is smaller
        row.get_by_role("link").click()
        page.get_by_role("button", name="Watch").click()
        page.wait_for_function(
            """() => { const v = document.getElementById('video');
                       return v.videoWidth === 1280 && !v.paused && v.currentTime > 0.5; }""",
            timeout=45_000)
        page.wait_for_function(
            "() => /h264 1280x720 \\d+ fps \\d+ kbit\\/s/i.test("
            "document.getElementById('overlay').textContent)")
        page.wait_for_function(  # the tone moves the audio level meter
            "() => document.getElementById('level').value > 0.05")
        page.screenshot(path=str(SCREENSHOTS / "console-preview.png"), full_page=True)
        page.get_by_label("Layer", exact=True).select_option("LOW")
        page.wait_for_function(
            "() => document.getElementById('video').videoWidth === 320", timeout=45_000)
        assert page.evaluate("document.getElementById('video').videoHeight") == 180

        # a form posted without (or with a wrong) CSRF token is refused, nothing deleted
        for form in ({}, {"csrf": "forged"}):
            reply = context.request.post(f"{base}/console/ingress/{ingress_id}/delete",
                                         form=form, max_redirects=0)
            assert reply.status == 403, reply.text()
        assert ingress_ids(console_service) == [ingress_id]

        # delete from the page, confirmed in the dialog
        dialogs: list[str] = []

        def accept(dialog: Any) -> None:
            dialogs.append(dialog.message)
            dialog.accept()

        page.on("dialog", accept)
        page.get_by_role("button", name="Delete ingress").click()
        page.wait_for_url(f"{base}/console/")
        assert dialogs and "console e2e" in dialogs[0]
        assert page.locator(f'tr[data-ingress="{ingress_id}"]').count() == 0
        deadline = time.monotonic() + 10
        while ingress_ids(console_service) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ingress_ids(console_service) == []
        assert errors == []
    finally:
        if publisher is not None:
            publisher.kill()
            publisher.wait()
        context.close()


def test_console_without_a_session_refuses_posts(console_service: ServiceProcess,
                                                 browser: Any) -> None:
    """No session: pages go to sign-in, a POST is refused; the sign-in form itself
    needs its own CSRF token (a cross-site login cannot be forced)."""
    context = browser.new_context()
    try:
        reply = context.request.post(f"{console_service.url}/console/new",
                                     form={"name": "x"}, max_redirects=0)
        assert reply.status == 403
        reply = context.request.post(f"{console_service.url}/console/sign-in",
                                     form={"api_key": API_KEY, "api_secret": API_SECRET},
                                     max_redirects=0)
        assert reply.status == 403
        assert ingress_ids(console_service) == []
    finally:
        context.close()


CONTRAST = """() => {
  // WCAG 2 contrast ratio of each element's text on the background it is drawn on
  const rgb = c => c.match(/[\\d.]+/g).slice(0, 4).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map(v => v / 255)
    .map(v => v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4)
    .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = el => {
    for (; el; el = el.parentElement) {
      const c = rgb(getComputedStyle(el).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  return [...document.querySelectorAll(
      'a, button, label, th, td, caption, p, h1, h2, .status, code, legend, option')]
    .filter(el => el.offsetParent !== null && el.textContent.trim())
    .map(el => {
      const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(background(el))];
      return [(Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), el.tagName + ' ' +
              el.textContent.trim().slice(0, 30)];
    })
    .filter(([ratio]) => ratio < 4.5);
}"""


def test_every_input_type_through_the_form(console_service: ServiceProcess, browser: Any
                                           ) -> None:
    """WHIP with transcoding and custom VP8 layers, a URL pull: the form shows the
    fields of the chosen input, the API stores what was asked; text is readable
    (WCAG AA contrast) on every page."""
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto(f"{console_service.url}/console/")
        sign_in(page, console_service.url)
        assert page.evaluate(CONTRAST) == []
        page.goto(f"{console_service.url}/console/new")
        assert not page.get_by_label("URL to pull (http, https, srt)").is_visible()
        page.get_by_label("Input", exact=True).select_option("WHIP_INPUT")
        page.get_by_label("Transcoding (WHIP)").select_option("on")
        page.get_by_label("Name", exact=True).fill("whip layers")
        page.get_by_label("Room name").fill("forms")
        page.get_by_label("Participant identity").fill("whip-pub")
        page.get_by_label("Custom layers").check()
        page.get_by_label("Codec").select_option("VP8")
        for i, (width, height, bitrate) in enumerate(
                [(1280, 720, 1_800_000), (640, 360, 600_000), (320, 180, 150_000)]):
            page.get_by_label(f"Layer {i + 1} width").fill(str(width))
            page.get_by_label(f"Layer {i + 1} height").fill(str(height))
            page.get_by_label(f"Layer {i + 1} bitrate").fill(str(bitrate))
        page.get_by_role("radio", name="Custom", exact=True).check()
        page.get_by_label("Channels").fill("1")
        page.get_by_label("Opus bitrate (bit/s)").fill("64000")
        assert page.evaluate(CONTRAST) == []
        page.get_by_role("button", name="Create ingress").click()
        page.wait_for_url("**/console/ingress/*")
        assert page.evaluate(CONTRAST) == []
        assert page.locator('code[data-setting^="Bearer token"]').inner_text()

        async def stored(client: Any) -> list[pb.IngressInfo]:
            return list((await client.list_ingress(pb.ListIngressRequest(
                room_name="forms"))).items)

        whip = console_service.api(stored)[0]
        assert whip.input_type == pb.IngressInput.WHIP_INPUT and whip.enable_transcoding
        assert [(layer.width, layer.height, layer.bitrate)
                for layer in whip.video.options.layers] == [
            (1280, 720, 1_800_000), (640, 360, 600_000), (320, 180, 150_000)]
        assert (whip.audio.options.channels, whip.audio.options.bitrate) == (1, 64000)

        page.goto(f"{console_service.url}/console/new")
        page.get_by_label("Input", exact=True).select_option("URL_INPUT")
        assert not page.get_by_label("Transcoding (WHIP)").is_visible()
        page.get_by_label("URL to pull (http, https, srt)").fill("ftp://127.0.0.1/clip.mp4")
        page.get_by_label("Room name").fill("forms")
        page.get_by_label("Participant identity").fill("puller")
        page.get_by_role("button", name="Create ingress").click()
        assert page.locator("#url-error").inner_text() == (
            "invalid ingress: invalid url scheme ftp")
        assert page.get_by_label("URL to pull (http, https, srt)").is_visible()
        page.get_by_label("URL to pull (http, https, srt)").fill(
            f"http://127.0.0.1:{free_port()}/clip.mp4")  # a local address: refused
        page.get_by_role("button", name="Create ingress").click()
        page.wait_for_url("**/console/ingress/*")
        assert page.locator('code[data-setting="Pulled URL"]').inner_text().endswith(
            "/clip.mp4")
        page.evaluate("window.notReloaded = true")  # the pull is refused: the page says so
        page.locator('#summary .status[data-status="error"]').wait_for()
        assert "private or local address" in page.locator("#summary .error").inner_text()
        assert page.evaluate("window.notReloaded") is True
        assert len(console_service.api(stored)) == 2
    finally:
        context.close()
