"""A hypothesis property over honest devices: whatever the taps, cuts, restarts and restores,
every device ends with the database's values, no acknowledged write is lost, none commits twice.

Each device is a served declared-field store from ``open_device`` (its own SQLite file)
that reaches an in-process ``SyncServer(SqliteStorage(file))`` through a ``Link`` the steps
can cut. The default run plays ``OPTISYNC_PROPERTY_EXAMPLES`` examples (25, CI 200; raise it to
search harder) per property, derandomized so that CI replays the same ones.

With restores, a key the restored database lacks (a backup older than its last write) is
written back from the reset devices that hold it: the property holds as strictly as without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import attrs
from hypothesis import example, given, settings
from hypothesis import strategies as st

from examples.live.network import Link
from optisync import Store
from optisync.client import Traced
from optisync.device import Device, open_device
from optisync.fields import SyncedMapWithPush
from optisync.outbox import Backoff
from optisync.persistence import JsonCodec
from optisync.wire import Committed, Push
from tests.server.test_restore import Deployment, back_up, restore

Counts = dict[str, int]
DEVICES = 3
KEYS = ("a", "b", "c")
FIELD = "counts"
EXAMPLES = int(os.environ.get("OPTISYNC_PROPERTY_EXAMPLES", "25"))
WAIT = 30.0  # every wait is bounded: a hang fails the example instead of the run


class Phone(Store[Counts]):
    counts = SyncedMapWithPush[Counts, str, int](
        lambda state, key: state.get(key, 0), lambda state, key, value: {**state, key: value}
    )


# -- the steps ------------------------------------------------------------------------


@attrs.frozen
class Tap:
    device: int
    key: str
    value: int


@attrs.frozen
class Cut:
    """Toggle one device's link: down (its in-flight request is cut) or up again."""

    device: int


@attrs.frozen
class RestartDevice:
    device: int


@attrs.frozen
class RestartServer:
    pass


@attrs.frozen
class BackUp:
    pass


@attrs.frozen
class Restore:
    """Restore the newest backup, if one was taken (otherwise nothing happens)."""


Step = Tap | Cut | RestartDevice | RestartServer | BackUp | Restore

devices = st.integers(0, DEVICES - 1)
taps = st.builds(Tap, devices, st.sampled_from(KEYS), st.integers(1, 5))
faults = [st.builds(Cut, devices), st.builds(RestartDevice, devices), st.just(RestartServer())]
backups = [st.just(BackUp()), st.just(Restore())]
# Taps as likely as all the faults together.
steps = st.lists(st.one_of(taps, taps, taps, *faults), min_size=1, max_size=24)
steps_with_restores = st.lists(
    st.one_of(taps, taps, taps, taps, *faults, *backups), min_size=1, max_size=24
)


# -- what a run records ---------------------------------------------------------------


@attrs.frozen
class Ack:
    at: int  # the event number when the device handled it
    key: str
    value: Any
    server_revision: int


@attrs.frozen
class Restored:
    at: int
    backup_at: int


@attrs.define
class Record:
    """Events in the order the test saw them: acks, backups, restores."""

    events: int = 0
    acks: list[Ack] = attrs.field(factory=list)
    restores: list[Restored] = attrs.field(factory=list)
    served: set[tuple[str, Any]] = attrs.field(factory=set)  # (wire key, value) acked or pushed

    def tick(self) -> int:
        self.events += 1
        return self.events

    def trace(self, traced: Traced) -> None:
        message = traced.message
        if traced.direction == "received" and isinstance(message, Committed):
            self.acks.append(Ack(self.tick(), message.key, message.value, message.server_revision))
        if traced.direction == "received" and isinstance(message, Committed | Push):
            self.served.add((message.key, message.value))

    def must_survive(self, ack: Ack) -> bool:
        """An ack survives every restore after it whose backup was taken after it."""
        return all(r.backup_at > ack.at for r in self.restores if r.at > ack.at)


# -- the world ------------------------------------------------------------------------


class OpenDevice:
    """One device: its file, its link, and the ``open_device`` context while it runs."""

    def __init__(self, path: Path, link: Link, record: Record) -> None:
        self.path, self.link, self.record = path, link, record
        self.up = True
        self.device: Device[Phone] | None = None
        self._open: contextlib.AsyncExitStack | None = None

    async def open(self) -> None:
        self._open = contextlib.AsyncExitStack()
        opened = open_device(
            Phone,
            self.link.url,
            self.path,
            JsonCodec(),
            {},
            backoff=Backoff(initial=0.001, maximum=0.05, jitter=0.0),
            trace=self.record.trace,
        )
        self.device = await self._open.enter_async_context(opened)

    async def close(self) -> None:
        if self._open is not None:
            await self._open.aclose()
        self._open, self.device = None, None

    @property
    def store(self) -> Phone:
        assert self.device is not None
        return self.device.store

    async def offline(self) -> None:
        """Return once the client has seen its connection go (its link is down)."""
        assert self.device is not None
        client = self.device.client
        went = asyncio.Event()
        unsubscribe = client.subscribe_status(lambda online: None if online else went.set())
        try:
            if client.online:
                await went.wait()
        finally:
            unsubscribe()


