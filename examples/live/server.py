"""The live server: a WebSocket endpoint in front of a :class:`ServerDatabase`.

Each connection's messages are handled one at a time, in order. A ``set`` is
committed (revision and value in one transaction), then pushed to every
subscribed connection (the writer's included), then acknowledged. All sends
go through :func:`websockets.asyncio.server.broadcast`, which writes at once
without awaiting: a commit and its pushes happen in one step of the event
loop, so every connection sees the pushes in revision order, and a ``hello``
replay is written before any later push.

Example:
    >>> import asyncio
    >>> from examples.live.server import LiveServer
    >>> async def main() -> None:
    ...     async with LiveServer(":memory:") as server:
    ...         print(server.url.startswith("ws://127.0.0.1:"))
    >>> asyncio.run(main())
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from examples.live.database import Change, ServerDatabase
from examples.live.protocol import (
    AckMessage,
    ErrorMessage,
    GetMessage,
    HelloMessage,
    ProtocolError,
    PushMessage,
    ReadyMessage,
    ServerMessage,
    SetMessage,
    ValueMessage,
    canonical_json,
    decode_client_message,
    encode,
)

__all__ = ["LiveServer", "SetHook"]

logger = logging.getLogger("examples.live.server")

#: ``async (set_message) -> None``: awaited around a commit; lets tests and the demo hold it.
SetHook = Callable[[SetMessage], Awaitable[None]]

# Frames above this are refused by websockets itself (close code 1009); frames
# between MAX_MESSAGE_BYTES and this get a polite ``too_large`` error instead.
_FRAME_LIMIT = 1024 * 1024
# A connection whose unsent data passes this is cut: it will reconnect and replay.
_WRITE_BUFFER_LIMIT = 8 * 1024 * 1024


class LiveServer:
    """Serves the protocol of :mod:`examples.live.protocol` on one host and port.

    Args:
        database: the SQLite file (created if missing) or ``":memory:"``. The
            server opens it in :meth:`start` and closes it in :meth:`stop`.
        before_commit: awaited before a ``set`` is committed. If the connection
            closes meanwhile, the set is dropped uncommitted, as if the server
            had died.
        after_commit: awaited after a commit, before its pushes and ack. If
            the writer's connection closes meanwhile, the other devices still
            get the push; the writer never gets its ack (it learns the change
            from the replay when it reconnects).
        trace: called with a line of text for every commit, replay and error.

    Example:
        >>> import asyncio
        >>> from examples.live.server import LiveServer
        >>> async def main() -> None:
        ...     server = LiveServer()
        ...     await server.start(port=0)
        ...     print(server.database.head())
        ...     await server.stop()
        >>> asyncio.run(main())
        0
    """

    def __init__(
        self,
        database: str | Path = ":memory:",
        *,
        before_commit: SetHook | None = None,
        after_commit: SetHook | None = None,
        trace: Callable[[str], None] | None = None,
    ) -> None:
        self._path = database
        self._before_commit = before_commit
        self._after_commit = after_commit
        self._trace = trace
        self._database: ServerDatabase | None = None
        self._server: Server | None = None
        self._subscribers: set[ServerConnection] = set()
        self._connections: set[ServerConnection] = set()

    # -- life cycle --------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Open the database and listen; ``port=0`` lets the OS choose (see :attr:`port`).

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     server = LiveServer()
            ...     await server.start()
            ...     print(server.port > 0)
            ...     await server.stop()
            >>> asyncio.run(main())
            True
        """
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._database = ServerDatabase(self._path)
        try:
            self._server = await serve(
                self._serve_connection,
                host,
                port,
                max_size=_FRAME_LIMIT,
                ping_interval=20,
                close_timeout=2,
                open_timeout=5,
            )
        except BaseException:
            self._database.close()
            self._database = None
            raise

    async def stop(self) -> None:
        """Close every connection, wait for their handlers, close the database.

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     server = LiveServer()
            ...     await server.start()
            ...     await server.stop()
            ...     await server.stop()  # harmless
            >>> asyncio.run(main())
        """
        server, self._server = self._server, None
        try:
            if server is not None:
                await _stop_accepting(server)
                server.close()
                await server.wait_closed()
        finally:
            if self._database is not None:
                self._database.close()
                self._database = None

    async def __aenter__(self) -> LiveServer:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        """The TCP port the server listens on.

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         print(isinstance(server.port, int))
            >>> asyncio.run(main())
            True
        """
        if self._server is None:
            raise RuntimeError("the server is not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The ``ws://`` address devices connect to.

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         print(server.url == f"ws://127.0.0.1:{server.port}")
            >>> asyncio.run(main())
            True
        """
        if self._server is None:
            raise RuntimeError("the server is not started")
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"ws://{host}:{port}"

    @property
    def database(self) -> ServerDatabase:
        """The open database (while the server runs), e.g. to compare devices with it.

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         print(server.database.snapshot())
            >>> asyncio.run(main())
            {}
        """
        if self._database is None:
            raise RuntimeError("the server is not started")
        return self._database

    @property
    def connection_count(self) -> int:
        """How many WebSocket connections are open now.

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         print(server.connection_count)
            >>> asyncio.run(main())
            0
        """
        return len(self._connections)

    def drop_connections(self) -> None:
        """Cut every connection at once, without a closing handshake (pull the plug).

        Example:
            >>> import asyncio
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         server.drop_connections()  # none open: nothing to do
            >>> asyncio.run(main())
        """
        for connection in list(self._connections):
            connection.transport.abort()

    # -- one connection ------------------------------------------------------------

    async def _serve_connection(self, connection: ServerConnection) -> None:
        self._connections.add(connection)
        try:
            async for data in connection:
                await self._handle(connection, data)
        except ConnectionClosed:
            pass  # a dropped client is normal; it will reconnect and replay
        finally:
            self._subscribers.discard(connection)
            self._connections.discard(connection)

    async def _handle(self, connection: ServerConnection, data: str | bytes) -> None:
        try:
            message = decode_client_message(data)
        except ProtocolError as error:
            self._say(f"refused a message: {error.code}")
            self._send(connection, ErrorMessage(error.request_id, error.code, error.detail))
            return
        try:
            if isinstance(message, HelloMessage):
                self._hello(connection, message)
            elif isinstance(message, GetMessage):
                self._get(connection, message)
            else:
                await self._set(connection, message)
        except Exception:
            # The server must outlive any one message: report it and go on.
            logger.exception("failed to handle %s", type(message).__name__)
            request_id = None if isinstance(message, HelloMessage) else message.request_id
            self._send(connection, ErrorMessage(request_id, "internal", "the server failed"))

    def _hello(self, connection: ServerConnection, hello: HelloMessage) -> None:
        database = self.database
        head = database.head()
        # A cursor from the future means the database was replaced: replay it all.
        since = hello.since if hello.since <= head else 0
        replayed = 0
        for change in database.changes_since(since):
            self._send(connection, _push_of(change))
            replayed += 1
        self._subscribers.add(connection)
        self._send(connection, ReadyMessage(head))
        self._say(f"hello since={hello.since}: replayed {replayed}")

    def _get(self, connection: ServerConnection, get: GetMessage) -> None:
        change = self.database.current(get.item)
        if change is None:
            self._send(connection, ValueMessage(get.request_id, get.item, None, -1))
        else:
            value = json.loads(change.value)
            self._send(
                connection, ValueMessage(get.request_id, get.item, value, change.server_revision)
            )

    async def _set(self, connection: ServerConnection, message: SetMessage) -> None:
        if self._before_commit is not None and not await _unless_closed(
            connection, self._before_commit(message)
        ):
            return
        change = self.database.write(
            message.item,
            canonical_json(message.value),
            local_revision=message.local_revision,
            device_id=message.device_id,
        )
        self._say(f"commit {message.item}={change.value} rev {change.server_revision}")
        acknowledge = self._after_commit is None or await _unless_closed(
            connection, self._after_commit(message)
        )
        broadcast(self._subscribers, encode(_push_of(change)))
        if acknowledge:
            self._send(
                connection,
                AckMessage(message.request_id, message.item, message.value, change.server_revision),
            )
        for subscriber in list(self._subscribers):
            if subscriber.transport.get_write_buffer_size() > _WRITE_BUFFER_LIMIT:
                subscriber.transport.abort()

    def _send(self, connection: ServerConnection, message: ServerMessage) -> None:
        broadcast([connection], encode(message))

    def _say(self, line: str) -> None:
        if self._trace is not None:
            self._trace(line)


def _push_of(change: Change) -> PushMessage:
    return PushMessage(
        change.item,
        json.loads(change.value),
        change.server_revision,
        change.local_revision,
        change.device_id,
    )


async def _stop_accepting(server: Server) -> None:
    """Stop accepting, then let connections accepted already get their transports.

    On CPython 3.11 a connection accepted in the loop turn where the server
    closes fails to get its transport (``Server._attach`` asserts) and leaks
    its socket. So: stop reading the listening sockets first, and give the
    accepted ones two turns of the loop to be set up; ``close()`` then
    closes them like any other.
    """
    loop = asyncio.get_running_loop()
    for listening in server.sockets:
        with contextlib.suppress(NotImplementedError, ValueError):
            loop.remove_reader(listening.fileno())
    for _ in range(2):
        await asyncio.sleep(0)


async def _unless_closed(connection: ServerConnection, hook: Awaitable[None]) -> bool:
    """Await ``hook`` unless the connection closes first; return whether the hook finished."""
    hook_task = asyncio.ensure_future(hook)
    closed_task = asyncio.ensure_future(connection.wait_closed())
    try:
        await asyncio.wait({hook_task, closed_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (hook_task, closed_task):
            task.cancel()
        await asyncio.wait({hook_task, closed_task})
    if hook_task.cancelled():
        return False
    hook_task.result()  # the hook's own error, if any
    return True
