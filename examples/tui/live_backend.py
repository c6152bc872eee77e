"""The ``--live`` backend: the demo against the WebSocket server of ``examples.live``.

It speaks the JSON protocol of :mod:`examples.live.protocol` over two
connections: the app's (which says ``hello`` and so receives every push) and
the "other device"'s (which only writes). The server knows nothing of the
demo's controls, so they act on the app's side of the wire:

* latency delays each response (an ``ack`` or a ``value``) before the store
  sees it; the server has committed the write already, as the simulated one;
* "next request fails" fails the request without sending it;
* "push database changes" off drops the pushes before the store; the
  database panel still shows them, since it is a view of the server.

Without a URL it starts a :class:`~examples.live.server.LiveServer` on the
loopback interface, whose SQLite file keeps the database across restarts.
A lost connection fails the requests in flight; this backend does not
reconnect (the live demo's own client does).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from examples.live.protocol import (
    AckMessage,
    ErrorMessage,
    GetMessage,
    HelloMessage,
    PushMessage,
    ReadyMessage,
    ServerMessage,
    SetMessage,
    ValueMessage,
    decode_server_message,
    encode,
)
from examples.live.server import LiveServer
from examples.tui.backend import RequestFailedError, ServerRecord
from examples.tui.model import KEY
from examples.tui.simulated import DEFAULT_LATENCY, OTHER_DEVICE_ID, Wait

__all__ = ["LiveBackend"]

ITEM = KEY
"""The item the demo reads and writes on the live server."""


class _Connection:
    """One WebSocket to the server: requests matched to answers, pushes to a callback."""

    def __init__(self, socket: ClientConnection, on_push: Callable[[PushMessage], None]) -> None:
        self._socket = socket
        self._on_push = on_push
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[ServerMessage]] = {}
        # Made by hello(), which awaits it: a connection that never says hello
        # (the other device's) must not hold a future that fails unseen on close.
        self._ready: asyncio.Future[ReadyMessage] | None = None
        self._reader = asyncio.create_task(self._read())

    async def request(self, make: Callable[[int], SetMessage | GetMessage]) -> ServerMessage:
        """Send the message ``make(request_id)`` and return the server's answer to it."""
        request_id = next(self._ids)
        answer: asyncio.Future[ServerMessage] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = answer
        try:
            await self._socket.send(encode(make(request_id)))
            return await answer
        except ConnectionClosed as error:
            raise RequestFailedError(f"connection lost: {error}") from error
        finally:
            self._waiting.pop(request_id, None)
            _forget(answer)

    async def hello(self) -> ReadyMessage:
        """Subscribe to pushes (the server replays every change first)."""
        ready: asyncio.Future[ReadyMessage] = asyncio.get_running_loop().create_future()
        self._ready = ready
        try:
            await self._socket.send(encode(HelloMessage(since=0)))
            return await ready
        finally:
            _forget(ready)

    async def close(self) -> None:
        await self._socket.close()
        self._reader.cancel()
        await asyncio.wait({self._reader})

    async def _read(self) -> None:
        try:
            async for data in self._socket:
                self._dispatch(decode_server_message(data))
        except ConnectionClosed:
            pass
        finally:
            lost = RequestFailedError("connection to the live server lost")
            for answer in self._waiting.values():
                if not answer.done():
                    answer.set_exception(lost)
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(lost)

    def _dispatch(self, message: ServerMessage) -> None:
        if isinstance(message, PushMessage):
            self._on_push(message)
        elif isinstance(message, ReadyMessage):
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        elif message.request_id is not None:
            answer = self._waiting.get(message.request_id)
            if answer is not None and not answer.done():
                answer.set_result(message)


def _forget(future: asyncio.Future[ServerMessage] | asyncio.Future[ReadyMessage]) -> None:
    """Drop a future its awaiter has left (the send failed, or it was cancelled).

    The reader may still fail it when the connection ends; an exception set on
    a future nobody awaits is reported as "never retrieved". Its awaiter has
    already raised its own error, so the future's is retrieved here, unseen.
    """
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def _record_of(push: PushMessage) -> ServerRecord:
    return ServerRecord(
        liked=bool(push.value),
        revision=push.server_revision,
        device_id=push.device_id,
        local_revision=push.local_revision,
    )


