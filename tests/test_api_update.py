"""IngressService in-process (real SQLite store): UpdateIngress is one transaction,
Update/Delete stop a session whatever the stored state says, ListIngress pages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from livekit.protocol import ingress as pb
from livekit.protocol import models

from api.errors import TwirpError
from api.service import EndpointUrls, IngressService
from api.store import SqliteIngressStore, open_sqlite_store
from relay.service.ingest.control import LocalControlPlane, StateWrite
from relay.service.ingest.lifetime import Refusal, Refused, SessionHost
from relay.service.ingest.registry import SessionRegistry
from relay.service.node import NodeCommands

URLS = EndpointUrls("rtmp://h/x", "http://h/w")
FIELDS = ("name", "participant_name", "participant_metadata", "room_name",
          "participant_identity")


class RecordingSessions:
    """SessionControl that records what the service asks of it."""

    def __init__(self) -> None:
        self.stopped: list[tuple[str, str]] = []

    def stop(self, ingress_id: str, reason: str) -> bool:
        self.stopped.append((ingress_id, reason))
        return False

    def start_pull(self, info: pb.IngressInfo) -> None:
        pass


@asynccontextmanager
async def api(tmp_path: Path, sessions: object = None, **kwargs: int
              ) -> AsyncIterator[tuple[IngressService, SqliteIngressStore]]:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        yield IngressService(store, URLS, sessions, **kwargs), store  # type: ignore[arg-type]


def rtmp(identity: str = "p", room: str = "room") -> pb.CreateIngressRequest:
    return pb.CreateIngressRequest(input_type=pb.IngressInput.RTMP_INPUT,
                                   participant_identity=identity, room_name=room)


# -- UpdateIngress is one transaction ------------------------------------------------------

async def test_concurrent_updates_of_different_fields_lose_nothing(tmp_path: Path) -> None:
    async with api(tmp_path) as (service, store):
        info = await service.create(rtmp())

        async def update(field: str, value: str) -> None:
            await service.update(pb.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                         **{field: value}))

        for round_ in range(20):  # every field changed at once by its own call
            async with trio.open_nursery() as nursery:
                for field in FIELDS:
                    nursery.start_soon(update, field, f"{field}-{round_}")
            stored = await store.get(info.ingress_id)
            assert stored is not None
            assert {f: getattr(stored, f) for f in FIELDS} == {
                f: f"{f}-{round_}" for f in FIELDS}, round_

        # N pairs at once: name and participant_name, each value written by one call;
        # whatever order they commit in, neither field may fall back to an older value
        names = [f"n{i}" for i in range(30)]
        shown = [f"s{i}" for i in range(30)]
        async with trio.open_nursery() as nursery:
            for name, participant_name in zip(names, shown, strict=True):
                nursery.start_soon(update, "name", name)
                nursery.start_soon(update, "participant_name", participant_name)
        stored = await store.get(info.ingress_id)
        assert stored is not None
        assert stored.name in names and stored.participant_name in shown
        assert stored.participant_metadata == f"participant_metadata-{round_}"


async def test_an_update_refused_by_validation_writes_and_stops_nothing(tmp_path: Path
                                                                        ) -> None:
    sessions = RecordingSessions()
    async with api(tmp_path, sessions) as (service, store):
        info = await service.create(rtmp())
        with pytest.raises(TwirpError, match="bypassing transcoding impossible"):
            await service.update(pb.UpdateIngressRequest(
                ingress_id=info.ingress_id, name="x", enable_transcoding=False))
        assert await store.get(info.ingress_id) == info
        assert sessions.stopped == []
        with pytest.raises(TwirpError, match="ingress does not exist"):
            await service.update(pb.UpdateIngressRequest(ingress_id="IN_nope", name="x"))


# -- Update and Delete stop a session whatever the stored state -----------------------------

@pytest.mark.parametrize("status", [pb.IngressState.ENDPOINT_INACTIVE,
                                    pb.IngressState.ENDPOINT_ERROR,
                                    pb.IngressState.ENDPOINT_BUFFERING,
                                    pb.IngressState.ENDPOINT_PUBLISHING])
async def test_update_and_delete_always_ask_to_stop_the_session(tmp_path: Path,
                                                                status: int) -> None:
    """The registry, not the stored state, knows whether a session runs: a session
    still starting has not written BUFFERING yet (and an ERROR may be its
    predecessor's)."""
    sessions = RecordingSessions()
    async with api(tmp_path, sessions) as (service, store):
        info = await service.create(rtmp())
        await store.update_state(info.ingress_id, pb.IngressState(status=status,
                                                                  started_at=5))
        updated = await service.update(pb.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                               name="renamed"))
        assert sessions.stopped == [(info.ingress_id, "ingress updated")]
        if status == pb.IngressState.ENDPOINT_ERROR:  # reusable again, in the same write
            assert updated.state.status == pb.IngressState.ENDPOINT_INACTIVE
        assert await store.get(info.ingress_id) == updated
        await service.delete(pb.DeleteIngressRequest(ingress_id=info.ingress_id))
        assert sessions.stopped[1:] == [(info.ingress_id, "ingress deleted")]


