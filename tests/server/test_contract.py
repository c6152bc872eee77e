"""The server keeps the documented contract (docs/server-contract.md)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from optisync.server import Change, SqliteStorage, Storage, SyncServer
from tests.server.conftest import Connect, RawDevice, server_process


async def test_a_set_is_pushed_to_every_device_the_writer_included(
    connect_device: Connect,
) -> None:
    writer, reader = await connect_device(1), await connect_device(2)
    await writer.send(
        {"type": "set", "request_id": 5, "key": "like", "value": True, "local_revision": 3}
    )
    own_push, ack = await writer.receive(), await writer.receive()
    other_push = await reader.receive()
    assert own_push == {
        "type": "push",
        "key": "like",
        "value": True,
        "server_revision": 1,
        "local_revision": 3,
        "device_id": 1,
    }
    assert ack == {
        "type": "ack",
        "request_id": 5,
        "key": "like",
        "value": True,
        "server_revision": 1,
    }
    # Another device only learns that the change is not its own.
    assert other_push == {**own_push, "local_revision": 0, "device_id": 0}


async def test_revisions_grow_across_keys(connect_device: Connect) -> None:
    device = await connect_device(1)
    revisions = [(await device.set(key, n))["server_revision"] for n, key in enumerate("abab")]
    assert revisions == [1, 2, 3, 4]


async def test_the_last_write_to_a_key_wins(connect_device: Connect) -> None:
    first, second = await connect_device(1), await connect_device(2)
    await first.set("color", "red")
    await second.set("color", "blue")
    assert (await first.get("color"))["value"] == "blue"
    assert (await first.get("color"))["server_revision"] == 2


async def test_a_get_of_a_key_never_written_has_revision_minus_one(
    connect_device: Connect,
) -> None:
    device = await connect_device(1)
    assert await device.get("nothing") == {
        "type": "value",
        "request_id": 1,
        "key": "nothing",
        "value": None,
        "server_revision": -1,
    }


async def test_a_hello_replays_only_the_changes_after_since(connect_device: Connect) -> None:
    writer = await connect_device(1)
    for n in range(5):
        await writer.set(f"k{n}", n)
    late = await connect_device(2, since=3)
    assert [push["server_revision"] for push in late.replayed] == [4, 5]
    assert late.welcome["server_revision"] == 5
    assert late.welcome["reset"] is False


async def test_a_replay_longer_than_a_page_arrives_whole_and_in_order(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    for n in range(1_234):  # more than two pages of 500
        await server[0].storage.commit(f"k{n}", b"1", local_revision=1, device_id=9)
    device = await connect_device(1)
    assert [push["server_revision"] for push in device.replayed] == list(range(1, 1_235))


async def test_the_ack_comes_after_the_commit_is_on_disk(
    database: Path, connect_device: Connect
) -> None:
    device = await connect_device(1)
    ack = await device.set("saved", {"x": 1})
    with contextlib.closing(sqlite3.connect(database)) as other_reader:
        row = other_reader.execute(
            "SELECT revision, value FROM optisync_changes WHERE key = 'saved'"
        ).fetchone()
    assert row == (ack["server_revision"], b'{"x":1}')


async def test_values_are_stored_in_one_canonical_spelling(connect_device: Connect) -> None:
    device = await connect_device(1)
    await device.send(
        '{"type":"set","request_id":1,"key":"k","value":{"b":1, "a":2},"local_revision":1}'
    )
    await device.receive_type("ack")
    late = await connect_device(2)
    assert late.replayed[0]["value"] == {"a": 2, "b": 1}


async def test_pushes_reach_each_device_in_revision_order_under_concurrent_writers(
    connect_device: Connect,
) -> None:
    writers = [await connect_device(n) for n in range(1, 5)]
    watcher = await connect_device(99)

    async def write(device: RawDevice) -> None:
        for n in range(25):
            await device.set(f"k{n % 3}", n)

    await asyncio.gather(*(write(device) for device in writers))
    revisions = [(await watcher.receive())["server_revision"] for _ in range(100)]
    assert revisions == list(range(1, 101))


def test_the_command_line_serves_a_database_file(tmp_path: Path) -> None:
    database = tmp_path / "app.sqlite3"
    with server_process("--database", str(database)) as (_, url):
        assert asyncio.run(_write_once(url))["server_revision"] == 1
    with contextlib.closing(sqlite3.connect(database)) as reader:
        assert reader.execute("SELECT count(*) FROM optisync_changes").fetchone() == (1,)


async def _write_once(url: str) -> dict[str, object]:
    async with connect(url) as connection:
        device = RawDevice(connection, 1)
        await device.send({"type": "hello", "device_id": 1, "since": 0})
        assert (await device.receive())["type"] == "welcome"
        await device.receive_type("ready")
        return await device.set("k", "v")


# -- exactly once: the storage contract, on SQLite and on PostgreSQL ---------------


class Backend:
    """Opens storages on one database, again and again (a restart), and runs raw SQL."""

    def __init__(self, name: str, where: str) -> None:
        self.name = name
        self.where = where

    def storage(self) -> Storage:
        if self.name == "sqlite":
            return SqliteStorage(self.where)
        from optisync.server.postgres import PostgresStorage

        return PostgresStorage(self.where)

    @contextlib.asynccontextmanager
    async def opened(self) -> AsyncIterator[tuple[Storage, list[int]]]:
        """An open storage and the revisions it hands to its server (``on_commit``)."""
        storage, handed = self.storage(), []
        storage.on_commit = lambda change: handed.append(change.server_revision)
        await storage.open()
        try:
            yield storage, handed
        finally:
            await storage.close()

    async def execute(self, statement: str) -> None:
        if self.name == "sqlite":
            with contextlib.closing(sqlite3.connect(self.where)) as db, db:
                db.execute(statement)
            return
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.where, autocommit=True) as db:
            await db.execute(statement)


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "contract.sqlite3"))
    return Backend("postgres", request.getfixturevalue("postgres_dsn"))


ONCE: dict[str, Any] = {"device_id": 7, "deduplicate": True}


async def test_a_retried_write_returns_its_original_commit_and_commits_nothing(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, handed):
        first = await storage.commit("like", b"true", local_revision=3, **ONCE)
        retry = await storage.commit("like", b"true", local_revision=3, **ONCE)
        assert retry == first
        assert await storage.head() == 1
        assert handed == [1]  # nothing new was handed to the server: no push


async def test_a_retry_gets_the_value_committed_then_not_the_keys_value_now(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        first = await storage.commit("color", b'"red"', local_revision=3, **ONCE)
        await storage.commit("color", b'"blue"', local_revision=1, device_id=8, deduplicate=True)
        retry = await storage.commit("color", b'"red"', local_revision=3, **ONCE)
        assert (
            (retry.server_revision, retry.value)
            == (1, b'"red"')
            == (
                first.server_revision,
                first.value,
            )
        )
        assert await storage.head() == 2


async def test_a_stale_write_returns_the_devices_newest_commit_of_the_key(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, handed):
        await storage.commit("k", b"3", local_revision=3, **ONCE)
        newest = await storage.commit("k", b"4", local_revision=4, **ONCE)
        stale = await storage.commit("k", b"3", local_revision=3, **ONCE)
        older = await storage.commit("k", b"2", local_revision=2, **ONCE)
        assert stale == older == newest
        assert (await storage.read("k")) == newest
        assert handed == [1, 2]


async def test_writes_are_told_apart_by_device_key_and_local_revision(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        await storage.commit("k", b"1", local_revision=1, **ONCE)
        # Local revisions count per key: another key at the same one is new.
        await storage.commit("other", b"1", local_revision=1, **ONCE)
        await storage.commit("k", b"1", local_revision=1, device_id=8, deduplicate=True)
        await storage.commit("k", b"2", local_revision=2, **ONCE)
        assert await storage.head() == 4


async def test_latest_after_pages_each_keys_newest_change_in_revision_order(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        for n, key in enumerate("abcabca", start=1):  # newest: b at 5, c at 6, a at 7
            await storage.commit(key, b"%d" % n, local_revision=10 + n, device_id=7)

        async def latest(revision: int, limit: int) -> list[tuple[str, int]]:
            return [(c.key, c.server_revision) for c in await storage.latest_after(revision, limit)]

        assert await latest(0, 10) == [("b", 5), ("c", 6), ("a", 7)]
        assert (await latest(0, 2), await latest(6, 2), await latest(7, 2)) == (
            [("b", 5), ("c", 6)],
            [("a", 7)],
            [],
        )
        assert await latest(5, 10) == [("c", 6), ("a", 7)]
        # Each carries its own change: value, local revision and writer.
        newest = (await storage.latest_after(6, 1))[0]
        assert newest == Change(7, "a", b"7", local_revision=17, device_id=7)
        assert len(await storage.changes_after(0, 10)) == 7  # the log is whole


async def test_latest_after_narrowed_to_prefixes_keeps_each_keys_newest_in_order(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        # Neighbours of the prefixes in code point order: "a/" < "a/b" < "a0" < "a\u00e9".
        keys = [
            "a/1",
            "b",
            "a0",
            "a/b/2",
            "a/1",
            "a\u00e9/x",
            "ab",
            "\u00e9t\u00e9/1",
            "a/\U0010ffff",
        ]
        for n, key in enumerate(keys, start=1):
            await storage.commit(key, b"%d" % n, local_revision=n, device_id=7)

        async def latest(revision: int, limit: int, prefixes: list[str]) -> list[tuple[str, int]]:
            page = await storage.latest_after(revision, limit, prefixes=prefixes)  # type: ignore[call-arg]
            return [(c.key, c.server_revision) for c in page]

        a_slash = [("a/b/2", 4), ("a/1", 5), ("a/\U0010ffff", 9)]
        assert await latest(0, 10, ["a/"]) == a_slash
        assert await latest(0, 2, ["a/"]) == a_slash[:2]
        assert await latest(5, 10, ["a/"]) == [("a/\U0010ffff", 9)]
        # A prefix another covers adds nothing; several are one page in revision order.
        assert await latest(0, 10, ["a/", "a/b/", "\u00e9t\u00e9/"]) == [
            *a_slash[:2],
            ("\u00e9t\u00e9/1", 8),
            a_slash[2],
        ]
        assert await latest(0, 10, ["a\u00e9"]) == [("a\u00e9/x", 6)]
        assert await latest(0, 10, ["a/\U0010ffff"]) == [("a/\U0010ffff", 9)]
        assert await latest(0, 10, ["a"]) == [
            ("a0", 3),
            ("a/b/2", 4),
            ("a/1", 5),
            ("a\u00e9/x", 6),
            ("ab", 7),
            ("a/\U0010ffff", 9),
        ]
        assert await latest(0, 10, []) == []
        assert len(await latest(0, 10, [""])) == 8  # every key
        assert await latest(0, 10, ["zz"]) == []


async def test_without_deduplicate_every_write_commits(backend: Backend) -> None:
    async with backend.opened() as (storage, _):
        for _ in range(2):
            await storage.commit("k", b"1", local_revision=1, device_id=7)
        assert await storage.head() == 2
        # ... and is not remembered: the first deduplicated write commits.
        await storage.commit("k", b"1", local_revision=1, **ONCE)
        assert await storage.head() == 3


async def test_the_remembered_write_survives_a_restart(backend: Backend) -> None:
    async with backend.opened() as (storage, _):
        first = await storage.commit("k", b"1", local_revision=5, **ONCE)
    async with backend.opened() as (reopened, handed):
        assert await reopened.commit("k", b"1", local_revision=5, **ONCE) == first
        assert await reopened.head() == 1
        assert handed == []


async def test_a_database_made_before_deduplication_gains_its_table_on_open(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        await storage.commit("k", b"1", local_revision=1, device_id=7)
    await backend.execute("DROP TABLE optisync_device_keys")  # as an older version left it
    async with backend.opened() as (storage, _):
        first = await storage.commit("k", b"2", local_revision=2, **ONCE)
        assert await storage.commit("k", b"2", local_revision=2, **ONCE) == first
        assert await storage.head() == 2


async def test_copies_of_one_write_racing_on_two_storages_commit_once(
    backend: Backend,
) -> None:
    async with backend.opened() as (one, _), backend.opened() as (two, _):
        copies = [
            storage.commit(f"k{n}", b"1", local_revision=1, **ONCE)
            for n in range(20)
            for storage in (one, two)
        ]
        changes = await asyncio.gather(*copies)
        assert await one.head() == 20
        assert {change.server_revision for change in changes} == set(range(1, 21))


# -- device identity: claim_device -------------------------------------------------

MINE, THEIRS = hashlib.sha256(b"mine").digest(), hashlib.sha256(b"theirs").digest()


async def test_the_first_secret_binds_a_device_id_and_only_it_proves_it_later(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        assert await storage.claim_device(7, None)  # unbound: an older client may use it
        assert await storage.claim_device(7, MINE)  # binds 7 to MINE
        assert await storage.claim_device(7, MINE)
        assert not await storage.claim_device(7, THEIRS)
        assert not await storage.claim_device(7, None)  # bound: a hello without one is refused
        assert await storage.claim_device(8, THEIRS)  # ids are bound one by one


async def test_a_bound_device_id_stays_bound_across_a_restart(backend: Backend) -> None:
    async with backend.opened() as (storage, _):
        assert await storage.claim_device(7, MINE)
    async with backend.opened() as (reopened, _):
        assert not await reopened.claim_device(7, THEIRS)
        assert await reopened.claim_device(7, MINE)


async def test_two_storages_racing_to_bind_one_id_agree_on_one_secret(
    backend: Backend,
) -> None:
    async with backend.opened() as (one, _), backend.opened() as (two, _):
        for device_id in range(100, 120):
            mine, theirs = await asyncio.gather(
                one.claim_device(device_id, MINE), two.claim_device(device_id, THEIRS)
            )
            assert mine != theirs  # exactly one of the two secrets was bound
            winner = MINE if mine else THEIRS
            assert await one.claim_device(device_id, winner)
            assert await two.claim_device(device_id, winner)


async def test_a_database_made_before_device_secrets_gains_its_table_on_open(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, _):
        await storage.commit("k", b"1", local_revision=1, device_id=7)
    await backend.execute("DROP TABLE optisync_devices")  # as an older version left it
    async with backend.opened() as (storage, _):
        assert await storage.claim_device(7, MINE)
        assert not await storage.claim_device(7, THEIRS)


# -- group commit -----------------------------------------------------------------


async def test_concurrent_writes_each_get_their_own_revision_handed_over_in_order(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, handed):

        async def write(n: int) -> Change:
            change = await storage.commit(f"k{n % 7}", b"%d" % n, local_revision=n, device_id=1)
            assert change.server_revision in handed  # handed to the server before the ack
            return change

        changes = await asyncio.gather(*(write(n) for n in range(1, 101)))
        assert sorted(change.server_revision for change in changes) == list(range(1, 101))
        assert handed == list(range(1, 101))
        assert all(change.value == b"%d" % change.local_revision for change in changes)
        newest: dict[str, Change] = {}
        for change in sorted(changes, key=lambda c: c.server_revision):
            newest[change.key] = change
        assert {c.key: c for c in await storage.latest_after(0, 100)} == newest


async def test_a_batch_with_copies_and_stale_writes_commits_each_write_once(
    backend: Backend,
) -> None:
    async with backend.opened() as (storage, handed):
        writes = [(5, b"5"), (5, b"5"), (3, b"3"), (6, b"6"), (6, b"6"), (4, b"4")]
        changes = await asyncio.gather(
            *(storage.commit("k", value, local_revision=lr, **ONCE) for lr, value in writes)
        )
        # In arrival order: 5 commits, its copy and the stale 3 get it, 6 commits, ...
        assert [c.local_revision for c in changes] == [5, 5, 5, 6, 6, 6]
        assert await storage.head() == 2
        assert handed == [1, 2]
