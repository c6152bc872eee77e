"""Issue 18, item 7: all send queues together stay within one byte budget.

A reader that never reads lets the server's queue for it grow; past the total
budget the connection holding the most unsent bytes is cut (1013) and replays
on reconnect, while a reader that keeps up holds little and is served.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from optisync.server import Limits, SqliteStorage, SyncServer
from tests.server.conftest import RawDevice, open_raw_device

BUDGET = 1024 * 1024


def incompressible(length: int) -> str:
    """Text that permessage-deflate cannot shrink much: the bytes on the wire are real."""
    return base64.b64encode(random.Random(length).randbytes(length))[:length].decode()


async def stalled_device(url: str, device_id: int) -> ClientConnection:
    """A device past its welcome that never reads again, with a tiny receive buffer."""
    address = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    connection = await connect(url, sock=sock, max_queue=1, close_timeout=0.1)
    await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))
    assert json.loads(await connection.recv())["type"] == "welcome"
    return connection


async def read_forever(connection: ClientConnection) -> None:
    while True:
        await connection.recv()


async def close_code(connection: ClientConnection) -> tuple[int, str]:
    """Read everything the server sent until it closed; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(read_forever(connection), 30)  # a guard against hanging
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def pushes_until(device: RawDevice, last_key: str) -> list[dict[str, Any]]:
    """Every push the device receives, up to the one of ``last_key``."""
    pushes = []
    while True:
        message = await device.receive()
        assert message["type"] == "push", message
        pushes.append(message)
        if message["key"] == last_key:
            return pushes


async def test_readers_that_never_read_are_cut_1013_and_the_total_stays_within_budget(
    tmp_path: Path,
) -> None:
    limits = Limits(total_send_buffer_bytes=BUDGET, burst=10_000)
    sync_server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), limits=limits)
    async with sync_server.run(port=0) as url:
        writer, watcher = await open_raw_device(url, 1), await open_raw_device(url, 2)
        watching = asyncio.create_task(pushes_until(watcher, "done"))
        stalled = [await stalled_device(url, device_id) for device_id in (3, 4, 5)]
        writes = 0
        while sync_server.connection_count > 2:  # each round trip is the event that advances
            writes += 1
            assert writes < 2_000, "the stalled devices were never cut"
            await writer.set(f"k{writes % 10}", incompressible(30_000))
            assert sync_server.queued_bytes <= BUDGET
        assert [await close_code(connection) for connection in stalled] == [
            (1013, "send queue full")
        ] * 3
        # The reader that keeps up got every push, in order, and is still served.
        await writer.set("done", 1)
        revisions = [push["server_revision"] for push in await watching]
        assert revisions == list(range(1, writes + 2))
        await writer.connection.close()
        await watcher.connection.close()
    assert sync_server.queued_bytes == 0


async def test_the_total_returns_to_zero_once_every_connection_closed(tmp_path: Path) -> None:
    limits = Limits(burst=10_000)
    sync_server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), limits=limits)
    async with sync_server.run(port=0) as url:
        writer = await open_raw_device(url, 1)
        stalled = [await stalled_device(url, device_id) for device_id in range(2, 12)]
        writes = 0
        while sync_server.queued_bytes == 0:  # until the kernel's buffers are full
            writes += 1
            assert writes < 2_000, "nothing was ever queued"
            await writer.set(f"k{writes % 5}", incompressible(30_000))
        await writer.connection.close()
        for connection in stalled:
            await connection.close()  # with pushes unread, queued on the server
    assert sync_server.connection_count == 0
    assert sync_server.queued_bytes == 0


async def test_a_frame_that_cannot_fit_the_total_cuts_the_device_it_is_for(
    tmp_path: Path,
) -> None:
    limits = Limits(total_send_buffer_bytes=10)  # less than a welcome
    sync_server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), limits=limits)
    async with sync_server.run(port=0) as url, connect(url) as connection:
        await connection.send(json.dumps({"type": "hello", "device_id": 1, "since": 0}))
        assert await close_code(connection) == (1013, "send queue full")
    assert sync_server.queued_bytes == 0
