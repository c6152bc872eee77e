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