class HeldBuffering(LocalControlPlane):
    """The real control plane, holding each session's BUFFERING write until released:
    a session registered and still starting, the store still showing INACTIVE."""

    def __init__(self, store: SqliteIngressStore) -> None:
        super().__init__(store)
        self.buffering = trio.Event()
        self.release = trio.Event()

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> StateWrite:
        if state.status == pb.IngressState.ENDPOINT_BUFFERING:
            self.buffering.set()
            await self.release.wait()
        return await super().update_state(ingress_id, state)


@pytest.mark.parametrize("call", ["update", "delete"])
async def test_a_session_still_starting_is_stopped(tmp_path: Path, call: str) -> None:
    """The node's wiring (SessionHost, SessionRegistry, NodeCommands, IngressService):
    Update/Delete arriving while a session is registered but before its BUFFERING is
    stored end that session; it never runs with the old configuration."""
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        registry = SessionRegistry()
        control = HeldBuffering(store)
        host = SessionHost(control, registry, workers=None)
        service = IngressService(store, URLS, NodeCommands(registry, None))
        info = await service.create(rtmp())
        outcome: list[object] = []

        async def publish() -> None:
            try:
                async with host.session("rtmp", info):
                    outcome.append("ran with the old config")
                    await trio.sleep_forever()
            except Refused as exc:
                outcome.append(exc)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(publish)
                await control.buffering.wait()
                stored = await store.get(info.ingress_id)
                assert stored is not None
                assert stored.state.status == pb.IngressState.ENDPOINT_INACTIVE
                if call == "update":
                    await service.update(pb.UpdateIngressRequest(ingress_id=info.ingress_id,
                                                                 name="renamed"))
                else:
                    await service.delete(pb.DeleteIngressRequest(ingress_id=info.ingress_id))
                control.release.set()
        (refused,) = outcome
        assert isinstance(refused, Refused) and refused.reason is Refusal.STOPPED, outcome
        assert refused.text == f"the session ended while starting: ingress {call}d"
        assert len(registry) == 0
        if call == "update":
            stored = await store.get(info.ingress_id)
            assert stored is not None and stored.name == "renamed"
            assert stored.state.status == pb.IngressState.ENDPOINT_INACTIVE


# -- ListIngress pages ---------------------------------------------------------------------

async def test_list_pages_only_for_a_client_that_asks(tmp_path: Path) -> None:
    async with api(tmp_path, page_size=4) as (service, _):
        made = [await service.create(rtmp(f"p{i}", "a" if i % 2 else "b"))
                for i in range(11)]
        everything = await service.list(pb.ListIngressRequest())
        assert isinstance(everything, pb.ListIngressResponse)
        assert list(everything.items) == made  # no page_token: everything, as LiveKit does
        assert not everything.HasField("next_page_token")

        async def walk(room: str) -> tuple[list[pb.IngressInfo], list[int]]:
            got: list[pb.IngressInfo] = []
            sizes: list[int] = []
            token = models.TokenPagination()
            while True:
                page = await service.list(pb.ListIngressRequest(room_name=room,
                                                                page_token=token))
                assert isinstance(page, pb.ListIngressResponse)
                got += page.items
                sizes.append(len(page.items))
                if not page.next_page_token.token:
                    return got, sizes
                token = page.next_page_token

        assert await walk("") == (made, [4, 4, 3])
        assert await walk("a") == ([m for m in made if m.room_name == "a"], [4, 1])
        assert await walk("nobody") == ([], [0])
        # by id: that one ingress, the token has nothing to add
        one = await service.list(pb.ListIngressRequest(
            ingress_id=made[3].ingress_id, page_token=models.TokenPagination(token="c2")))
        assert list(one.items) == [made[3]]  # type: ignore[union-attr]
        for token in ("garbage", "c", "c-1", "c1x", "c" + "9" * 19, "c\uff11"):
            with pytest.raises(TwirpError) as err:
                await service.list(pb.ListIngressRequest(
                    page_token=models.TokenPagination(token=token)))
            assert (err.value.code, err.value.msg) == ("invalid_argument",
                                                       "invalid page token"), token
