"""The PostgreSQL storage, on a real server (skipped without $OPTISYNC_TEST_POSTGRES_DSN)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from websockets.exceptions import ConnectionClosed

import optisync.server.postgres as postgres_module
from optisync import AlreadyOpenError
from optisync.server import Change, SqliteStorage, SyncServer
from optisync.server.postgres import PostgresStorage
from tests.server.conftest import RawDevice, open_raw_device, server_process

SET = {"type": "set", "key": "k", "local_revision": 1}


class Seen:
    """The changes one storage handed to its server, and an event per revision count."""

    def __init__(self, storage: PostgresStorage) -> None:
        self.revisions: list[int] = []
        self._waiters: dict[int, asyncio.Event] = {}
        storage.on_commit = self.record

    def record(self, change: Change) -> None:
        self.revisions.append(change.server_revision)
        for revision, event in self._waiters.items():
            if change.server_revision >= revision:
                event.set()

    async def reach(self, revision: int) -> None:
        if self.revisions and self.revisions[-1] >= revision:
            return
        await self._waiters.setdefault(revision, asyncio.Event()).wait()


async def test_two_processes_commit_gap_free_revisions_and_each_sees_all_in_order(
    postgres_dsn: str,
) -> None:
    async with PostgresStorage(postgres_dsn) as one, PostgresStorage(postgres_dsn) as two:
        seen_one, seen_two = Seen(one), Seen(two)

        async def write(storage: PostgresStorage, device_id: int) -> list[int]:
            revisions = []
            for n in range(20):
                change = await storage.commit(
                    f"k{n % 3}", b"%d" % n, local_revision=n, device_id=device_id
                )
                revisions.append(change.server_revision)
            return revisions

        first, second = await asyncio.gather(write(one, 1), write(two, 2))
        assert sorted(first + second) == list(range(1, 41))
        await seen_one.reach(40)
        await seen_two.reach(40)
        assert seen_one.revisions == seen_two.revisions == list(range(1, 41))


async def test_both_processes_share_one_generation_and_one_value_per_key(
    postgres_dsn: str,
) -> None:
    async with PostgresStorage(postgres_dsn) as one, PostgresStorage(postgres_dsn) as two:
        await one.commit("color", b'"red"', local_revision=1, device_id=1)
        await two.commit("color", b'"blue"', local_revision=1, device_id=2)
        assert one.generation == two.generation
        read = await one.read("color")
        assert read is not None
        assert (read.value, read.server_revision) == (b'"blue"', 2)


async def test_after_a_listen_connection_drops_the_log_after_the_last_seen_is_reread(
    postgres_dsn: str,
) -> None:
    async with PostgresStorage(postgres_dsn) as deaf, PostgresStorage(postgres_dsn) as writer:
        seen = Seen(deaf)
        async with _admin(postgres_dsn) as admin, _refusing_connections(postgres_dsn):
            # The listener cannot come back until the writes below are done:
            # their notifications are lost for good, only a re-read finds them.
            await _terminate(admin, "application_name = 'optisync-listen'")
            for n in range(3):
                await writer.commit("k", b"%d" % n, local_revision=n, device_id=2)
            assert seen.revisions == []
        await seen.reach(3)
        assert seen.revisions == [1, 2, 3]
        assert deaf.reconnects >= 1


# -- a batch in one statement ---------------------------------------------------------


@pytest.fixture
def batch_paths(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """Each batch PostgresStorage commits: its size, and whether it went in one statement."""
    paths: list[tuple[int, bool]] = []
    together = postgres_module._each_device_key_once

    def recording(batch: list[Any]) -> bool:
        paths.append((len(batch), together(batch)))
        return paths[-1][1]

    monkeypatch.setattr(postgres_module, "_each_device_key_once", recording)
    return paths


async def test_one_statement_commits_new_writes_and_answers_retried_and_stale_ones(
    postgres_dsn: str, batch_paths: list[tuple[int, bool]]
) -> None:
    once: dict[str, Any] = {"deduplicate": True}
    async with PostgresStorage(postgres_dsn) as storage:
        handed: list[int] = []
        storage.on_commit = lambda change: handed.append(change.server_revision)
        first = await storage.commit("a", b"1", local_revision=5, device_id=1, **once)
        await storage.commit("b", b"1", local_revision=2, device_id=1, **once)
        batch_paths.clear()
        changes = await asyncio.gather(
            storage.commit("a", b"1", local_revision=5, device_id=1, **once),  # a retry
            storage.commit("b", b"", local_revision=3, device_id=1, **once),  # a delete: 3
            storage.commit("c", b"1", local_revision=1, device_id=3),  # not remembered: 4
            storage.commit("a", b"2", local_revision=1, device_id=2, **once),  # 5
            storage.commit("b", b"3", local_revision=4, device_id=2, **once),  # 6
            storage.commit("c", b"2", local_revision=2, device_id=2, **once),  # 7
            storage.commit("d", b"1", local_revision=9, device_id=3, **once),  # stale: 8
        )
        assert batch_paths == [(7, True)]  # one batch, in one statement
        assert changes[0] == first
        assert [c.server_revision for c in changes[1:]] == [3, 4, 5, 6, 7, 8]
        assert changes[1] == Change(3, "b", b"", 3, 1)
        assert handed == list(range(1, 9))  # each new change once, in order
        # Each key holds its newest write; each device its newest write of a key.
        assert [(c.key, c.server_revision) for c in await storage.latest_after(0, 10)] == [
            ("a", 5),
            ("b", 6),
            ("c", 7),
            ("d", 8),
        ]
        assert await storage.commit("b", b"1", local_revision=2, device_id=1, **once) == changes[1]
        assert await storage.commit("d", b"0", local_revision=8, device_id=3, **once) == changes[6]
        assert await storage.head() == 8


async def test_random_batches_commit_as_sqlite_commits_them_one_by_one(
    postgres_dsn: str, batch_paths: list[tuple[int, bool]]
) -> None:
    """Copies, stale writes, deletes and shared keys in one batch: the same answers as SQLite."""
    draw = random.Random(19)
    async with PostgresStorage(postgres_dsn) as tested, SqliteStorage(":memory:") as model:
        handed: dict[str, list[Change]] = {"tested": [], "model": []}
        tested.on_commit = handed["tested"].append
        model.on_commit = handed["model"].append
        for _ in range(40):
            batch = [
                {
                    "key": draw.choice("abc"),
                    "value": draw.choice([b"", b"1", b"2"]),  # b"": a delete
                    "local_revision": draw.randint(1, 6),
                    "device_id": draw.randint(1, 3),
                    "deduplicate": draw.random() < 0.8,
                }
                for _ in range(draw.randint(1, 8))
            ]
            got, expected = await asyncio.gather(
                asyncio.gather(*(tested.commit(**write) for write in batch)),
                asyncio.gather(*(model.commit(**write) for write in batch)),
            )
            assert got == expected
        assert handed["tested"] == handed["model"]
        assert await tested.latest_after(0, 100) == await model.latest_after(0, 100)
    # Both ways of committing a batch were taken, with several writes each.
    assert {together for size, together in batch_paths if size > 1} == {True, False}


async def test_keys_and_values_of_any_characters_and_bytes_commit_in_one_statement(
    postgres_dsn: str, batch_paths: list[tuple[int, bool]]
) -> None:
    keys = ['a,"b"', "{c}", "d\\e", "NULL", "", " f ", "\u00e9t\u00e9/\U0010ffff"]
    values = [bytes(range(256)), b"", b'"{,}"\\', b"\x00", b"NULL", b"x" * 10_000, b"\xff"]
    async with PostgresStorage(postgres_dsn) as storage:
        changes = await asyncio.gather(
            *(
                storage.commit(key, value, local_revision=1, device_id=1, deduplicate=True)
                for key, value in zip(keys, values, strict=True)
            )
        )
        assert batch_paths == [(7, True)]
        assert [(c.key, c.value) for c in changes] == list(zip(keys, values, strict=True))
        assert [(c.key, c.value) for c in await storage.changes_after(0, 10)] == list(
            zip(keys, values, strict=True)
        )
        for key, value in zip(keys, values, strict=True):  # each remembered, byte for byte
            retried = await storage.commit(
                key, b"?", local_revision=1, device_id=1, deduplicate=True
            )
            assert retried.value == value


async def test_copies_of_one_write_queued_on_the_counter_in_two_processes_commit_once(
    postgres_dsn: str,
) -> None:
    async with (
        PostgresStorage(postgres_dsn) as one,
        PostgresStorage(postgres_dsn) as two,
        _admin(postgres_dsn) as admin,
    ):
        async with _holding(postgres_dsn, "SELECT 1 FROM optisync_head FOR UPDATE"):
            copies = [
                asyncio.ensure_future(
                    storage.commit("k", b"1", local_revision=1, device_id=7, deduplicate=True)
                )
                for storage in (one, two)
            ]
            # Both batches wait on the counter's lock, their checks not yet made.
            while len(await _pids(admin, WAITING_ON_A_LOCK % "optisync-commits")) < 2:
                pass  # each poll is a round trip to PostgreSQL
        first, second = await asyncio.gather(*copies)
        assert first == second
        assert await one.head() == 1


# -- connections PostgreSQL closes -------------------------------------------------


@contextlib.asynccontextmanager
async def _admin(dsn: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        yield admin


@contextlib.asynccontextmanager
async def _refusing_connections(dsn: str) -> AsyncIterator[None]:
    """No new connection to the database (open ones stay) until the block ends."""
    name = sql.Identifier(str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]))
    async with _admin(psycopg.conninfo.make_conninfo(dsn, dbname="postgres")) as admin:
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        try:
            yield
        finally:
            await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))


async def _pids(admin: psycopg.AsyncConnection[Any], condition: str) -> list[int]:
    cursor = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND " + condition
    )
    return [row[0] for row in await cursor.fetchall()]


async def _terminate(admin: psycopg.AsyncConnection[Any], condition: str) -> None:
    """Terminate the backends that match ``condition`` once there are some; wait till gone."""
    while not (pids := await _pids(admin, condition)):
        pass  # each poll is a round trip to PostgreSQL
    await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    while set(pids) & set(await _pids(admin, "true")):
        pass


@contextlib.asynccontextmanager
async def _holding(dsn: str, lock: str) -> AsyncIterator[None]:
    """Hold ``lock`` (in a transaction of its own) until the block ends."""
    async with _admin(dsn) as holder, holder.transaction():
        await holder.execute(lock)
        yield


WAITING_ON_A_LOCK = "application_name = '%s' AND wait_event_type = 'Lock'"


async def test_a_commit_cut_off_midway_is_unavailable_commits_nothing_and_the_next_works(
    postgres_dsn: str,
) -> None:
    async with SyncServer(PostgresStorage(postgres_dsn)).run(port=0) as url:
        writer, other = await open_raw_device(url, 1), await open_raw_device(url, 2)
        await writer.set("k", "before")
        async with _admin(postgres_dsn) as admin:
            # The commit waits on the counter's row lock, and is killed there.
            async with _holding(postgres_dsn, "SELECT 1 FROM optisync_head FOR UPDATE"):
                await writer.send({**SET, "request_id": 50, "value": "lost"})
                await _terminate(admin, WAITING_ON_A_LOCK % "optisync-commits")
            error = await writer.receive_type("error")
            assert (error["code"], error["request_id"]) == ("unavailable", 50)
            cursor = await admin.execute("SELECT count(*) FROM optisync_changes")
            assert await cursor.fetchone() == (1,)  # nothing of "lost" was committed
        ack = await writer.set("k", "after")  # on a new connection
        assert ack["server_revision"] == 2
        for device in (writer, other):
            while len(device.pushes) < 2:
                device.pushes.append(await device.receive())
            assert [(p["server_revision"], p["value"]) for p in device.pushes] == [
                (1, "before"),
                (2, "after"),
            ]
        assert (await other.get("k"))["value"] == "after"


async def test_a_read_cut_off_midway_is_unavailable_and_the_next_read_works(
    postgres_dsn: str,
) -> None:
    async with SyncServer(PostgresStorage(postgres_dsn)).run(port=0) as url:
        device = await open_raw_device(url, 1)
        await device.set("k", "value")
        async with _admin(postgres_dsn) as admin:
            async with _holding(postgres_dsn, "LOCK optisync_keys IN ACCESS EXCLUSIVE MODE"):
                await device.send({"type": "get", "request_id": 60, "key": "k"})
                await _terminate(admin, WAITING_ON_A_LOCK % "optisync-reads")
            error = await device.receive_type("error")
            assert (error["code"], error["request_id"]) == ("unavailable", 60)
        assert (await device.get("k"))["value"] == "value"


async def test_after_every_backend_is_terminated_writes_go_on_and_both_servers_converge(
    postgres_dsn: str,
) -> None:
    async with (
        SyncServer(PostgresStorage(postgres_dsn)).run(port=0) as url_one,
        SyncServer(PostgresStorage(postgres_dsn)).run(port=0) as url_two,
    ):
        devices = [
            await open_raw_device(url, device_id)
            for device_id, url in enumerate([url_one, url_two, url_one, url_two], start=1)
        ]

        async def write(device: RawDevice, first: int) -> None:
            for n in range(first, first + 3):
                ack = await device.set(f"k{n % 2}", f"{device.device_id}:{n}", local_revision=n)
                assert ack["type"] == "ack"

        await asyncio.gather(*(write(device, 1) for device in devices))
        async with _admin(postgres_dsn) as admin:
            # Commits, reads and LISTEN of both servers, all at once.
            await _terminate(admin, "application_name LIKE 'optisync-%%'")
        await asyncio.gather(*(write(device, 4) for device in devices))
        await _assert_converged(devices, commits=24)


async def _assert_converged(devices: list[RawDevice], commits: int) -> None:
    """Every device gets every commit, in revision order; all end with the server's values."""
    views = []
    for device in devices:
        while len(device.pushes) < commits:
            device.pushes.append(await device.receive())
        assert [push["server_revision"] for push in device.pushes] == list(range(1, commits + 1))
        views.append({push["key"]: push["value"] for push in device.pushes})
    assert all(view == views[0] for view in views)
    assert {key: (await devices[-1].get(key))["value"] for key in views[0]} == views[0]


