"""The four Ingress RPCs as plain async methods: rules of REFERENCE §2-§4, no HTTP.

The HTTP binding (api/twirp.py) decodes requests and calls these; ingest sessions
reach the same store through `IngressStore`. Live sessions are ended, and URL
pulls started, through the `SessionControl` the service is given (relay's session
host), so delete, update and create reach them in one place.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import Message
from livekit.protocol import ingress as pb

from . import ids
from .errors import TwirpError, invalid_argument
from .store import IngressStore, StoreConflict
from .validation import validate_create, validate_info

log = logging.getLogger(__name__)

NOT_FOUND = "ingress does not exist"
NOT_REUSABLE = "ingress is not reusable and cannot be modified"
INVALID_PAGE_TOKEN = "invalid page token"
PAGE_TOKEN_PREFIX = "c"  # + the `created` cursor of the page's last ingress
PAGE_SIZE = 100  # ListIngress items per page for a client that sends page_token


def _page_cursor(token: str) -> int:
    """The cursor a ListIngress page token carries; "" is the first page."""
    if not token:
        return 0
    digits = token.removeprefix(PAGE_TOKEN_PREFIX)
    if token[:1] != PAGE_TOKEN_PREFIX or not digits.isascii() or not digits.isdigit() \
            or len(digits) > 18:
        raise invalid_argument(INVALID_PAGE_TOKEN)
    return int(digits)


@dataclass(frozen=True)
class WireResponse:
    """A response already in protobuf wire form (served from the store's room cache):
    the Twirp layer sends `data` as it is to protobuf clients and decodes it only for
    JSON ones."""

    message_type: type[Message]
    data: bytes

    def decode(self) -> Message:
        return self.message_type.FromString(self.data)


class IngressApi(Protocol):
    """The four RPCs as the Twirp layer calls them (IngressService)."""

    async def create(self, req: pb.CreateIngressRequest, request_id: str = ""
                     ) -> Message | WireResponse: ...

    async def update(self, req: pb.UpdateIngressRequest) -> Message | WireResponse: ...

    async def list(self, req: pb.ListIngressRequest) -> Message | WireResponse: ...

    async def delete(self, req: pb.DeleteIngressRequest) -> Message | WireResponse: ...


class SessionControl(Protocol):
    """What the control plane tells the sessions of a node (relay's session host)."""

    def stop(self, ingress_id: str, reason: str) -> bool:
        """End the live session of this ingress, if any; True if one was running."""

    def start_pull(self, info: pb.IngressInfo) -> None:
        """Begin pulling a URL ingress (just created, or one to resume). A TwirpError
        (`unavailable`: no capacity) means it did not start: CreateIngress stores nothing."""


class NoSessions:
    """SessionControl for a node that runs no ingest sessions (API-only use, tests):
    URL ingresses stay INACTIVE."""

    def stop(self, ingress_id: str, reason: str) -> bool:
        return False

    def start_pull(self, info: pb.IngressInfo) -> None:
        pass


@dataclass(frozen=True)
class EndpointUrls:
    """Base URLs handed out in IngressInfo.url for push inputs."""

    rtmp: str
    whip: str


class IngressService:
    """CreateIngress / UpdateIngress / ListIngress / DeleteIngress."""

    IDEMPOTENCY_ENTRIES = 4096

    def __init__(
        self,
        store: IngressStore,
        urls: EndpointUrls,
        sessions: SessionControl | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        *,
        rtmp_passthrough: bool = False,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._store = store
        self._page_size = page_size
        self._rtmp_passthrough = rtmp_passthrough
        self._urls = urls
        # not `sessions or ...`: an empty SessionRegistry is falsy (it has __len__)
        self._sessions = NoSessions() if sessions is None else sessions
        self._clock_ns = clock_ns
        # livekit-api retries a create that failed in transit with the same request id;
        # answering the retry with the ingress already made avoids a duplicate.
        self._created_by_request: OrderedDict[str, str] = OrderedDict()

    async def create(self, req: pb.CreateIngressRequest, request_id: str = "") -> pb.IngressInfo:
        if request_id and request_id in self._created_by_request:
            existing = await self._store.get(self._created_by_request[request_id])
            if existing is not None:
                return existing
        validate_create(req)
        info = self._new_info(req)
        validate_info(info, rtmp_passthrough=self._rtmp_passthrough)
        for _ in range(8):
            try:
                await self._store.create(info)
                break
            except StoreConflict:
                # 57**12 makes this astronomically rare, but a unique index is the law.
                info.ingress_id = ids.new_ingress_id()
                if info.stream_key:
                    info.stream_key = ids.new_stream_key()
        else:
            raise TwirpError("internal", "could not allocate a unique ingress id")
        if request_id:
            self._created_by_request[request_id] = info.ingress_id
            while len(self._created_by_request) > self.IDEMPOTENCY_ENTRIES:
                self._created_by_request.popitem(last=False)
        log.info("created ingress %s (%s) room=%r", info.ingress_id,
                 pb.IngressInput.Name(info.input_type), info.room_name)
        if info.input_type == pb.IngressInput.URL_INPUT:
            try:
                self._sessions.start_pull(info)  # URL input starts right after CreateIngress
            except TwirpError:  # no node takes the pull (capacity): as if never created
                await self._store.delete(info.ingress_id)
                raise
        return info

    def _new_info(self, req: pb.CreateIngressRequest) -> pb.IngressInfo:
        info = pb.IngressInfo(
            ingress_id=ids.new_ingress_id(),
            name=req.name,
            input_type=req.input_type,
            bypass_transcoding=req.bypass_transcoding,
            room_name=req.room_name,
            participant_identity=req.participant_identity,
            participant_name=req.participant_name,
            participant_metadata=req.participant_metadata,
            reusable=req.input_type != pb.IngressInput.URL_INPUT,
            state=pb.IngressState(status=pb.IngressState.ENDPOINT_INACTIVE,
                                  updated_at=self._clock_ns()),
        )
        if req.input_type == pb.IngressInput.RTMP_INPUT:
            info.stream_key = ids.new_stream_key()
            info.url = self._urls.rtmp
        elif req.input_type == pb.IngressInput.WHIP_INPUT:
            info.stream_key = ids.new_stream_key()
            info.url = self._urls.whip
        else:
            info.url = req.url
        for name in ("enable_transcoding", "enabled", "audio", "video"):
            if req.HasField(name):
                if name in ("audio", "video"):
                    getattr(info, name).CopyFrom(getattr(req, name))
                else:
                    setattr(info, name, getattr(req, name))
        return info

    async def update(self, req: pb.UpdateIngressRequest) -> pb.IngressInfo:
        def change(info: pb.IngressInfo) -> pb.IngressInfo:
            """Runs inside the store's transaction: what it reads is what it replaces."""
            if info.input_type == pb.IngressInput.URL_INPUT or not info.reusable:
                raise invalid_argument(NOT_REUSABLE)
            for name in ("name", "room_name", "participant_identity", "participant_name",
                         "participant_metadata"):
                value = getattr(req, name)
                if value:
                    setattr(info, name, value)
            for name in ("bypass_transcoding", "enable_transcoding", "enabled"):
                if req.HasField(name):
                    setattr(info, name, getattr(req, name))
            for name in ("audio", "video"):
                if req.HasField(name):
                    getattr(info, name).CopyFrom(getattr(req, name))
            validate_info(info, rtmp_passthrough=self._rtmp_passthrough)
            if info.state.status == pb.IngressState.ENDPOINT_ERROR:  # reusable again
                info.state.status = pb.IngressState.ENDPOINT_INACTIVE
                info.state.error = ""
                info.state.updated_at = self._clock_ns()
            return info

        info = await self._store.update(req.ingress_id, change)
        if info is None:
            raise TwirpError("not_found", NOT_FOUND)
        # Whatever the stored state says: a session still starting (registered, its
        # BUFFERING not written yet) runs with the old config too. The session
        # control knows whether one runs; asking costs nothing when none does.
        self._sessions.stop(info.ingress_id, "ingress updated")
        log.info("updated ingress %s", info.ingress_id)
        return info

    async def list(self, req: pb.ListIngressRequest) -> pb.ListIngressResponse | WireResponse:
        if req.ingress_id:
            info = await self._store.get(req.ingress_id)
            if info is None:
                raise TwirpError("not_found", NOT_FOUND)
            return pb.ListIngressResponse(items=[info])
        if req.HasField("page_token"):  # a client that pages: see docs/DESIGN.md
            return await self._list_page(req)
        if req.room_name:
            return WireResponse(pb.ListIngressResponse,
                                await self._store.list_room_wire(req.room_name))
        return pb.ListIngressResponse(items=await self._store.list())

    async def _list_page(self, req: pb.ListIngressRequest) -> pb.ListIngressResponse:
        after = _page_cursor(req.page_token.token)
        items, last = await self._store.list_page(req.room_name or None, after,
                                                  self._page_size)
        response = pb.ListIngressResponse(items=items)
        if last is not None:
            response.next_page_token.token = f"{PAGE_TOKEN_PREFIX}{last}"
        return response

    async def delete(self, req: pb.DeleteIngressRequest) -> pb.IngressInfo:
        info = await self._store.delete(req.ingress_id)
        if info is None:
            raise TwirpError("not_found", NOT_FOUND)
        # like update: whatever the stored state, a session starting is stopped too
        self._sessions.stop(info.ingress_id, "ingress deleted")
        info.state.status = pb.IngressState.ENDPOINT_INACTIVE
        log.info("deleted ingress %s", info.ingress_id)
        return info
