"""The send path: frames written at once to a connection that keeps up, queued for one that lags.

Either way every device gets every frame, in order; and permessage-deflate is
negotiated only when the server is asked to.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from urllib.parse import urlparse

from websockets.asyncio.client import connect

from optisync.server import Limits, SqliteStorage, SyncServer
from tests.server.conftest import open_raw_device


async def test_a_reader_that_lags_then_catches_up_gets_every_push_in_order(tmp_path: Path) -> None:
    limits = Limits(burst=10_000, send_buffer_bytes=64 << 20)  # room past the kernel's buffers
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), limits=limits)
    async with server.run(port=0) as url:
        writer = await open_raw_device(url, 1)
        address = urlparse(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # lags at once
        sock.connect((address.hostname, address.port))
        async with connect(url, sock=sock, max_queue=1) as lagging:
            await lagging.send(json.dumps({"type": "hello", "device_id": 2, "since": 0}))
            queued = 0
            for n in range(1, 301):
                ack = await writer.set(f"k{n % 7}", "x" * 40_000, local_revision=n)
                assert ack["server_revision"] == n
                queued = max(queued, server.queued_bytes)
            assert queued > 0  # the lagging reader's frames went through its queue
            revisions = []
            while len(revisions) < 300:
                message = json.loads(await lagging.recv())
                if message["type"] == "push":
                    revisions.append(message["server_revision"])
            assert revisions == list(range(1, 301))
        await writer.connection.close()
    assert server.queued_bytes == 0


async def test_permessage_deflate_is_off_unless_asked_for(tmp_path: Path) -> None:
    for compression, negotiated in ((False, False), (True, True)):
        server = SyncServer(SqliteStorage(":memory:"), compression=compression)
        async with server.run(port=0) as url, connect(url) as connection:  # offers deflate
            assert connection.response is not None
            extensions = connection.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is negotiated
            await connection.send(json.dumps({"type": "hello", "device_id": 1, "since": 0}))
            assert json.loads(await connection.recv())["type"] == "welcome"


def _frames(written: bytes) -> list[bytes]:
    """The payloads of the unmasked text frames in ``written`` (a server's bytes)."""
    payloads = []
    at = 0
    while at < len(written):
        assert written[at] == 0x81, written[at : at + 16]  # final text frame
        length, at = written[at + 1], at + 2
        assert length < 128  # unmasked
        if length == 126:
            length, at = int.from_bytes(written[at : at + 2]), at + 2
        elif length == 127:
            length, at = int.from_bytes(written[at : at + 8]), at + 8
        payloads.append(written[at : at + length])
        at += length
    return payloads


async def test_a_batchs_push_and_its_ack_leave_in_one_write(tmp_path: Path) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"))
    async with server.run(port=0) as url:
        device = await open_raw_device(url, 1)
        transport = server._peers[1].connection._connection.transport  # type: ignore[attr-defined]
        writes: list[bytes] = []
        write = transport.write
        transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]
        ack = await device.set("k", "v")
        written = list(writes)
        await device.connection.close()
    assert ack["server_revision"] == 1
    # The writer's own push, then its ack, framed by the server itself: one system call.
    assert len(written) == 1
    assert [json.loads(frame)["type"] for frame in _frames(written[0])] == ["push", "ack"]


async def test_frames_of_every_header_length_arrive_intact(tmp_path: Path) -> None:
    # Payload lengths around the 7-bit, 16-bit and 64-bit length forms of a frame header.
    limits = Limits(max_message_bytes=200_000, max_frame_bytes=300_000)
    for compression in (False, True):
        server = SyncServer(SqliteStorage(":memory:"), limits=limits, compression=compression)
        async with server.run(port=0) as url:
            writer = await open_raw_device(url, 1)
            async with connect(url, max_size=None) as reader:
                await reader.send(json.dumps({"type": "hello", "device_id": 2, "since": 0}))
                while json.loads(await reader.recv())["type"] != "ready":
                    pass
                sizes = [1, 125, 126, 65_535, 65_536, 150_000]
                for n, size in enumerate(sizes, 1):
                    # The push's frame is the value and about 90 bytes around it.
                    await writer.set(f"k{n}", "x" * (size - 90 if size > 90 else size), n)
                values = [json.loads(await reader.recv())["value"] for _ in sizes]
            await writer.connection.close()
        assert [len(value) for value in values] == [s - 90 if s > 90 else s for s in sizes]