async def test_two_server_processes_on_one_database_converge(postgres_dsn: str) -> None:
    with (
        server_process("--postgres", postgres_dsn) as (_, url_one),
        server_process("--postgres", postgres_dsn) as (_, url_two),
    ):
        devices = [
            await open_raw_device(url_one, 1),
            await open_raw_device(url_two, 2),
            await open_raw_device(url_one, 3),
            await open_raw_device(url_two, 4),
        ]

        async def write(device: RawDevice) -> None:
            for n in range(15):
                await device.set(f"k{n % 4}", f"{device.device_id}:{n}", local_revision=n + 1)

        await asyncio.gather(*(write(device) for device in devices))
        # Every device saw every commit of both processes, in revision order.
        await _assert_converged(devices, commits=60)
        for device in devices:
            await device.connection.close()


async def test_a_hello_while_the_database_is_down_is_closed_1013_and_the_retry_admitted(
    postgres_dsn: str,
) -> None:
    storage = PostgresStorage(postgres_dsn, wait_timeout=0.2)
    async with SyncServer(storage).run(port=0) as url:
        async with _admin(postgres_dsn) as admin, _refusing_connections(postgres_dsn):
            await _terminate(admin, "application_name = 'optisync-reads'")
            assert await _admitted_or_close_code(url, 1) == 1013
        # Retried as a device does, it is admitted once the pool has reconnected:
        # the failed hello did not leave the device id claimed (device_in_use).
        while (device := await _admitted_or_close_code(url, 1)) == 1013:
            pass
        assert isinstance(device, RawDevice)
        assert device.welcome["type"] == "welcome"
        await device.connection.close()


async def _admitted_or_close_code(url: str, device_id: int) -> RawDevice | int | None:
    try:
        return await open_raw_device(url, device_id)
    except ConnectionClosed as closed:
        return None if closed.rcvd is None else closed.rcvd.code


async def test_opening_a_postgres_storage_twice_raises_already_open(postgres_dsn: str) -> None:
    async with PostgresStorage(postgres_dsn) as storage:
        with pytest.raises(RuntimeError, match="already open") as caught:
            await storage.open()
        assert isinstance(caught.value, AlreadyOpenError)
        assert (await storage.commit("k", b"1", local_revision=1, device_id=1)).server_revision == 1
