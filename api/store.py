"""Where ingresses live: a small storage interface and its SQLite implementation.

Callers (the control API, and the ingest sessions through relay's local control
plane) see only `IngressStore`.

Config and state are kept apart: `put()` writes what a user configured and never
touches the state, `update_state()` writes the state and never touches the config.
`update()` (UpdateIngress) reads and writes both in one transaction, so neither a
concurrent UpdateIngress nor a session's state written meanwhile is lost.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from livekit.protocol import ingress as pb


class StoreConflict(Exception):
    """The ingress id or the stream key is already taken."""


class IngressStore(Protocol):
    async def create(self, info: pb.IngressInfo) -> None:
        """Insert a new ingress; StoreConflict if its id or stream key exists."""

    async def get(self, ingress_id: str) -> pb.IngressInfo | None: ...

    async def get_by_stream_key(self, stream_key: str) -> pb.IngressInfo | None: ...

    async def list(self, room_name: str | None = None) -> list[pb.IngressInfo]:
        """All ingresses, or those of one room, oldest first."""

    async def list_room_wire(self, room_name: str) -> bytes:
        """The room's ingresses, oldest first, as the protobuf wire bytes of
        ListIngressResponse: what ListIngress by room answers, without decoding and
        re-encoding every item on each call."""

    async def put(self, info: pb.IngressInfo) -> bool:
        """Replace the configuration of an existing ingress (its state is kept).

        False when the ingress no longer exists.
        """

    async def update(self, ingress_id: str,
                     change: Callable[[pb.IngressInfo], pb.IngressInfo]
                     ) -> pb.IngressInfo | None:
        """Read-modify-write as one transaction (UpdateIngress): `change` gets the
        stored ingress (config and state) and returns it as it is to be stored; no
        other write of the ingress can come between the read and the write. An
        exception from `change` writes nothing and is raised to the caller. None
        when the ingress does not exist.
        """

    async def list_page(self, room_name: str | None, after: int, limit: int
                        ) -> tuple[list[pb.IngressInfo], int | None]:
        """Up to `limit` ingresses (of one room, or all) created after the cursor
        `after` (0: from the first), oldest first, and the cursor of the last one
        returned if more follow, else None."""

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> bool:
        """Replace the state unless it is older (smaller started_at) than the stored one.

        False when refused or when the ingress no longer exists.
        """

    async def delete(self, ingress_id: str) -> pb.IngressInfo | None:
        """Remove and return the ingress, None if it did not exist."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingress (
    ingress_id TEXT PRIMARY KEY,
    stream_key TEXT UNIQUE,
    room_name  TEXT NOT NULL,
    created    INTEGER NOT NULL,
    started_at INTEGER NOT NULL,
    info       BLOB NOT NULL,
    state      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS ingress_by_room ON ingress (room_name, created);
