"""docs/first-app.md end to end: two device processes of ``examples.todo_app`` on a real
``python -m optisync.server``, random taps, a device killed with SIGKILL and restarted, a
two-second outage of the server; then both devices, the server's ``get`` and the server's
database hold the same values, and each device's last tap on an item only it changes is there.

The default run plays ``OPTISYNC_E2E_SEEDS`` seeds (1; CI sets 20); the ``slow`` marker's
test plays 200.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from optisync import Store
from optisync.client import SyncClient

ROOT = Path(__file__).resolve().parents[2]
REPLY_TIMEOUT = 30.0
SEEDS = int(os.environ.get("OPTISYNC_E2E_SEEDS", "1"))
TAPS = 24
SHARED = ("s1", "s2")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Server:
    """``python -m optisync.server`` on a fixed port, so that a restart keeps its URL."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.port = _free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "optisync.server", "--database", str(self.database)),
            *("--port", str(self.port)),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), REPLY_TIMEOUT)
        assert line.decode().strip() == self.url, f"the server did not start: {line!r}"

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            await asyncio.wait_for(self.process.wait(), REPLY_TIMEOUT)
        self.process = None


class DeviceProcess:
    """One ``python -m examples.todo_app --json`` process, driven line by line."""

    def __init__(self, url: str, storage: Path) -> None:
        self.url, self.storage = url, storage
        self.process: asyncio.subprocess.Process | None = None
        self.state: dict[str, dict[str, Any]] = {"titles": {}, "done": {}}

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "examples.todo_app", "--json", "--url", self.url),
            *("--storage", str(self.storage)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )

    async def send(self, command: str) -> dict[str, dict[str, Any]]:
        """Send one command; return the state once the device has saved its effect."""
        process = self.process
        assert process is not None
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(command.encode() + b"\n")
        await process.stdin.drain()
        line = await asyncio.wait_for(process.stdout.readline(), REPLY_TIMEOUT)
        assert line, f"the device on {self.storage.name} ended (exit {process.returncode})"
        answer = json.loads(line)
        assert answer["reply"] == "", answer["reply"]
        self.state = answer["state"]
        return self.state

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()  # SIGKILL: no cleanup, no last save
        await self.process.wait()
        self.process = None

    async def quit(self) -> None:
        if self.process is None:
            return
        assert self.process.stdin is not None
        self.process.stdin.write(b"quit\n")
        await self.process.stdin.drain()
        assert await asyncio.wait_for(self.process.wait(), REPLY_TIMEOUT) == 0
        self.process = None


@attrs.define
class Taps:
    """The last value each device tapped for each (field, item)."""

    last: dict[tuple[int, str, str], object] = attrs.field(factory=dict)

    def tap(self, device: int, field: str, item: str, value: object) -> None:
        self.last[(device, field, item)] = value

    def must_win(self) -> dict[tuple[str, str], object]:
        """Items only one device tapped: its last tap must be what everyone ends with."""
        writers: dict[tuple[str, str], list[int]] = {}
        for device, field, item in self.last:
            writers.setdefault((field, item), []).append(device)
        return {
            key: self.last[(devices[0], *key)]
            for key, devices in writers.items()
            if len(devices) == 1
        }

    def candidates(self, field: str, item: str) -> set[str]:
        return {
            json.dumps(value)
            for (device, f, i), value in self.last.items()
            if (f, i) == (field, item)
        }


@asynccontextmanager
async def running(tmp_path: Path) -> AsyncIterator[tuple[Server, list[DeviceProcess]]]:
    server = Server(tmp_path / "server.sqlite3")
    await server.start()
    devices = [DeviceProcess(server.url, tmp_path / f"device{n}.sqlite3") for n in (0, 1)]
    try:
        for device in devices:
            await device.start()
        yield server, devices
    finally:
        for device in devices:
            if device.process is not None:
                device.process.kill()
                await device.process.wait()
        await server.stop()


async def tap(rng: random.Random, devices: list[DeviceProcess], taps: Taps) -> None:
    number = rng.randrange(2)
    device = devices[number]
    item = rng.choice((*SHARED, f"only{number}"))
    if rng.random() < 0.3:
        title = f"title {rng.randrange(1000)}"
        await device.send(f"add {item} {title}")
        taps.tap(number, "titles", item, title)
    else:
        done = not device.state["done"].get(item, False)
        await device.send(f"{'done' if done else 'undo'} {item}")
        taps.tap(number, "done", item, done)


def server_database(path: Path) -> dict[tuple[str, str], object]:
    """What the server's database holds now, by (state field, item)."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute(
            "SELECT k.key, c.value FROM optisync_keys k "
            "JOIN optisync_changes c ON c.revision = k.revision"
        ).fetchall()
    finally:
        connection.close()
    field_names = {"title": "titles", "done": "done"}
    held: dict[tuple[str, str], object] = {}
    for key, value in rows:
        name, _, item = key.partition("/")
        held[(field_names[name], item)] = json.loads(value)
    return held


async def server_get(url: str, keys: list[tuple[str, str]]) -> dict[tuple[str, str], object]:
    """The server's ``get`` of every key, through a client of its own."""
    wire_names = {"titles": "title", "done": "done"}
    reader: Store[int] = Store(0, device_id=2**40)
    got: dict[tuple[str, str], object] = {}
    async with reader, SyncClient(reader, url) as client:
        await client.wait_online(timeout=REPLY_TIMEOUT)
        for field, item in keys:
            value, _ = await client.get(f"{wire_names[field]}/{item}")
            got[(field, item)] = value
    return got


def flatten(state: dict[str, dict[str, Any]]) -> dict[tuple[str, str], object]:
    return {(field, item): value for field in state for item, value in state[field].items()}


async def play(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    taps = Taps()
    async with running(tmp_path) as (server, devices):
        killed_at, outage_at = rng.randrange(4, TAPS // 2), rng.randrange(TAPS // 2, TAPS - 4)
        for step in range(TAPS):
            if step == killed_at:
                victim = devices[rng.randrange(2)]
                await victim.kill()
                await victim.start()
            if step == outage_at:
                await server.stop()
                for _ in range(3):  # taps while the server is down: kept in each outbox
                    await tap(rng, devices, taps)
                await asyncio.sleep(2.0)  # the outage itself, not a synchronisation
                await server.start()
            await tap(rng, devices, taps)
        # A device's sync waits for its own writes and the server's head at that moment:
        # once each has synced, the first one's second sync sees every write.
        for device in devices:
            await device.send("sync")
        states = [flatten(await device.send("sync")) for device in devices]
        for device in devices:
            await device.quit()
        held = server_database(server.database)
        got = await server_get(server.url, sorted(held))
    assert states[0] == states[1] == held == got, f"seed {seed}: diverged"
    for key, value in taps.must_win().items():
        assert held[key] == value, f"seed {seed}: the last tap on {key} was lost"
    for field, item in held:
        assert json.dumps(held[(field, item)]) in taps.candidates(field, item), (
            f"seed {seed}: {field}[{item}] holds a value no device's last tap had"
        )


@pytest.mark.parametrize("seed", range(SEEDS))
async def test_two_device_processes_converge_after_a_kill_and_an_outage(
    seed: int, tmp_path: Path
) -> None:
    await play(seed, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(1000, 1200))
async def test_two_hundred_more_seeds_converge(seed: int, tmp_path: Path) -> None:
    await play(seed, tmp_path)
