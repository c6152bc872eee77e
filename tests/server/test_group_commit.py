"""Group commit: writes that arrive while a transaction commits go together in the next one.

Each write keeps its own revision, its ``commit`` returns once its transaction
is durable, and ``on_commit`` sees every change in revision order before any
write of the batch returns. A server killed with SIGKILL mid-batch loses no
acknowledged write.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

import optisync.server.storage as storage_module
from optisync.errors import InvalidArgumentError
from optisync.server import Change, SqliteStorage, StorageUnavailableError
from tests.server.conftest import server_process


@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every transaction SqliteStorage commits, in order."""
    sizes: list[int] = []
    write_batch = storage_module._write_batch

    def recording(connection: sqlite3.Connection, *, batch: list[Any]) -> Any:
        sizes.append(len(batch))
        return write_batch(connection, batch=batch)

    monkeypatch.setattr(storage_module, "_write_batch", recording)
    return sizes


async def test_concurrent_writes_share_transactions_and_keep_their_own_revisions(
    tmp_path: Path, batch_sizes: list[int]
) -> None:
    handed: list[int] = []
    returned: list[int] = []
    async with SqliteStorage(tmp_path / "db.sqlite3") as storage:
        storage.on_commit = lambda change: handed.append(change.server_revision)

        async def write(n: int) -> Change:
            change = await storage.commit(f"k{n % 7}", b"%d" % n, local_revision=n, device_id=1)
            # Every change of its transaction was handed over before it returned.
            assert change.server_revision in handed
            returned.append(change.server_revision)
            return change

        changes = await asyncio.gather(*(write(n) for n in range(1, 101)))
        assert sorted(c.server_revision for c in changes) == list(range(1, 101))
        assert handed == list(range(1, 101))  # in revision order
        assert len(batch_sizes) < 100
        assert sum(batch_sizes) == 100
        for change in changes:  # each holds its own value
            assert change.value == b"%d" % change.local_revision
    async with SqliteStorage(tmp_path / "db.sqlite3") as reopened:
        assert await reopened.head() == 100


async def test_a_write_alone_commits_at_once_in_its_own_transaction(
    batch_sizes: list[int],
) -> None:
    async with SqliteStorage(":memory:") as storage:
        for n in range(3):
            await storage.commit("k", b"1", local_revision=n, device_id=1)
    assert batch_sizes == [1, 1, 1]


async def test_max_batch_bounds_a_transaction(batch_sizes: list[int]) -> None:
    async with SqliteStorage(":memory:", max_batch=4) as storage:
        await asyncio.gather(
            *(storage.commit("k", b"1", local_revision=n, device_id=1) for n in range(10))
        )
        assert await storage.head() == 10
    assert max(batch_sizes) <= 4


async def test_two_copies_of_one_write_in_one_batch_commit_once(batch_sizes: list[int]) -> None:
    async with SqliteStorage(":memory:") as storage:
        await storage.commit("warm", b"0", local_revision=1, device_id=9)  # occupies the writer
        copies = [
            storage.commit("k", b"1", local_revision=5, device_id=7, deduplicate=True)
            for _ in range(3)
        ]
        first, second, third = await asyncio.gather(*copies)
        assert first == second == third
        assert await storage.head() == 2


async def test_a_failed_transaction_fails_each_of_its_writes_and_the_next_one_commits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_batch = storage_module._write_batch
    failures = [sqlite3.OperationalError("disk I/O error")]

    def failing_once(connection: sqlite3.Connection, *, batch: list[Any]) -> Any:
        if failures:
            raise failures.pop()
        return write_batch(connection, batch=batch)

    monkeypatch.setattr(storage_module, "_write_batch", failing_once)
    async with SqliteStorage(":memory:") as storage:
        results = await asyncio.gather(
            *(storage.commit("k", b"1", local_revision=n, device_id=1) for n in range(5)),
            return_exceptions=True,
        )
        failed = [r for r in results if isinstance(r, sqlite3.OperationalError)]
        assert failed
        assert all(isinstance(r, Change | sqlite3.OperationalError) for r in results)
        committed = [r for r in results if isinstance(r, Change)]
        assert await storage.head() == len(committed)  # what failed left nothing behind
        assert (await storage.commit("k", b"2", local_revision=9, device_id=1)).value == b"2"


