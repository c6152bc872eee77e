"""A write retried after a cut connection commits once, on a real server process."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.server.conftest import Connect, RawDevice, server_process

CYCLES = 50
DEVICE = 7


async def _hello(url: str) -> RawDevice:
    """A device past its welcome and replay; waits out the cut connection's device_in_use."""
    for _ in range(500):
        connection: ClientConnection = await connect(url)
        device = RawDevice(connection, DEVICE)
        await device.send({"type": "hello", "device_id": DEVICE, "since": 0})
        first = await device.receive()
        if first["type"] == "welcome":
            while (await device.receive())["type"] != "ready":
                pass
            return device
        # The server has not yet seen the cut connection go: the device id is still held.
        assert first["code"] == "device_in_use", first
        await connection.close()  # and try again, as a client reconnects
    raise AssertionError("the device id was never released")


def _set(cycle: int) -> dict[str, Any]:
    return {
        "type": "set",
        "request_id": 1,
        "key": "counter",
        "value": cycle,
        "local_revision": cycle,
        "device_id": DEVICE,
    }


async def _cut_and_retry(url: str) -> list[dict[str, Any]]:
    """Each cycle: a set whose connection closes before its ack is read, then its retry."""
    acks = []
    for cycle in range(1, CYCLES + 1):
        cut = await _hello(url)
        await cut.send(_set(cycle))
        await cut.connection.close()  # the ack, if any, is never read
        retry = await _hello(url)
        await retry.send(_set(cycle))
        acks.append(await retry.receive_type("ack"))
        await retry.connection.close()
    return acks


def _sqlite_log(database: Path) -> list[tuple[int, int]]:
    with contextlib.closing(sqlite3.connect(database)) as reader:
        rows = reader.execute(
            "SELECT revision, local_revision FROM optisync_changes ORDER BY revision"
        ).fetchall()
    return [(int(revision), int(local)) for revision, local in rows]


async def _postgres_log(dsn: str) -> list[tuple[int, int]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn) as reader:
        cursor = await reader.execute(
            "SELECT revision, local_revision FROM optisync_changes ORDER BY revision"
        )
        return [(int(revision), int(local)) for revision, local in await cursor.fetchall()]


@pytest.mark.timeout(60)
def test_fifty_writes_cut_before_their_ack_and_retried_commit_once_each_on_sqlite(
    tmp_path: Path,
) -> None:
    database = tmp_path / "app.sqlite3"
    with server_process("--database", str(database)) as (_, url):
        acks = asyncio.run(_cut_and_retry(url))
    _assert_once(acks, _sqlite_log(database))


@pytest.mark.timeout(60)
async def test_fifty_writes_cut_before_their_ack_and_retried_commit_once_each_on_postgres(
    postgres_dsn: str,
) -> None:
    with server_process("--postgres", postgres_dsn) as (_, url):
        acks = await _cut_and_retry(url)
    _assert_once(acks, await _postgres_log(postgres_dsn))


def _assert_once(acks: list[dict[str, Any]], log: list[tuple[int, int]]) -> None:
    assert len(log) == CYCLES, f"{len(log)} rows in the log for {CYCLES} writes"
    assert [local for _, local in log] == list(range(1, CYCLES + 1))
    # Each retry was answered with the original commit: its revision and value.
    assert [(ack["server_revision"], ack["value"]) for ack in acks] == [
        (revision, local) for revision, local in log
    ]


# -- what a retry gets back, on one server --------------------------------------------


def _named(local_revision: int, value: Any, request_id: int = 1) -> dict[str, Any]:
    return {
        "type": "set",
        "request_id": request_id,
        "key": "like",
        "value": value,
        "local_revision": local_revision,
        "device_id": 1,
    }


async def test_a_retry_gets_the_original_ack_and_nobody_gets_a_push(
    connect_device: Connect,
) -> None:
    writer, watcher = await connect_device(1), await connect_device(2)
    await writer.send(_named(3, True))
    original = await writer.receive_type("ack")
    await watcher.receive_type("push")
    await writer.send(_named(3, True, request_id=2))
    retry = await writer.receive_type("ack")
    assert retry == {**original, "request_id": 2}
    await watcher.get("like")  # any push of the retry would have come before this answer
    assert (writer.pushes, watcher.pushes) == ([_own_push(3, True, 1)], [])


async def test_a_stale_copy_gets_the_ack_of_the_devices_newest_write_of_the_key(
    connect_device: Connect,
) -> None:
    writer = await connect_device(1)
    await writer.send(_named(3, "old"))
    await writer.receive_type("ack")
    await writer.send(_named(4, "new", request_id=2))
    newest = await writer.receive_type("ack")
    await writer.send(_named(3, "old", request_id=3))
    assert await writer.receive_type("ack") == {**newest, "request_id": 3}
    assert (await writer.get("like"))["value"] == "new"


async def test_a_set_without_a_device_id_is_not_deduplicated(connect_device: Connect) -> None:
    writer = await connect_device(1)
    revisions = [(await writer.set("like", True, local_revision=3))["server_revision"]]
    revisions.append((await writer.set("like", True, local_revision=3))["server_revision"])
    assert revisions == [1, 2]


def _own_push(local_revision: int, value: Any, revision: int) -> dict[str, Any]:
    return {
        "type": "push",
        "key": "like",
        "value": value,
        "server_revision": revision,
        "local_revision": local_revision,
        "device_id": 1,
    }
