"""The demo's network: a TCP link between one device and the server that the script can cut.

A :class:`Link` listens on 127.0.0.1 (a port the OS picks) and forwards each
connection to the server's current port. :meth:`Link.down` cuts every
connection through it, as a lost network would, and holds new ones (the
device's reconnect waits in its handshake) until :meth:`Link.up`: no
reconnect backoff to wait out, and the script decides when a device is back.

Example:
    >>> import asyncio
    >>> from examples.live.network import Link
    >>> async def main() -> None:
    ...     async with Link(lambda: 9) as link:
    ...         print(link.url.startswith("ws://127.0.0.1:"))
    >>> asyncio.run(main())
    True
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Link"]


class Link:
    """Forwards connections to ``127.0.0.1:target_port()``; can go down and up again."""

    def __init__(self, target_port: Callable[[], int]) -> None:
        self._target_port = target_port
        self._up = asyncio.Event()
        self._up.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Server | None = None
        self._closed = False
        self.url = ""

    async def __aenter__(self) -> Link:
        self._listener = await asyncio.start_server(self._forward, "127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{self._listener.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closed = True
        self._up.set()
        self._cut()
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def down(self) -> None:
        """Cut every connection through the link now; hold new ones until :meth:`up`."""
        self._up.clear()
        self._cut()

    def up(self) -> None:
        """Let connections through again (those held meanwhile included)."""
        self._up.set()

    def _cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def _start(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A connection made while the link is down waits here, uncut: to the
        # device it is a handshake that takes long, not a failure to back off from.
        await self._up.wait()
        if self._closed:
            writer.transport.abort()
            return
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port())
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            self._start(asyncio.create_task(self._pipe(source, sink)))

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        sink.transport.abort()
