"""The PostgreSQL storage, on a real server (skipped without $OPTISYNC_TEST_POSTGRES_DSN)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from optisync.server import Change
from optisync.server.postgres import PostgresStorage
from tests.server.conftest import RawDevice, open_raw_device, server_process


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
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as admin:
            pids = await _listener_pids(admin)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,)
            )
            while set(pids) & set(await _listener_pids(admin)):
                pass  # until the killed backends are gone: the notifications below are lost
        for n in range(3):
            await writer.commit("k", b"%d" % n, local_revision=n, device_id=2)
        await seen.reach(3)
        assert seen.revisions == [1, 2, 3]
        assert deaf.reconnects >= 1


async def _listener_pids(admin: psycopg.AsyncConnection[Any]) -> list[int]:
    cursor = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN%%'"
    )
    return [row[0] for row in await cursor.fetchall()]


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
        views = []
        for device in devices:
            while len(device.pushes) < 60:
                device.pushes.append(await device.receive())
            # Every device saw every commit of both processes, in revision order.
            assert [push["server_revision"] for push in device.pushes] == list(range(1, 61))
            views.append({push["key"]: push["value"] for push in device.pushes})
        assert views[0] == views[1] == views[2] == views[3]
        assert {key: (await devices[1].get(key))["value"] for key in views[0]} == views[0]
        for device in devices:
            await device.connection.close()