async def test_a_cancelled_caller_s_write_is_still_committed() -> None:
    async with SqliteStorage(":memory:") as storage:
        busy = asyncio.ensure_future(storage.commit("a", b"1", local_revision=1, device_id=1))
        waiting = asyncio.ensure_future(storage.commit("b", b"2", local_revision=1, device_id=1))
        await asyncio.sleep(0)  # both handed over
        waiting.cancel()
        await busy
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        assert await storage.head() == 2  # handed over means committed: close drains it
        assert (await storage.read("b")) is not None


async def test_closing_commits_the_writes_already_handed_over(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite3")
    await storage.open()
    writes = [
        asyncio.ensure_future(storage.commit("k", b"1", local_revision=n, device_id=1))
        for n in range(20)
    ]
    await asyncio.sleep(0)
    await storage.close()
    assert all(write.done() and not write.cancelled() for write in writes)
    async with SqliteStorage(tmp_path / "db.sqlite3") as reopened:
        assert await reopened.head() == 20


async def test_a_commit_on_a_closed_storage_says_so() -> None:
    storage = SqliteStorage(":memory:")
    with pytest.raises(RuntimeError, match="not open"):
        await storage.commit("k", b"1", local_revision=1, device_id=1)


def test_max_batch_must_be_a_positive_int() -> None:
    with pytest.raises(InvalidArgumentError, match="max_batch"):
        SqliteStorage(":memory:", max_batch=0)


def test_storage_unavailable_is_what_a_stopped_batch_fails_with() -> None:
    failure = storage_module._as_failure(asyncio.CancelledError())
    assert isinstance(failure, StorageUnavailableError)


class Acks:
    """Every acknowledged write, and an event set once there are ``enough``."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, Any, int]] = []
        self.enough = 0
        self.reached = asyncio.Event()

    def add(self, key: str, value: Any, revision: int) -> None:
        self.writes.append((key, value, revision))
        if len(self.writes) >= self.enough:
            self.reached.set()


async def _write_until_killed(url: str, device_id: int, acks: Acks) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        async with connect(url) as connection:
            hello = {"type": "hello", "device_id": device_id, "since": 0}
            await connection.send(json.dumps(hello))
            while json.loads(await connection.recv())["type"] != "ready":
                pass
            for n in range(1, 100_000):
                key, value = f"d{device_id}k{n % 5}", f"{device_id}:{n}"
                request = {"type": "set", "request_id": n, "key": key, "value": value}
                await connection.send(json.dumps({**request, "local_revision": n}))
                while (answer := json.loads(await connection.recv()))["type"] != "ack":
                    pass
                acks.add(key, value, answer["server_revision"])


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
async def test_a_server_killed_mid_batch_loses_no_acknowledged_write(tmp_path: Path) -> None:
    database = tmp_path / "server.sqlite3"
    acks = Acks()
    for round_ in range(3):
        with server_process("--database", str(database)) as (process, url):
            acks.enough, acks.reached = len(acks.writes) + 300, asyncio.Event()
            writers = [  # ten writers at once: batches in flight when the kill comes
                asyncio.ensure_future(_write_until_killed(url, 10 * round_ + d, acks))
                for d in range(1, 11)
            ]
            await acks.reached.wait()
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.gather(*writers)
    with contextlib.closing(sqlite3.connect(database)) as db:
        stored = {
            revision: (key, json.loads(value))
            for revision, key, value in db.execute(
                "SELECT revision, key, value FROM optisync_changes"
            )
        }
    lost = [(k, v, r) for k, v, r in acks.writes if stored.get(r) != (k, v)]
    assert len(acks.writes) >= 900
    assert lost == []


async def test_reads_do_not_wait_behind_a_commit_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    write_batch = storage_module._write_batch
    gate, entered = threading.Event(), threading.Event()

    def held(connection: sqlite3.Connection, *, batch: list[Any]) -> Any:
        entered.set()
        gate.wait(10)  # the commit is held until the reads are done
        return write_batch(connection, batch=batch)

    async with SqliteStorage(tmp_path / "db.sqlite3") as storage:
        await storage.commit("a", b"1", local_revision=1, device_id=1)
        monkeypatch.setattr(storage_module, "_write_batch", held)
        writing = asyncio.ensure_future(storage.commit("b", b"2", local_revision=1, device_id=1))
        await asyncio.to_thread(entered.wait, 10)
        # The writer's thread is busy: these run on the reader's, and see the last commit.
        assert await storage.head() == 1
        assert (await storage.read("a")) is not None
        assert [c.key for c in await storage.latest_after(0, 10)] == ["a"]
        assert await storage.claim_device(5, None)
        gate.set()
        assert (await writing).server_revision == 2