CREATE INDEX IF NOT EXISTS ingress_by_created ON ingress (created);
"""

_COLUMNS = "info, state"
_BATCH = 512
_CACHED_ROOMS = 1024
_STATE_FIELD = pb.IngressInfo.DESCRIPTOR.fields_by_name["state"].number
_ITEMS_FIELD = pb.ListIngressResponse.DESCRIPTOR.fields_by_name["items"].number


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def _merge(row: tuple[bytes, bytes]) -> pb.IngressInfo:
    info = pb.IngressInfo.FromString(row[0])
    info.state.ParseFromString(row[1])
    return info


def _length_delimited(number: int, data: bytes) -> bytes:
    """One protobuf field of wire type 2 (a message or bytes): tag, length, data."""
    out = bytearray()
    for value in (number << 3 | 2, len(data)):
        while value > 0x7F:
            out.append(value & 0x7F | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + data


def _wire_item(row: tuple[bytes, bytes]) -> bytes:
    """A ListIngressResponse item from a row, by concatenation: the config blob has no
    state field, and a message followed by a field is that message with the field."""
    config, state = row
    return _length_delimited(_ITEMS_FIELD, config + _length_delimited(_STATE_FIELD, state))


def _split(info: pb.IngressInfo) -> tuple[bytes, bytes]:
    """Config blob (state cleared) and state blob."""
    config = pb.IngressInfo()
    config.CopyFrom(info)
    config.ClearField("state")
    return config.SerializeToString(), info.state.SerializeToString()


@dataclass
class _Write:
    apply: Callable[[sqlite3.Connection], Any]
    # rooms and ingresses whose cached lists it invalidates; `apply` may add to them
    rooms: Sequence[str] = ()
    ingress_ids: Sequence[str] = ()
    done: trio.Event = field(default_factory=trio.Event)
    value: Any = None
    error: BaseException | None = None


class SqliteIngressStore:
    """SQLite in WAL mode with `synchronous=FULL`: an acknowledged write is on disk.

    Every write goes through one writer task that commits whatever writes are
    waiting in a single transaction (group commit): one fsync serves many
    concurrent API calls, which is what lets durable creates reach thousands per
    second. Reads run in worker threads on their own connections, which WAL lets
    proceed while a write commits.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        # ListIngress-by-room answers, kept until a write touches the room. Filled by
        # inline reads and emptied by the writer task after each commit, both on the
        # event loop: a read racing a commit may cache the old rows, and the
        # invalidation after that commit removes them.
        self._room_wire: dict[str, tuple[bytes, list[str]]] = {}  # room -> (wire, ids)
        self._room_of: dict[str, str] = {}  # ingress id -> room, for cached rooms
        self._send, self._receive = trio.open_memory_channel[_Write](_BATCH * 4)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._writer = _connect(path)
        self._writer.execute("PRAGMA journal_mode = WAL")
        self._writer.execute("PRAGMA synchronous = FULL")
        self._writer.executescript(_SCHEMA)

    # -- plumbing -------------------------------------------------------------------

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        task_status.started()
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < _BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await trio.to_thread.run_sync(self._commit, batch)
                for write in batch:
                    for room in write.rooms:
                        self._forget_room(room)
                    for ingress_id in write.ingress_ids:
                        room = self._room_of.get(ingress_id)
                        if room is not None:
                            self._forget_room(room)
                    write.done.set()

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._writer
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in batch:
                conn.execute("SAVEPOINT w")
                try:
                    write.value = write.apply(conn)
                except Exception as exc:  # this write only: its caller gets the error
                    write.error = exc
                    conn.execute("ROLLBACK TO w")
                conn.execute("RELEASE w")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for write in batch:
                write.error = exc

    async def _write(self, apply: Callable[[sqlite3.Connection], Any],
                     rooms: Sequence[str] = (), ingress_ids: Sequence[str] = ()) -> Any:
        write = _Write(apply, rooms, ingress_ids)
        await self._send.send(write)
        await write.done.wait()
        if write.error is not None:
            raise write.error
        return write.value

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self._path)
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, sql: str, args: tuple[Any, ...], *, in_thread: bool = False
                    ) -> list[pb.IngressInfo]:
        """Run a read query. Index lookups of a few rows come from SQLite's page cache
        in microseconds, less than a hop to a worker thread costs, so they run
        inline; unbounded scans (`in_thread`) go to a worker thread so the event
        loop never waits on them."""

        def run() -> list[pb.IngressInfo]:
            rows = self._reader().execute(sql, args).fetchall()
            return [_merge(row) for row in rows]

        if in_thread:
            return await trio.to_thread.run_sync(run)
        await trio.lowlevel.checkpoint()
        return run()

    def _forget_room(self, room: str) -> None:
        _, ingress_ids = self._room_wire.pop(room, (b"", []))
        for ingress_id in ingress_ids:
            if self._room_of.get(ingress_id) == room:
                del self._room_of[ingress_id]

    def close(self) -> None:
        self._writer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- IngressStore ---------------------------------------------------------------

    async def create(self, info: pb.IngressInfo) -> None:
        config, state = _split(info)

        def apply(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO ingress (ingress_id, stream_key, room_name, created, started_at,"
                    " info, state) VALUES (?, ?, ?, (SELECT coalesce(max(created), 0) + 1"
                    " FROM ingress), ?, ?, ?)",
                    (info.ingress_id, info.stream_key or None, info.room_name,
                     info.state.started_at, config, state),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreConflict(str(exc)) from None

        await self._write(apply, rooms=(info.room_name,))

    async def get(self, ingress_id: str) -> pb.IngressInfo | None:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM ingress WHERE ingress_id = ?", (ingress_id,))
        return rows[0] if rows else None

    async def get_by_stream_key(self, stream_key: str) -> pb.IngressInfo | None:
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM ingress WHERE stream_key = ?", (stream_key,))
        return rows[0] if rows else None

    async def list(self, room_name: str | None = None) -> list[pb.IngressInfo]:
        if room_name is None:
            return await self._read(f"SELECT {_COLUMNS} FROM ingress ORDER BY created", (),
                                    in_thread=True)
        return await self._read(
            f"SELECT {_COLUMNS} FROM ingress WHERE room_name = ? ORDER BY created", (room_name,))

    async def list_room_wire(self, room_name: str) -> bytes:
        await trio.lowlevel.checkpoint()
        cached = self._room_wire.get(room_name)
        if cached is not None:
            return cached[0]
        cur = self._reader().execute(
            f"SELECT ingress_id, {_COLUMNS} FROM ingress WHERE room_name = ? ORDER BY created",
            (room_name,))
        rows = cur.fetchall()
        wire = b"".join(_wire_item((config, state)) for _, config, state in rows)
        if len(self._room_wire) >= _CACHED_ROOMS:
            self._forget_room(next(iter(self._room_wire)))
        ingress_ids = [row[0] for row in rows]
        self._room_wire[room_name] = (wire, ingress_ids)
        for ingress_id in ingress_ids:
            self._room_of[ingress_id] = room_name
        return wire

    async def put(self, info: pb.IngressInfo) -> bool:
        config, _ = _split(info)

        def apply(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE ingress SET room_name = ?, info = ? WHERE ingress_id = ?",
                (info.room_name, config, info.ingress_id),
            )
            return cur.rowcount == 1

        return await self._write(apply, rooms=(info.room_name,), ingress_ids=(info.ingress_id,))

    async def update(self, ingress_id: str,
                     change: Callable[[pb.IngressInfo], pb.IngressInfo]
                     ) -> pb.IngressInfo | None:
        # Atomic because every write runs on the one writer connection, in order, each
        # in a transaction (BEGIN IMMEDIATE, then a savepoint of its own): nothing
        # else writes between this SELECT and this UPDATE.
        rooms: list[str] = []

        def apply(conn: sqlite3.Connection) -> pb.IngressInfo | None:
            row = conn.execute(f"SELECT {_COLUMNS} FROM ingress WHERE ingress_id = ?",
                               (ingress_id,)).fetchone()
            if row is None:
                return None
            info = change(_merge(row))
            config, state = _split(info)
            conn.execute(
                "UPDATE ingress SET room_name = ?, info = ?, state = ?, started_at = ?"
                " WHERE ingress_id = ?",
                (info.room_name, config, state, info.state.started_at, ingress_id))
            rooms.append(info.room_name)  # the new room's cached list (the old one's
            return info                   # goes with the ingress id)

        return await self._write(apply, rooms=rooms, ingress_ids=(ingress_id,))

    async def list_page(self, room_name: str | None, after: int, limit: int
                        ) -> tuple[list[pb.IngressInfo], int | None]:
        where, args = ("created > ?", (after,)) if room_name is None else (
            "room_name = ? AND created > ?", (room_name, after))

        def run() -> list[tuple[int, bytes, bytes]]:
            return self._reader().execute(
                f"SELECT created, {_COLUMNS} FROM ingress WHERE {where} ORDER BY created"
                " LIMIT ?", (*args, limit + 1)).fetchall()

        rows = await trio.to_thread.run_sync(run)
        more = len(rows) > limit
        rows = rows[:limit]
        return ([_merge((config, state)) for _, config, state in rows],
                rows[-1][0] if more else None)

    async def update_state(self, ingress_id: str, state: pb.IngressState) -> bool:
        blob = state.SerializeToString()

        def apply(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE ingress SET state = ?, started_at = ?"
                " WHERE ingress_id = ? AND started_at <= ?",
                (blob, state.started_at, ingress_id, state.started_at),
            )
            return cur.rowcount == 1

        return await self._write(apply, ingress_ids=(ingress_id,))

    async def delete(self, ingress_id: str) -> pb.IngressInfo | None:
        def apply(conn: sqlite3.Connection) -> pb.IngressInfo | None:
            row = conn.execute(
                f"DELETE FROM ingress WHERE ingress_id = ? RETURNING {_COLUMNS}", (ingress_id,)
            ).fetchone()
            return _merge(row) if row else None

        return await self._write(apply, ingress_ids=(ingress_id,))


def _private_files(path: Path) -> None:
    """The store holds every stream key and URL credentials: its folder is the
    owner's alone (0700) and its files are 0600. SQLite gives the -wal and -shm
    files the permissions of the database file, so creating that one first is
    enough; an existing store is tightened."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm"))):
        if file.exists():
            file.chmod(0o600)


@asynccontextmanager
async def open_sqlite_store(path: Path) -> AsyncIterator[SqliteIngressStore]:
    """Open (creating if needed) the store at `path`, with its writer task running.

    An exception from the caller's block comes out as itself, not wrapped in the
    writer nursery's ExceptionGroup.
    """
    await trio.to_thread.run_sync(_private_files, path)
    store = await trio.to_thread.run_sync(SqliteIngressStore, path)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run_writer)
            try:
                yield store
            finally:
                store._send.close()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:  # the caller's own exception, unwrapped
            raise group.exceptions[0] from None
        raise
    finally:
        store.close()
