"""SqliteIngressStore: the IngressStore contract, ordering rule and group commit."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from livekit.protocol import ingress as pb

from api.store import StoreConflict, open_sqlite_store


def info(i: int, room: str = "r", key: str | None = None) -> pb.IngressInfo:
    return pb.IngressInfo(ingress_id=f"IN_{i:012d}", stream_key=key if key is not None
                          else f"key{i:09d}", room_name=room, participant_identity=f"p{i}",
                          name=f"n{i}", state=pb.IngressState())


async def test_crud_and_lookups(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "db" / "s.sqlite3") as store:
        a, b, c = info(1, "x"), info(2, "y"), info(3, "x", key="")
        for item in (a, b, c):
            await store.create(item)
        assert await store.get(a.ingress_id) == a
        assert await store.get("IN_missing") is None
        assert await store.get_by_stream_key(b.stream_key) == b
        assert await store.get_by_stream_key("") is None  # URL ingresses have no key
        assert await store.list() == [a, b, c]
        assert await store.list("x") == [a, c]
        assert await store.list("nobody") == []
        b.room_name, b.name = "x", "renamed"
        assert await store.put(b)
        assert await store.list("x") == [a, b, c]
        assert await store.delete(a.ingress_id) == a
        assert await store.delete(a.ingress_id) is None
        assert not await store.put(a)
        assert await store.list() == [b, c]


async def test_unique_id_and_stream_key(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        await store.create(info(1))
        with pytest.raises(StoreConflict):
            await store.create(info(1, key="other"))
        with pytest.raises(StoreConflict):
            await store.create(info(2, key=info(1).stream_key))
        # two URL ingresses (no key) do not conflict
        await store.create(info(3, key=""))
        await store.create(info(4, key=""))
        assert len(await store.list()) == 3


async def test_state_is_kept_apart_from_config(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        item = info(1)
        await store.create(item)
        state = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING, started_at=100,
                                resource_id="RT_x", room_id="RM_1")
        assert await store.update_state(item.ingress_id, state)
        stale = pb.IngressInfo()
        stale.CopyFrom(item)  # a config update read before the state changed
        stale.name = "new name"
        assert await store.put(stale)
        got = await store.get(item.ingress_id)
        assert got is not None and got.name == "new name" and got.state == state


async def test_update_state_refuses_older_started_at(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        await store.create(info(1))
        new = pb.IngressState(status=pb.IngressState.ENDPOINT_BUFFERING, started_at=200)
        old = pb.IngressState(status=pb.IngressState.ENDPOINT_INACTIVE, started_at=100,
                              ended_at=150)
        assert await store.update_state(info(1).ingress_id, new)
        assert not await store.update_state(info(1).ingress_id, old)
        same = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING, started_at=200)
        assert await store.update_state(info(1).ingress_id, same)
        got = await store.get(info(1).ingress_id)
        assert got is not None and got.state == same
        assert not await store.update_state("IN_missing", new)


async def test_concurrent_writes_are_group_committed(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(store.create, info(i))
        assert len(await store.list()) == 300


async def test_a_failed_write_does_not_undo_its_batch(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        await store.create(info(0))
        results: dict[int, bool] = {}

        async def create(i: int, item: pb.IngressInfo) -> None:
            try:
                await store.create(item)
                results[i] = True
            except StoreConflict:
                results[i] = False

        async with trio.open_nursery() as nursery:
            for i in range(1, 50):
                nursery.start_soon(create, i, info(0) if i % 10 == 0 else info(i))
        assert sorted(i for i, ok in results.items() if not ok) == [10, 20, 30, 40]
        assert len(await store.list()) == 1 + 45


async def test_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    async with open_sqlite_store(path) as store:
        for i in range(10):
            await store.create(info(i))
    async with open_sqlite_store(path) as store:
        assert [i.ingress_id for i in await store.list()] == [info(i).ingress_id
                                                              for i in range(10)]


async def test_room_wire_answers_follow_every_write(tmp_path: Path) -> None:
    """ListIngress by room is served from a per-room cache of wire bytes: after each
    kind of write, the cached answer is what decoding the rows gives."""
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:

        async def check(*rooms: str) -> None:
            for room in rooms:
                wire = await store.list_room_wire(room)
                assert wire == await store.list_room_wire(room)  # cached, same bytes
                got = pb.ListIngressResponse.FromString(wire)
                assert list(got.items) == await store.list(room), room

        a, b, c = info(1, "x"), info(2, "y"), info(3, "x", key="")
        await check("x", "y", "nobody")
        for item in (a, b, c):
            await store.create(item)
            await check("x", "y")
        assert len(pb.ListIngressResponse.FromString(await store.list_room_wire("x")).items) == 2
        state = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING, started_at=5,
                                resource_id="RT_x", error="")
        assert await store.update_state(a.ingress_id, state)
        await check("x", "y")
        items = pb.ListIngressResponse.FromString(await store.list_room_wire("x")).items
        assert items[0].state.status == pb.IngressState.ENDPOINT_PUBLISHING
        b.room_name = "x"  # moves y -> x: both rooms change
        assert await store.put(b)
        await check("x", "y")
        assert not pb.ListIngressResponse.FromString(await store.list_room_wire("y")).items
        assert await store.delete(c.ingress_id) == c
        await check("x", "y")
        assert [i.ingress_id for i in pb.ListIngressResponse.FromString(
            await store.list_room_wire("x")).items] == [a.ingress_id, b.ingress_id]


async def test_update_reads_and_writes_in_one_transaction(tmp_path: Path) -> None:
    """Many read-modify-writes of one ingress at once, each changing its own field:
    none is lost (with a read, then a separate write, the last writer wins)."""
    fields = ("name", "participant_name", "participant_metadata", "participant_identity")
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        await store.create(info(1))

        async def change(field: str, value: str) -> None:
            def set_field(item: pb.IngressInfo) -> pb.IngressInfo:
                setattr(item, field, value)
                return item

            assert await store.update(info(1).ingress_id, set_field) is not None

        for round_ in range(20):
            async with trio.open_nursery() as nursery:
                for field in fields:
                    nursery.start_soon(change, field, f"{field}-{round_}")
            got = await store.get(info(1).ingress_id)
            assert got is not None
            assert {f: getattr(got, f) for f in fields} == {f: f"{f}-{round_}" for f in fields}


async def test_update_keeps_a_state_written_meanwhile_and_follows_rooms(tmp_path: Path
                                                                        ) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        await store.create(info(1, "x"))
        state = pb.IngressState(status=pb.IngressState.ENDPOINT_PUBLISHING, started_at=7)
        assert await store.update_state(info(1).ingress_id, state)
        await store.list_room_wire("x"), await store.list_room_wire("y")  # cache both

        def move(item: pb.IngressInfo) -> pb.IngressInfo:
            assert item.state == state  # it sees the state as stored now
            item.room_name = "y"
            return item

        moved = await store.update(info(1).ingress_id, move)
        assert moved is not None and moved.room_name == "y" and moved.state == state
        assert await store.get(info(1).ingress_id) == moved
        assert not pb.ListIngressResponse.FromString(await store.list_room_wire("x")).items
        assert list(pb.ListIngressResponse.FromString(
            await store.list_room_wire("y")).items) == [moved]
        assert await store.update("IN_missing", move) is None

        def refuse(item: pb.IngressInfo) -> pb.IngressInfo:
            item.name = "half-done"
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            await store.update(info(1).ingress_id, refuse)
        assert await store.get(info(1).ingress_id) == moved  # nothing written


async def test_list_page_walks_every_ingress_once(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "s.sqlite3") as store:
        items = [info(i, "x" if i % 3 else "y") for i in range(25)]
        for item in items:
            await store.create(item)
        for room, expected in ((None, items), ("x", [i for i in items if i.room_name == "x"])):
            seen: list[pb.IngressInfo] = []
            after: int | None = 0
            while after is not None:
                page, after = await store.list_page(room, after, 7)
                assert len(page) <= 7
                seen += page
            assert seen == expected, room
        assert await store.list_page("nobody", 0, 7) == ([], None)
        page, last = await store.list_page(None, 0, 25)  # exactly full: no next page
        assert len(page) == 25 and last is None


async def test_the_store_is_private_to_its_owner(tmp_path: Path) -> None:
    """Stream keys and URL credentials live here: folder 0700, files 0600, also
    when an older store was created more openly."""
    folder = tmp_path / "data"
    folder.mkdir(mode=0o755)
    (folder / "s.sqlite3").touch(mode=0o644)
    (folder / "s.sqlite3").chmod(0o644)
    async with open_sqlite_store(folder / "s.sqlite3") as store:
        await store.create(info(1))
        files = sorted(p.name for p in folder.iterdir())
        assert files == ["s.sqlite3", "s.sqlite3-shm", "s.sqlite3-wal"]
        assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == dict.fromkeys(
            files, 0o600)
    assert folder.stat().st_mode & 0o777 == 0o700
    async with open_sqlite_store(tmp_path / "new" / "s.sqlite3") as store:
        await store.create(info(1))
    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "new").iterdir()} == {0o600}