class LiveBackend:
    """A :class:`~examples.tui.backend.Backend` talking to a live WebSocket server.

    Args:
        url: the server (``ws://host:port``); None starts one in this process.
        database: the SQLite file of the server started when ``url`` is None.
        latency: seconds each response is held before the store sees it.
        wait: how to wait; ``asyncio.sleep`` by default.

    Example:
        >>> import asyncio
        >>> async def main() -> None:
        ...     backend = LiveBackend(latency=0)
        ...     await backend.start()
        ...     record = await backend.write(True, local_revision=1, device_id=5)
        ...     print(record.revision, backend.database.liked)
        ...     await backend.aclose()
        >>> asyncio.run(main())
        1 True
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        database: Path | str = ":memory:",
        latency: float = DEFAULT_LATENCY,
        wait: Wait = asyncio.sleep,
    ) -> None:
        self.url = url
        self.latency = latency
        self.push_enabled = True
        self.fail_next_request = False
        self._database_path = database
        self._wait = wait
        self._record = ServerRecord()
        self._server: LiveServer | None = None
        self._app: _Connection | None = None
        self._other: _Connection | None = None
        self._push_listeners: dict[int, Callable[[ServerRecord], object]] = {}
        self._watchers: dict[int, Callable[[ServerRecord], object]] = {}
        self._tokens = itertools.count()
        self._other_local_revision = 0

    @property
    def database(self) -> ServerRecord:
        """The server's record of the item, as its pushes told."""
        return self._record

    @property
    def other_device_id(self) -> int:
        """The id the other device's writes carry."""
        return OTHER_DEVICE_ID

    @property
    def description(self) -> str:
        """The live server and its URL, and whether this process started it."""
        if self.url is None:
            return "live server (not started)"
        where = " (started in this process)" if self._server is not None else ""
        return f"live server {self.url}{where}"

    def subscribe_pushes(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Hand the server's pushes to ``listener`` while pushes are on."""
        return self._add(self._push_listeners, listener)

    def watch_database(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Tell ``listener`` about every change the server pushes."""
        return self._add(self._watchers, listener)

    async def start(self) -> None:
        """Start the server if there is no URL, connect both devices, catch up."""
        if self.url is None:
            self._server = LiveServer(self._database_path)
            await self._server.start()
            self.url = self._server.url
        self._app = _Connection(await connect(self.url), self._on_push)
        self._other = _Connection(await connect(self.url), lambda push: None)
        await self._app.hello()

    async def aclose(self) -> None:
        """Close both connections, and the server if this backend started it."""
        for connection in (self._app, self._other):
            if connection is not None:
                await connection.close()
        self._app = self._other = None
        if self._server is not None:
            await self._server.stop()
            self._server = None
        self._push_listeners.clear()
        self._watchers.clear()

    async def write(self, liked: bool, *, local_revision: int, device_id: int) -> ServerRecord:
        """Send a ``set``; return its ``ack`` as a record, after the latency."""
        if self.fail_next_request:
            self.fail_next_request = False
            await self._wait(self.latency)
            raise RequestFailedError("the request failed (simulated, never sent)")
        answer = await self._set(self._connected(self._app), liked, local_revision, device_id)
        await self._wait(self.latency)
        return answer

    async def read(self) -> ServerRecord:
        """Send a ``get``; return its ``value`` as a record, after the latency."""
        answer = await self._connected(self._app).request(lambda rid: GetMessage(rid, ITEM))
        await self._wait(self.latency)
        if not isinstance(answer, ValueMessage):
            raise RequestFailedError(f"the server refused the read: {answer}")
        if answer.server_revision == self._record.revision:
            return self._record
        return ServerRecord(liked=bool(answer.value), revision=max(answer.server_revision, 0))

    async def write_as_other_device(self, liked: bool) -> ServerRecord:
        """Send a ``set`` over the other device's connection."""
        self._other_local_revision += 1
        return await self._set(
            self._connected(self._other), liked, self._other_local_revision, OTHER_DEVICE_ID
        )

    async def _set(
        self, connection: _Connection, liked: bool, local_revision: int, device_id: int
    ) -> ServerRecord:
        answer = await connection.request(
            lambda rid: SetMessage(rid, ITEM, liked, local_revision, device_id)
        )
        if isinstance(answer, ErrorMessage):
            raise RequestFailedError(f"the server refused the write: {answer.message}")
        if not isinstance(answer, AckMessage):
            raise RequestFailedError(f"unexpected answer: {answer}")
        return ServerRecord(
            liked=bool(answer.value),
            revision=answer.server_revision,
            device_id=device_id,
            local_revision=local_revision,
        )

    def _on_push(self, push: PushMessage) -> None:
        if push.item != ITEM or push.server_revision <= self._record.revision:
            return
        self._record = _record_of(push)
        for watcher in list(self._watchers.values()):
            watcher(self._record)
        if self.push_enabled:
            for listener in list(self._push_listeners.values()):
                listener(self._record)

    def _add(
        self,
        listeners: dict[int, Callable[[ServerRecord], object]],
        listener: Callable[[ServerRecord], object],
    ) -> Callable[[], None]:
        token = next(self._tokens)
        listeners[token] = listener

        def unsubscribe() -> None:
            listeners.pop(token, None)

        return unsubscribe

    @staticmethod
    def _connected(connection: _Connection | None) -> _Connection:
        if connection is None:
            raise RequestFailedError("not connected to the live server")
        return connection