class World:
    def __init__(self, folder: Path) -> None:
        self.deployment = Deployment(folder / "server.sqlite3")
        self.backup = folder / "backup.sqlite3"
        self.backup_at: int | None = None
        self.record = Record()
        self.folder = folder
        self.devices: list[OpenDevice] = []

    async def play(self, run: list[Step], stack: contextlib.AsyncExitStack) -> None:
        await self.deployment.start()
        stack.push_async_callback(self._stop_server)
        for number in range(DEVICES):
            link = await stack.enter_async_context(Link(lambda: self.deployment.port))
            device = OpenDevice(self.folder / f"device{number}.sqlite3", link, self.record)
            self.devices.append(device)
            stack.push_async_callback(device.close)
            await device.open()
        for step in run:
            await self.step(step)
        await self.converge()

    async def _stop_server(self) -> None:
        if self.deployment.server is not None:
            await self.deployment.stop()

    async def step(self, step: Step) -> None:
        match step:
            case Tap(number, key, value):
                self.devices[number].store.counts.set(key, value)  # the outbox delivers it
            case Cut(number):
                device = self.devices[number]
                device.up = not device.up
                (device.link.up if device.up else device.link.down)()
            case RestartDevice(number):
                await self.devices[number].close()
                await self.devices[number].open()
            case RestartServer():
                await self.restart_server(restore_backup=False)
            case BackUp():
                back_up(self.deployment.database, self.backup)
                self.backup_at = self.record.tick()
            case Restore():
                if self.backup_at is not None:
                    await self.restart_server(restore_backup=True)

    async def restart_server(self, *, restore_backup: bool) -> None:
        # Links down first: a reconnect waits in its link, not in websockets' backoff.
        for device in self.devices:
            device.link.down()
        await self.deployment.stop()
        if restore_backup:
            assert self.backup_at is not None
            # No ack of the old database may be counted as one of the restored one's.
            for device in self.devices:
                await device.offline()
            restore(self.backup, self.deployment.database)
            self.record.restores.append(Restored(self.record.tick(), self.backup_at))
        await self.deployment.start()
        for device in self.devices:
            if device.up:
                device.link.up()

    async def converge(self) -> None:
        for device in self.devices:
            device.up = True
            device.link.up()
        # Each sync waits for its own writes and the server's head at that moment: once
        # every device has synced, a second round sees every write.
        for _ in range(2):
            for device in self.devices:
                assert device.device is not None
                await device.device.caught_up()


# -- the database, read directly ------------------------------------------------------


def latest(database: Path) -> Counts:
    with contextlib.closing(sqlite3.connect(database)) as reader:
        rows = reader.execute(
            "SELECT k.key, c.value FROM optisync_keys k "
            "JOIN optisync_changes c ON c.revision = k.revision"
        ).fetchall()
    held = {}
    for key, value in rows:
        field, _, item = key.partition("/")
        assert field == FIELD, key
        held[item] = json.loads(value)
    return held


def log(database: Path) -> list[tuple[int, str, Any, int, int]]:
    with contextlib.closing(sqlite3.connect(database)) as reader:
        rows = reader.execute(
            "SELECT revision, key, value, local_revision, device_id FROM optisync_changes"
        ).fetchall()
    return [(r, k, json.loads(v), local, device) for r, k, v, local, device in rows]


def check(world: World, run: list[Step]) -> None:
    """The three properties."""
    database = world.deployment.database
    held = latest(database)
    for number, device in enumerate(world.devices):
        assert device.store.state == held, f"device {number} diverged from the database: {run}"
    by_revision = {revision: (key, value) for revision, key, value, _, _ in log(database)}
    for ack in world.record.acks:
        if world.record.must_survive(ack):
            assert by_revision.get(ack.server_revision) == (ack.key, ack.value), (
                f"acknowledged write lost: {ack}: {run}"
            )
    writes = [(device, key, local) for _, key, _, local, device in log(database) if device]
    twice = {write for write in writes if writes.count(write) > 1}
    assert not twice, f"committed twice: {sorted(twice)}: {run}"


async def play(run: list[Step], folder: Path) -> None:
    world = World(folder)
    async with asyncio.timeout(WAIT), contextlib.AsyncExitStack() as stack:
        await world.play(run, stack)
        check(world, run)


def quick_reconnects() -> Iterator[float]:
    """The client's reconnect delays, short: a link cut mid-handshake otherwise costs the
    example websockets' random 0-5 s first delay (an RFC 6455 courtesy to a real server)."""
    delay = 0.001
    while True:
        yield delay
        delay = min(delay * 2, 0.05)


def play_in_a_folder(run: list[Step]) -> None:
    with (
        tempfile.TemporaryDirectory() as folder,
        mock.patch("optisync.client.backoff", quick_reconnects),
    ):
        asyncio.run(play(run, Path(folder)))


PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
# The smallest run hypothesis found in which a restore drops a key a device holds (the
# device restart only gives the tap's ack time to arrive before the restore); it diverged
# until reset devices wrote such keys back.
DROPPED_KEY = [BackUp(), Tap(0, "a", 1), RestartDevice(1), Restore()]


@PROPERTY
@given(steps)
def test_honest_devices_converge_lose_no_ack_and_commit_nothing_twice(run: list[Step]) -> None:
    play_in_a_folder(run)


@PROPERTY
@given(steps_with_restores)
@example(DROPPED_KEY)
def test_with_restores_devices_converge_lose_no_ack_and_commit_nothing_twice(
    run: list[Step],
) -> None:
    play_in_a_folder(run)


async def test_a_key_a_restore_dropped_is_written_back_from_the_device_that_held_it(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    async with asyncio.timeout(WAIT), contextlib.AsyncExitStack() as stack:
        await world.play([BackUp(), Tap(0, "a", 1)], stack)  # "a" acked, then converged
        await world.step(Restore())  # the database holds no "a" again, until written back
        await world.converge()
        assert latest(world.deployment.database) == {"a": 1}
        for device in world.devices:
            assert device.store.state == {"a": 1}
        check(world, [BackUp(), Tap(0, "a", 1), Restore()])
