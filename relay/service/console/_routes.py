"""The console's routes on the node's Quart app (/console/...).

Every page but sign-in needs a console session (cookie: HttpOnly, SameSite=Strict,
Secure over TLS); every POST needs the session's CSRF token in its form. Under
``--dev`` each browser gets a session without signing in and every page says so.
Ingresses are read and changed through the same IngressApi as the Twirp API, so the
console shows the API's own validation messages.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from livekit import api as lkapi
from livekit.protocol import ingress as pb
from quart import Blueprint, Response, redirect, render_template, request, send_file

from api.errors import TwirpError
from api.service import IngressApi, WireResponse

from . import _forms as forms
from ._sessions import ConsoleSession, ConsoleSessions, same_token

COOKIE = "ingress_console"
SIGN_IN_COOKIE = "ingress_console_sign_in"  # the sign-in form's own CSRF token
PREVIEW_TOKEN_TTL = timedelta(minutes=10)
LIST_LIMIT = 1000  # ingresses the list shows (pages of the API, read in turn)
LIVEKIT_CLIENT = Path(__file__).parent / "js" / "node_modules" / "livekit-client" / "dist" \
    / "livekit-client.umd.js"


@dataclass(frozen=True)
class ConsoleSettings:
    api_key: str
    api_secret: str
    ws_url: str  # the LiveKit server the preview subscribes through ("" = no preview)
    dev: bool = False


def console_blueprint(ingresses: IngressApi, settings: ConsoleSettings,
                      sessions: ConsoleSessions | None = None) -> Blueprint:
    """The /console/ pages over `ingresses` (this node's IngressService)."""
    bp = Blueprint("console", __name__, url_prefix="/console",
                   template_folder="templates", static_folder="static")
    # Flask's scaffold gives every blueprint its sync default context processor, which
    # quart-trio would run in a thread on every render; the app's own async one adds
    # the same names (found by fuzz/fuzz_http.py: a thread under its virtual clock)
    bp.template_context_processors[None] = []
    sessions = sessions or ConsoleSessions(settings.api_key, settings.api_secret)

    def current() -> ConsoleSession | None:
        return sessions.get(request.cookies.get(COOKIE, ""))

    async def page(template: str, session: ConsoleSession | None, status: int = 200,
                   **context: Any) -> Response:
        body = await render_template(template, session=session, dev=settings.dev,
                                     **context)
        if template.startswith("_") and status == 200:  # a fragment a page polls
            etag = '"' + hashlib.sha256(body.encode()).hexdigest()[:20] + '"'
            if request.headers.get("if-none-match") == etag:
                return Response("", status=304, headers={"etag": etag})
            return Response(body, content_type="text/html; charset=utf-8",
                            headers={"etag": etag})
        return Response(body, status=status, content_type="text/html; charset=utf-8")

    def with_cookie(response: Response, name: str, value: str,
                    max_age: int | None = None) -> Response:
        """Every console cookie: HttpOnly, SameSite=Strict, /console, Secure over TLS."""
        response.set_cookie(name, value, httponly=True, samesite="Strict",
                            secure=request.scheme == "https", path="/console",
                            max_age=max_age)
        return response

    def signed_in(view: Callable[..., Awaitable[Response]]) -> Callable[..., Awaitable[Any]]:
        """The view with the browser's session; sign-in first (POST: 403) without one.
        A POST must carry the session's CSRF token."""
        async def wrapped(**kwargs: Any) -> Any:
            session = current()
            opened = session is None and settings.dev
            if opened:
                session = sessions.open()
            if session is None:
                if request.method != "GET":
                    return Response("sign in first\n", status=403, content_type="text/plain")
                return redirect("/console/sign-in")
            if request.method == "POST":
                form = await request.form
                if opened or not sessions.csrf_ok(session, form.get("csrf", "")):
                    return Response("the form's CSRF token is missing or wrong: reload the "
                                    "page and try again\n", status=403,
                                    content_type="text/plain")
            response = await view(session, **kwargs)
            return with_cookie(response, COOKIE, session.session_id) if opened else response
        wrapped.__name__ = view.__name__
        return wrapped

    async def one(ingress_id: str) -> pb.IngressInfo | None:
        try:
            listed = _decoded(await ingresses.list(pb.ListIngressRequest(
                ingress_id=ingress_id)))
        except TwirpError as exc:  # a LiveKit server answers not_found, this node []
            if exc.code == "not_found":
                return None
            raise
        return listed.items[0] if listed.items else None

    async def all_ingresses(room: str) -> list[pb.IngressInfo]:
        found: list[pb.IngressInfo] = []
        req = pb.ListIngressRequest(room_name=room)
        while len(found) < LIST_LIMIT:
            listed = _decoded(await ingresses.list(req))
            found += listed.items
            if not listed.HasField("next_page_token") or not listed.next_page_token.token:
                break
            req.page_token.token = listed.next_page_token.token
        return sorted(found[:LIST_LIMIT], key=lambda i: (i.room_name, i.name, i.ingress_id))

    # -- sign-in ---------------------------------------------------------------------

    @bp.route("/sign-in", methods=["GET", "POST"])
    async def sign_in() -> Any:
        if settings.dev:
            return redirect("/console/")
        error = ""
        status = 200
        if request.method == "POST":
            form = await request.form
            expected = request.cookies.get(SIGN_IN_COOKIE, "")
            if not expected or not same_token(form.get("csrf", ""), expected):
                return Response("the sign-in form's CSRF token is missing or wrong: reload "
                                "the page\n", status=403, content_type="text/plain")
            client = request.remote_addr or ""
            wait = sessions.retry_after(client)
            if wait > 0:
                return Response(f"too many wrong sign-ins from {client}: try again in "
                                f"{wait:.0f} s\n", status=429, content_type="text/plain",
                                headers={"retry-after": str(int(wait) + 1)})
            session = sessions.sign_in(form.get("api_key", ""), form.get("api_secret", ""),
                                       client)
            if session is not None:
                response = with_cookie(redirect("/console/"), COOKIE, session.session_id)
                response.delete_cookie(SIGN_IN_COOKIE, path="/console")
                return response
            error, status = "That API key and secret do not sign in to this node.", 401
        token = secrets.token_urlsafe(24)
        response = await page("sign_in.html", None, status, csrf=token, error=error)
        with_cookie(response, SIGN_IN_COOKIE, token, max_age=3600)
        return response

    @bp.route("/sign-out", methods=["POST"])
    @signed_in
    async def sign_out(session: ConsoleSession) -> Response:
        sessions.sign_out(session.session_id)
        response = redirect("/console/sign-in")
        response.delete_cookie(COOKIE, path="/console")
        return response

    # -- the list --------------------------------------------------------------------

    @bp.route("/")
    @bp.route("/rows")
    @signed_in
    async def index(session: ConsoleSession) -> Response:
        """The list; /rows is its rows alone, which the page polls to stay current."""
        room = request.args.get("room", "")
        rows = [forms.row(info) for info in await all_ingresses(room)]
        template = "_rows.html" if request.path.endswith("/rows") else "list.html"
        return await page(template, session, rows=rows, room=room)

    # -- one ingress -----------------------------------------------------------------

    @bp.route("/ingress/<ingress_id>")
    @bp.route("/ingress/<ingress_id>/summary")
    @signed_in
    async def ingress(session: ConsoleSession, ingress_id: str) -> Response:
        """An ingress; /summary is its status line alone (polled like the list's rows)."""
        info = await one(ingress_id)
        if info is None:
            return await page("missing.html", session, 404, ingress_id=ingress_id)
        if request.path.endswith("/summary"):  # every 2 s per open page: the line only
            return await page("_summary.html", session, info=info, row=forms.row(info))
        return await page("ingress.html", session, info=info, row=forms.row(info),
                          settings=forms.publisher_settings(info),
                          preview=bool(settings.ws_url), ws_url=settings.ws_url,
                          client_installed=LIVEKIT_CLIENT.is_file())

    @bp.route("/ingress/<ingress_id>/preview-token")
    @signed_in
    async def preview_token(session: ConsoleSession, ingress_id: str) -> Response:
        """A short-lived, subscribe-only, hidden participant for the preview."""
        info = await one(ingress_id)
        if info is None or not settings.ws_url:
            return Response("{}", status=404, content_type="application/json")
        token = (lkapi.AccessToken(settings.api_key, settings.api_secret)
                 .with_identity(f"console-{secrets.token_hex(4)}")
                 .with_name("ingress console preview")
                 .with_grants(lkapi.VideoGrants(room_join=True, room=info.room_name,
                                                can_publish=False, can_subscribe=True,
                                                can_publish_data=False, hidden=True))
                 .with_ttl(PREVIEW_TOKEN_TTL).to_jwt())
        body = json.dumps({"url": settings.ws_url, "token": token,
                           "participant": info.participant_identity})
        return Response(body, content_type="application/json",
                        headers={"cache-control": "no-store"})

    @bp.route("/new", methods=["GET", "POST"])
    @signed_in
    async def new(session: ConsoleSession) -> Response:
        if request.method == "GET":
            return await page("form.html", session, form=forms.IngressForm(),
                              errors={}, editing=None, **_choices())
        form = forms.IngressForm.from_fields(await request.form)
        try:
            created = _decoded(await ingresses.create(form.create_request()))
        except (TwirpError, forms.FormError) as exc:
            return await page("form.html", session, 400, form=form,
                              errors=_errors(exc), editing=None, **_choices())
        return redirect(f"/console/ingress/{created.ingress_id}")

    @bp.route("/ingress/<ingress_id>/edit", methods=["GET", "POST"])
    @signed_in
    async def edit(session: ConsoleSession, ingress_id: str) -> Response:
        info = await one(ingress_id)
        if info is None:
            return await page("missing.html", session, 404, ingress_id=ingress_id)
        if request.method == "GET":
            return await page("form.html", session, form=forms.IngressForm.from_info(info),
                              errors={}, editing=info, **_choices())
        form = forms.IngressForm.from_fields(await request.form)
        form.input_type = pb.IngressInput.Name(info.input_type)  # not changeable
        try:
            await ingresses.update(form.update_request(ingress_id))
        except (TwirpError, forms.FormError) as exc:
            return await page("form.html", session, 400, form=form, errors=_errors(exc),
                              editing=info, **_choices())
        return redirect(f"/console/ingress/{ingress_id}")

    @bp.route("/ingress/<ingress_id>/delete", methods=["POST"])
    @signed_in
    async def delete(session: ConsoleSession, ingress_id: str) -> Response:
        try:
            await ingresses.delete(pb.DeleteIngressRequest(ingress_id=ingress_id))
        except TwirpError as exc:
            if exc.code != "not_found":
                raise
        return redirect("/console/")

    @bp.route("/vendor/livekit-client.js")
    async def livekit_client() -> Any:
        """livekit-client from npm (scripts/setup installs it), never a committed copy."""
        if not LIVEKIT_CLIENT.is_file():
            return Response("livekit-client is not installed: run scripts/setup\n",
                            status=404, content_type="text/plain")
        return await send_file(LIVEKIT_CLIENT, mimetype="text/javascript")

    @bp.errorhandler(TwirpError)
    async def api_failed(exc: TwirpError) -> Response:
        """The API could not answer (a cluster worker's LiveKit server unreachable)."""
        return await page("failed.html", current(), 503 if exc.status >= 500 else exc.status,
                          error=exc)

    @bp.after_request
    async def headers(response: Response) -> Response:
        live = urlsplit(settings.ws_url) if settings.ws_url else None
        connect = "'self'"
        if live is not None and live.netloc:
            http = "https" if live.scheme == "wss" else "http"
            connect += f" {live.scheme}://{live.netloc} {http}://{live.netloc}"
        response.headers["content-security-policy"] = (
            f"default-src 'self'; connect-src {connect}; media-src 'self' blob:; "
            "img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        if request.path.startswith("/console/") and "static" not in request.path:
            response.headers.setdefault("cache-control", "no-store")
        return response

    return bp


def _decoded(message: Any) -> Any:
    return message.decode() if isinstance(message, WireResponse) else message


def _errors(exc: TwirpError | forms.FormError) -> dict[str, str]:
    if isinstance(exc, forms.FormError):
        return {exc.field: str(exc)}
    return {forms.field_of_error(exc.msg): exc.msg}


def _choices() -> dict[str, Any]:
    return {"inputs": forms.INPUTS, "video_presets": forms.VIDEO_PRESETS,
            "audio_presets": forms.AUDIO_PRESETS, "video_codecs": forms.VIDEO_CODECS,
            "qualities": forms.QUALITIES}
