"""Fixtures for the live tests: the demo's stage (a server on 127.0.0.1) and devices."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from live_support import Device, DeviceFactory, Recorder

from examples.live.demo import Stage
from examples.live.network import Link
from tests.server.conftest import postgres_dsn  # noqa: F401 - the fixture, for scene 6


@pytest.fixture(autouse=True)
async def nothing_left_behind() -> AsyncIterator[None]:
    """Runs last at teardown: no task still running.

    Unclosed sockets, transports and SQLite connections show up as
    ResourceWarnings (errors here); collecting garbage now pins them on this
    test rather than a later one.
    """
    yield
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    assert left == [], f"tasks left behind: {left}"
    gc.collect()


@pytest.fixture
async def stage(tmp_path: Path) -> AsyncIterator[Stage]:
    """The demo's server side, started: valves open, a mirror of the database."""
    running = Stage(tmp_path / "server.sqlite3")
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def link(stage: Stage) -> AsyncIterator[Link]:
    """A link to the stage's server that a test can cut."""
    async with stage.link() as opened:
        yield opened


@pytest.fixture
async def make_device(tmp_path: Path) -> AsyncIterator[DeviceFactory]:
    made: list[Device] = []
    unnamed = itertools.count(1)

    async def make(url: str, name: str | None = None) -> Device:
        record = Recorder()
        storage = tmp_path / f"{name or f'device-{next(unnamed)}'}.sqlite3"
        closer = contextlib.AsyncExitStack()
        opened = Device.open(url, storage, trace=record.trace, on_error=record.errors.append)
        device = await closer.enter_async_context(opened)
        assert isinstance(device, Device)
        device.record, device.closer = record, closer
        record.store = device.store
        made.append(device)
        return device

    yield make
    for device in made:
        await device.close()
