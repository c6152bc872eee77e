"""Fixtures for the live tests: a server on 127.0.0.1 (OS-chosen port) and devices."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from live_support import Device, DeviceFactory, tiny_backoff

from examples.live.client import Backoff
from examples.live.demo import Valve
from examples.live.server import LiveServer


@pytest.fixture(autouse=True)
async def nothing_left_behind(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """Runs last at teardown: no task still running, no SQLite connection open.

    Unclosed sockets and transports show up as ResourceWarnings (errors here);
    collecting garbage now pins them on this test rather than a later one.
    """
    opened: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = connect(*args, **kwargs)
        opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", recording_connect)
    yield
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    assert left == [], f"tasks left behind: {left}"
    still_open = [connection for connection in opened if _is_open(connection)]
    assert still_open == [], f"SQLite connections left open: {still_open}"
    gc.collect()


def _is_open(connection: sqlite3.Connection) -> bool:
    try:
        connection.total_changes  # noqa: B018 - raises once the connection is closed
    except sqlite3.ProgrammingError:
        return False
    return True


@pytest.fixture
async def server() -> AsyncIterator[LiveServer]:
    async with LiveServer(":memory:") as live_server:
        yield live_server


@pytest.fixture
def valve() -> Valve:
    return Valve()


@pytest.fixture
async def make_device() -> AsyncIterator[DeviceFactory]:
    """``make_device(url, **options)``: a started Device, closed at teardown."""
    made: list[Device] = []

    def make(url: str, *, backoff: Backoff = tiny_backoff, **options: Any) -> Device:
        device = Device(url, backoff=backoff, **options)
        made.append(device)
        device.start()
        return device

    yield make
    for device in made:
        await device.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "server.sqlite3"
