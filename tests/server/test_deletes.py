"""Deletes on the wire and in the storages: tombstones, last write wins, replay, compaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from optisync.server import Change, CompactingStorage, Grant, SqliteStorage, SyncServer
from optisync.wire import (
    Committed,
    Delete,
    Hello,
    Push,
    Value,
    decode_client,
    decode_server,
    encode,
    entry_digest,
)
from tests.server.conftest import Connect, RawDevice, open_raw_device
from tests.server.test_contract import Backend


async def delete(device: RawDevice, key: str, local_revision: int = 1, **extra: Any) -> None:
    device._next_id += 1
    await device.send(
        {
            "type": "delete",
            "request_id": device._next_id,
            "key": key,
            "local_revision": local_revision,
            **extra,
        }
    )


async def deleted(device: RawDevice, key: str, local_revision: int = 1, **extra: Any) -> Any:
    await delete(device, key, local_revision, **extra)
    return await device.receive_type("ack")


# -- the messages ----------------------------------------------------------------------


def test_a_delete_frame_decodes_and_the_deleted_field_is_left_out_until_true() -> None:
    frame = b'{"type":"delete","request_id":3,"key":"todo/milk","local_revision":2,"device_id":7}'
    assert decode_client(frame) == Delete(3, "todo/milk", 2, 7)
    # An older peer never sees "deleted" unless a delete happened.
    assert b"deleted" not in encode(Committed(1, "k", 1, 2))
    assert b"deleted" not in encode(Push("k", 1, 2, 0, 0))
    assert b"deleted" not in encode(Value(1, "k", 1, 2))


def test_a_delete_with_a_value_is_refused_as_an_unknown_field() -> None:
    frame = b'{"type":"delete","request_id":3,"key":"k","local_revision":2,"value":1}'
    with pytest.raises(Exception, match="unknown_field"):
        decode_client(frame)


async def test_a_delete_is_acked_and_pushed_as_a_tombstone_to_every_device(
    connect_device: Connect,
) -> None:
    writer, reader = await connect_device(1), await connect_device(2)
    await writer.set("todo/milk", True)
    await reader.receive_type("push")
    await delete(writer, "todo/milk", local_revision=2, device_id=1)
    own_push, ack = await writer.receive_type("push"), await writer.receive_type("ack")
    assert own_push == {
        "type": "push",
        "key": "todo/milk",
        "value": None,
        "server_revision": 2,
        "local_revision": 2,
        "device_id": 1,
        "deleted": True,
    }
    assert ack == {
        "type": "ack",
        "request_id": 2,
        "key": "todo/milk",
        "value": None,
        "server_revision": 2,
        "deleted": True,
    }
    assert await reader.receive() == {**own_push, "local_revision": 0, "device_id": 0}


async def test_a_get_of_a_deleted_key_says_deleted_with_the_revision_of_the_delete(
    connect_device: Connect,
) -> None:
    device = await connect_device(1)
    await device.set("k", "v")
    await deleted(device, "k", local_revision=2)
    assert await device.get("k") == {
        "type": "value",
        "request_id": 3,
        "key": "k",
        "value": None,
        "server_revision": 2,
        "deleted": True,
    }


async def test_last_write_wins_between_a_delete_and_a_set(connect_device: Connect) -> None:
    one, two = await connect_device(1), await connect_device(2)
    await one.set("k", "first")
    await deleted(two, "k")
    assert (await one.get("k"))["deleted"] is True
    await one.set("k", "again", local_revision=2)  # a set after the delete brings it back
    answer = await one.get("k")
    assert (answer["value"], answer["server_revision"], "deleted" in answer) == ("again", 3, False)
    await deleted(two, "k", local_revision=2)
    assert (await one.get("k"))["server_revision"] == 4


async def _own_keys_only(hello: Hello) -> Grant:
    prefix = f"user{hello.device_id}:"
    return Grant(f"user{hello.device_id}", can_write=lambda key: key.startswith(prefix))


@pytest.mark.parametrize("authenticate", [_own_keys_only])
async def test_a_delete_needs_write_permission(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    owner, other = await connect_device(1), await connect_device(2)
    await owner.set("user1:color", "red")
    await delete(other, "user1:color")
    assert (await other.receive_type("error"))["code"] == "forbidden"
    assert (await other.get("user1:color"))["value"] == "red"
    assert await server[0].storage.head() == 1


async def test_a_delete_naming_another_device_is_refused(connect_device: Connect) -> None:
    device = await connect_device(1)
    await device.set("k", 1)
    await delete(device, "k", device_id=2)
    assert (await device.receive_type("error"))["code"] == "forbidden"


async def test_a_retried_delete_gets_its_first_ack_and_commits_nothing(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(1)
    await device.set("k", 1)
    first = await deleted(device, "k", local_revision=5, device_id=1)
    retry = await deleted(device, "k", local_revision=5, device_id=1)
    assert {**retry, "request_id": 0} == {**first, "request_id": 0}
    assert await server[0].storage.head() == 2


async def test_a_device_offline_during_a_delete_gets_the_tombstone_in_its_replay(
    connect_device: Connect,
) -> None:
    writer = await connect_device(1)
    await writer.set("todo/milk", True)
    await writer.set("todo/eggs", False)
    await deleted(writer, "todo/milk", local_revision=2)
    late = await connect_device(2, since=2)  # saw both sets, then went offline
    assert late.replayed == [
        {
            "type": "push",
            "key": "todo/milk",
            "value": None,
            "server_revision": 3,
            "local_revision": 0,
            "device_id": 0,
            "deleted": True,
        }
    ]
    fresh = await connect_device(3)  # a new device gets the tombstone too: it is the newest
    assert [(p["key"], p.get("deleted", False)) for p in fresh.replayed] == [
        ("todo/eggs", False),
        ("todo/milk", True),
    ]


# -- compaction on a server ----------------------------------------------------------------


async def test_compaction_resets_a_device_at_or_below_the_horizon_and_no_other(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    writer = await connect_device(1)
    await writer.set("a", 1)  # 1
    await writer.set("b", 2)  # 2
    await deleted(writer, "a", local_revision=2)  # 3
    await writer.set("c", 3)  # 4
    storage: CompactingStorage = server[0].storage  # type: ignore[assignment]
    assert await storage.compact(3) == 1
    older = await connect_device(2, since=2, generation=writer.welcome["generation"])
    assert (older.welcome["reset"], older.welcome.get("compacted")) == (True, True)
    # It replays from 0: the live keys, and no trace of "a".
    assert [p["key"] for p in older.replayed] == ["b", "c"]
    newer = await connect_device(3, since=4, generation=writer.welcome["generation"])
    assert (newer.welcome["reset"], "compacted" in newer.welcome) == (False, False)
    fresh = await connect_device(4)
    assert (fresh.welcome["reset"], [p["key"] for p in fresh.replayed]) == (False, ["b", "c"])


# -- the storage contract, on SQLite and on PostgreSQL -------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "contract.sqlite3"))
    return Backend("postgres", request.getfixturevalue("postgres_dsn"))


async def test_a_tombstone_is_a_keys_newest_change_until_it_is_set_again(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, handed):
        await storage.commit("a", b"1", local_revision=1, device_id=7)
        tombstone = await storage.commit("a", b"", local_revision=2, device_id=7)
        assert tombstone == Change(2, "a", b"", 2, 7)
        assert tombstone.deleted
        assert await storage.read("a") == tombstone
        assert await storage.latest_after(0, 10) == [tombstone]
        await storage.commit("a", b"3", local_revision=3, device_id=7)
        assert [c.deleted for c in await storage.latest_after(0, 10)] == [False]
        assert handed == [1, 2, 3]


async def test_a_retried_delete_is_deduplicated_like_a_set(backend: Backend) -> None:
    async with backend.opened() as (storage, handed):
        once = {"local_revision": 4, "device_id": 7, "deduplicate": True}
        first = await storage.commit("a", b"", **once)
        assert await storage.commit("a", b"", **once) == first
        assert handed == [1]


async def test_compaction_drops_tombstones_at_or_below_the_horizon_and_keeps_it(
    backend: Backend,
) -> None:
    async with backend.opened() as (opened, _):
        storage: CompactingStorage = opened  # type: ignore[assignment]
        once = {"device_id": 7, "deduplicate": True}
        await storage.commit("a", b"1", local_revision=1, **once)  # 1
        await storage.commit("a", b"", local_revision=2, **once)  # 2: a deleted
        await storage.commit("b", b"", local_revision=1, **once)  # 3: b deleted
        await storage.commit("c", b"1", local_revision=1, **once)  # 4
        await storage.commit("d", b"", local_revision=1, **once)  # 5: above the horizon
        assert await storage.horizon() == 0
        assert await storage.compact(4) == 2
        assert (await storage.read("a"), await storage.read("b")) == (None, None)
        assert [c.key for c in await storage.latest_after(0, 10)] == ["c", "d"]
        assert [c.server_revision for c in await storage.changes_after(0, 10)] == [1, 4, 5]
        assert (await storage.horizon(), await storage.head()) == (4, 5)
        # The horizon never goes back, and never passes the head.
        assert await storage.compact(1) == 0
        assert await storage.horizon() == 4
        assert await storage.compact(99) == 1
        assert (await storage.horizon(), await storage.head()) == (5, 5)
        # Revisions go on from the head, dropped rows or not.
        assert (await storage.commit("e", b"1", local_revision=1, device_id=7)).server_revision == 6
    async with backend.opened() as (reopened, _):
        assert await reopened.horizon() == 5  # type: ignore[attr-defined]
        # The dropped delete is forgotten as a retry: it commits again.
        again = await reopened.commit("a", b"", local_revision=2, **once)
        assert again.server_revision == 7


# -- the command line ------------------------------------------------------------------------


def test_the_compact_command_keeps_the_newest_revisions_tombstones(tmp_path: Path) -> None:
    database = tmp_path / "app.sqlite3"

    async def fill() -> None:
        from optisync.server import SqliteStorage

        async with SqliteStorage(database) as storage:
            for n, key in enumerate("abcd", start=1):
                await storage.commit(
                    key, b"" if key in "ad" else b"1", local_revision=n, device_id=1
                )

    asyncio.run(fill())
    command = [sys.executable, "-m", "optisync.server", "compact", "--database", str(database)]
    done = subprocess.run([*command, "--keep", "1"], capture_output=True, text=True, check=True)
    assert done.stdout == "dropped 1 tombstones; the horizon is revision 3\n"
    with contextlib.closing(sqlite3.connect(database)) as reader:
        keys = reader.execute("SELECT key FROM optisync_keys ORDER BY key").fetchall()
    assert keys == [("b",), ("c",), ("d",)]
    refused = subprocess.run([*command, "--through", "-1"], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "0 or more" in refused.stderr


async def test_a_device_whose_cursor_is_a_tombstone_resumes_without_a_reset(
    connect_device: Connect,
) -> None:
    writer, reader = await connect_device(1), await connect_device(2)
    await writer.set("k", 1)
    await deleted(writer, "k", local_revision=2)
    await reader.receive_type("push")
    tombstone = await reader.receive_type("push")
    digest = entry_digest(decode_server(json.dumps(tombstone)))
    assert digest != entry_digest(Push("k", None, 2, 0, 0))  # not a set of null
    generation = reader.welcome["generation"]
    back = await connect_device(3, since=2, generation=generation, digest=digest)
    assert (back.welcome["reset"], back.replayed) == (False, [])
    wrong = entry_digest(Push("k", None, 2, 0, 0))
    restored = await connect_device(4, since=2, generation=generation, digest=wrong)
    assert restored.welcome["reset"] is True


class CompactsDuringTheFirstReplayPage(SqliteStorage):
    """Runs a compaction right after the first replay page is read: the race, on purpose."""

    through = 0

    async def latest_after(self, revision: int, limit: int) -> list[Change]:
        page = await super().latest_after(revision, limit)
        if self.through:
            through, self.through = self.through, 0
            await self.compact(through)
        return page


async def test_a_compaction_during_a_replay_cuts_it_and_the_device_reloads(
    tmp_path: Path,
) -> None:
    storage = CompactsDuringTheFirstReplayPage(tmp_path / "server.sqlite3")
    async with SyncServer(storage).run(port=0) as url:
        writer = await open_raw_device(url, 1)
        await writer.set("a", 1)  # 1
        await deleted(writer, "a", local_revision=2)  # 2
        await writer.set("b", 2)  # 3
        storage.through = 2
        generation = writer.welcome["generation"]
        late = RawDevice(await connect(url), 2)
        await late.send({"type": "hello", "device_id": 2, "since": 1, "generation": generation})
        assert (await late.receive())["reset"] is False  # the horizon was 0 at its hello
        # Its page was read before the compaction: not sent (it could lack the tombstone).
        with pytest.raises(ConnectionClosed) as closed:
            await late.receive()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1013
        again = RawDevice(await connect(url), 2)
        await again.send({"type": "hello", "device_id": 2, "since": 1, "generation": generation})
        again.welcome = await again.receive()
        again.replayed = [await again.receive()]
        assert (await again.receive())["type"] == "ready"
        assert (again.welcome["reset"], again.welcome["compacted"]) == (True, True)
        assert [p["key"] for p in again.replayed] == ["b"]
        await writer.connection.close()
        await again.connection.close()
