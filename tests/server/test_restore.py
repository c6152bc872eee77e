"""A database restored from a backup: every device whose position it lost gets ``reset``.

The generation id lives in the database file, so a restored copy has the
same one. A device's position is checked by the entry it last received: the
hello carries its digest (``optisync.wire.entry_digest``), and the server
answers ``reset`` when it holds no such entry at ``since``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import msgspec
import pytest
from websockets.asyncio.client import connect

from examples.live.network import Link
from optisync import Store
from optisync.client import SyncClient
from optisync.fields import SyncedMapWithPush
from optisync.outbox import Backoff, Outbox
from optisync.persistence import JsonCodec, Persistence, open_sqlite
from optisync.server import SqliteStorage, Storage, SyncServer
from optisync.transport import SyncRequest, wire_key
from optisync.wire import Push, entry_digest
from tests.server.conftest import Connect, open_raw_device, serving

Counts = dict[str, int]
KEYS = [f"k{n}" for n in range(15)]
PENDING = "k9"  # in the backup, and written by nobody after the restore


class Phone(Store[Counts]):
    counts = SyncedMapWithPush[Counts, str, int](
        lambda state, key: state.get(key, 0), lambda state, key, value: {**state, key: value}
    )


def back_up(database: Path, copy: Path) -> None:
    """An online backup (SQLite's backup API: consistent, WAL included)."""
    with (
        contextlib.closing(sqlite3.connect(database)) as source,
        contextlib.closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)


def restore(copy: Path, database: Path) -> None:
    for stale in (Path(f"{database}-wal"), Path(f"{database}-shm")):
        stale.unlink(missing_ok=True)
    shutil.copyfile(copy, database)


class Deployment:
    """One database file, served by one server at a time behind a link a device uses."""

    def __init__(self, database: Path, transport: str = "standalone") -> None:
        self.database = database
        self.transport = transport
        self.port = 0
        self.url = ""
        self.server: SyncServer | None = None
        self._running: contextlib.AsyncExitStack | None = None

    @property
    def storage(self) -> Storage:
        assert self.server is not None
        return self.server.storage

    async def start(self) -> None:
        self._running = contextlib.AsyncExitStack()
        self.server = SyncServer(SqliteStorage(self.database))
        # At "/": the link's URL has no path.
        serve = serving(self.server, self.transport, path="/")
        self.url = await self._running.enter_async_context(serve)
        port = urlparse(self.url).port
        assert port is not None
        self.port = port

    async def stop(self) -> None:
        assert self._running is not None
        await self._running.aclose()
        self.server = None


@pytest.fixture
async def deployment(tmp_path: Path, transport: str) -> AsyncIterator[Deployment]:
    running = Deployment(tmp_path / "server.sqlite3", transport)
    await running.start()
    try:
        yield running
    finally:
        if running.server is not None:
            await running.stop()


@pytest.fixture
async def link(deployment: Deployment) -> AsyncIterator[Link]:
    async with Link(lambda: deployment.port) as running:
        yield running


async def write(url: str, device_id: int, values: list[tuple[str, int]]) -> None:
    """Another device writes ``values`` in order, one revision each."""
    async with SyncClient(Store[Counts]({}, device_id=device_id), url) as writer:
        await writer.wait_online()
        for local_revision, (key, value) in enumerate(values, start=1):
            request = SyncRequest(("counts", key), local_revision, device_id)
            await writer.send(wire_key(("counts", key)), value, request)


async def diverged(phone: Phone, storage: Storage) -> list[str]:
    """The keys whose value on the phone is not the database's."""
    different = []
    for key in KEYS:
        change = await storage.read(wire_key(("counts", key)))
        expected = 0 if change is None else json.loads(change.value)
        if phone.counts[key] != expected:
            different.append(key)
    return different


class Device:
    """Device A: a served declared-field store with an outbox, maybe persisted."""

    def __init__(self, url: str, saved: Persistence[Counts] | None = None) -> None:
        state, device_id = ({}, 1) if saved is None else (saved.state, saved.device_id)
        self.saved = saved
        self.phone = Phone(state, device_id=device_id)
        self.outbox = Outbox(self.phone, backoff=Backoff(initial=0.001, jitter=0.0))
        self.client = SyncClient(self.phone, url)
        if saved is not None:  # served first: its outbox is resent through the client
            saved.attach(self.phone)
        self.resets: list[int] = []
        self.client.subscribe_reset(lambda: self.resets.append(self.client.cursor))
        self.client.start()

    async def close(self) -> None:
        await self.client.close()
        await self.phone.close()
        if self.saved is not None:
            await self.saved.close()


@pytest.fixture
async def devices() -> AsyncIterator[list[Device]]:
    made: list[Device] = []
    yield made
    for device in made:
        await device.close()


async def run_until_restore(
    deployment: Deployment, device: Device, tmp_path: Path
) -> tuple[int, Path]:
    """Writes, a backup at revision 10, 20 more writes the device sees; returns its cursor."""
    await write(deployment.url, 9, [(key, n) for n, key in enumerate(KEYS[:10])])
    await device.client.caught_up()
    backup = tmp_path / "backup.sqlite3"
    back_up(deployment.database, backup)
    await write(deployment.url, 8, [(KEYS[n % 15], 100 + n) for n in range(20)])
    await device.client.caught_up()
    assert device.client.cursor == 30
    return device.client.cursor, backup


async def restore_and_restart(deployment: Deployment, link: Link, backup: Path) -> None:
    link.down()
    await deployment.stop()
    restore(backup, deployment.database)
    await deployment.start()
    assert await deployment.storage.head() == 10


async def another_device_passes_the_cursor(deployment: Deployment) -> None:
    others = [key for key in KEYS if key != PENDING]
    await write(deployment.url, 2, [(others[n % 14], 1000 + n) for n in range(25)])
    # Past the device's cursor (30); keys written back from a reset device add to it.
    assert await deployment.storage.head() >= 35


async def test_a_device_whose_cursor_the_head_passed_after_a_restore_is_reset_and_converges(
    deployment: Deployment, link: Link, devices: list[Device], tmp_path: Path
) -> None:
    device = Device(link.url)
    devices.append(device)
    _, backup = await run_until_restore(deployment, device, tmp_path)
    await restore_and_restart(deployment, link, backup)
    device.phone.counts.set(PENDING, -1)  # offline: waits in the outbox
    await another_device_passes_the_cursor(deployment)
    link.up()
    await device.outbox.synced()
    await device.client.caught_up()
    assert device.resets == [0]
    assert await diverged(device.phone, deployment.storage) == []
    assert device.phone.counts[PENDING] == -1  # the pending write was sent after the reset


async def test_a_device_that_reconnects_first_after_a_restore_is_reset_and_converges(
    deployment: Deployment, link: Link, devices: list[Device], tmp_path: Path
) -> None:
    device = Device(link.url)
    devices.append(device)
    _, backup = await run_until_restore(deployment, device, tmp_path)
    await restore_and_restart(deployment, link, backup)
    link.up()
    await device.client.caught_up()
    assert device.resets == [0]
    await another_device_passes_the_cursor(deployment)
    await device.client.caught_up()
    assert await diverged(device.phone, deployment.storage) == []


async def test_a_restarted_device_remembers_its_digest_and_is_reset_after_a_restore(
    deployment: Deployment, link: Link, devices: list[Device], tmp_path: Path
) -> None:
    path = tmp_path / "device.sqlite3"
    device = Device(link.url, await open_sqlite(path, JsonCodec(), initial={}))
    _, backup = await run_until_restore(deployment, device, tmp_path)
    link.down()
    device.phone.counts.set(PENDING, -1)  # pending when the app quits
    assert device.saved is not None
    await device.saved.flush()
    await device.close()
    await restore_and_restart(deployment, link, backup)
    await another_device_passes_the_cursor(deployment)
    link.up()
    device = Device(link.url, await open_sqlite(path, JsonCodec(), initial={}))
    devices.append(device)
    await device.outbox.synced()
    await device.client.caught_up()
    assert device.resets == [0]
    assert await diverged(device.phone, deployment.storage) == []
    assert device.phone.counts[PENDING] == -1


# -- the server's decision, on the wire --------------------------------------------


def digest_of(push: dict[str, Any]) -> str:
    fields = {name: value for name, value in push.items() if name != "type"}
    return entry_digest(Push(**fields))


async def two_writes(connect_device: Connect) -> dict[str, Any]:
    """Device 5 writes ``a`` twice (revisions 1 and 2); its own push of revision 2."""
    writer = await connect_device(5)
    await writer.set("a", "first", local_revision=1)
    await writer.set("a", "second", local_revision=2)
    await writer.connection.close()
    [push] = [p for p in writer.pushes if p["server_revision"] == 2]
    return push


async def test_a_hello_whose_digest_matches_the_entry_at_since_resumes(
    connect_device: Connect,
) -> None:
    push = await two_writes(connect_device)
    device = await connect_device(5, since=2, digest=digest_of(push))
    assert device.welcome["reset"] is False
    assert device.replayed == []


async def test_the_digest_is_of_the_entry_as_sent_to_each_device(connect_device: Connect) -> None:
    await two_writes(connect_device)
    reader = await connect_device(6)
    [push] = reader.replayed  # the key's newest value only
    assert (push["device_id"], push["local_revision"]) == (0, 0)
    await reader.connection.close()
    again = await connect_device(6, since=2, digest=digest_of(push))
    assert again.welcome["reset"] is False


async def test_a_hello_whose_digest_differs_gets_reset(connect_device: Connect) -> None:
    push = await two_writes(connect_device)
    other = {**push, "value": "something else"}
    device = await connect_device(5, since=2, digest=digest_of(other))
    assert device.welcome["reset"] is True
    assert [p["server_revision"] for p in device.replayed] == [2]  # the key's newest value


async def test_a_hello_whose_entry_at_since_is_missing_gets_reset(
    connect_device: Connect, database: Path
) -> None:
    await two_writes(connect_device)
    first = Push(key="a", value="first", server_revision=1, local_revision=1, device_id=5)
    with contextlib.closing(sqlite3.connect(database)) as connection:
        connection.execute("DELETE FROM optisync_changes WHERE revision = 1")
        connection.commit()
    device = await connect_device(5, since=1, digest=entry_digest(first))
    assert device.welcome["reset"] is True


async def test_a_hello_without_a_digest_is_judged_by_generation_and_head_alone(
    connect_device: Connect,
) -> None:
    await two_writes(connect_device)
    device = await connect_device(5, since=2)
    assert device.welcome["reset"] is False
    beyond = await connect_device(6, since=3)
    assert beyond.welcome["reset"] is True


def test_the_digest_is_the_same_for_a_decoded_value_and_the_stored_bytes() -> None:
    stored = b'{"a":[1.5,-0.0,1e300],"b":"\\u00e9\\"x"}'
    as_decoded = Push(
        key="k", value=msgspec.json.decode(stored), server_revision=3, local_revision=0, device_id=0
    )
    as_stored = Push(
        key="k",
        value=msgspec.Raw(msgspec.json.encode(msgspec.json.decode(stored), order="sorted")),
        server_revision=3,
        local_revision=0,
        device_id=0,
    )
    assert entry_digest(as_decoded) == entry_digest(as_stored)


async def welcome_of(url: str, hello: dict[str, Any]) -> dict[str, Any]:
    async with connect(url) as connection:
        await connection.send(json.dumps({"type": "hello", **hello}))
        welcome: dict[str, Any] = json.loads(await connection.recv())
        return welcome


async def test_postgres_resets_by_the_digest_of_the_entry_at_since(postgres_dsn: str) -> None:
    from optisync.server.postgres import PostgresStorage

    async with SyncServer(PostgresStorage(postgres_dsn)).run(port=0) as url:
        reader = await open_raw_device(url, 6)
        writer = await open_raw_device(url, 5)
        await writer.set("a", "first", local_revision=1)
        await writer.set("a", "second", local_revision=2)
        await reader.receive_type("push")
        push = await reader.receive_type("push")
        for device in (reader, writer):
            await device.connection.close()
        resets = []
        for value in ("second", "other"):
            digest = digest_of({**push, "value": value})
            welcome = await welcome_of(url, {"device_id": 6, "since": 2, "digest": digest})
            resets.append(welcome["reset"])
        assert resets == [False, True]
