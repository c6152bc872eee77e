"""The ``--live`` backend: the demo against the library's server, through :mod:`optisync.client`.

Two :class:`~optisync.client.SyncClient` connections: the app's (its pushes
feed the app's store) and the "other device"'s (it only writes). The server
knows nothing of the demo's controls, so they act on the app's side of the
wire:

* latency delays each response (an ack or a value) before the store sees
  it; the server has committed the write already, as the simulated one;
* "next request fails" fails the request without sending it;
* "push database changes" off drops the pushes before the store; the
  database panel still shows them, since it is a view of the server.

The server tells a device only its own writes' device id: the backend fills
in the writers it knows (the app's, and the other device's from its acks);
a change written elsewhere shows device 0, "another device".

Without a URL it starts a :class:`~optisync.server.SyncServer` on the loopback
interface, whose SQLite file keeps the database across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from examples.tui.backend import RequestFailedError, ServerRecord
from examples.tui.model import KEY
from examples.tui.simulated import DEFAULT_LATENCY, OTHER_DEVICE_ID, Wait
from optisync import Store
from optisync.client import ClientConnectionError, RequestRefusedError, SyncClient, Traced
from optisync.revisions import random_device_id
from optisync.server import SqliteStorage, SyncServer
from optisync.wire import Push

__all__ = ["LiveBackend"]

ITEM = KEY
"""The item the demo reads and writes on the live server."""


def _ignore_value(state: None, key: str, value: Any, revision: int) -> None:
    return None  # the connections' own stores hold nothing: the app's store does


class LiveBackend:
    """A :class:`~examples.tui.backend.Backend` talking to a live optisync server.

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
        ...     print(record.revision, record.device_id)
        ...     await backend.aclose()
        >>> asyncio.run(main())
        1 5
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
        self._started_server = False
        self._running = contextlib.AsyncExitStack()
        self._app: SyncClient[None] | None = None
        self._other: SyncClient[None] | None = None
        # The app's connection has a device id of its own; its writes are the app's.
        self._connection_id = random_device_id()
        self._app_device_id = 0
        self._writers: dict[int, tuple[int, int]] = {}  # revision -> device id, local revision
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
        where = " (started in this process)" if self._started_server else ""
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
            server = SyncServer(SqliteStorage(self._database_path))
            self.url = await self._running.enter_async_context(server.run(port=0))
            self._started_server = True
        self._app = await self._connect(self._connection_id, self._on_trace)
        self._other = await self._connect(OTHER_DEVICE_ID, None)

    async def _connect(
        self, device_id: int, trace: Callable[[Traced], object] | None
    ) -> SyncClient[None]:
        assert self.url is not None
        store = await self._running.enter_async_context(Store(None, device_id=device_id))
        client = SyncClient(store, self.url, apply_value=_ignore_value, trace=trace)
        await self._running.enter_async_context(client)
        try:
            async with asyncio.timeout(10):
                await client.wait_online()
        except TimeoutError:
            raise OSError(f"no answer from {self.url}") from None
        return client

    async def aclose(self) -> None:
        """Close both connections, and the server if this backend started it."""
        await self._running.aclose()
        self._app = self._other = None
        self._push_listeners.clear()
        self._watchers.clear()

    async def write(self, liked: bool, *, local_revision: int, device_id: int) -> ServerRecord:
        """Send a ``set`` as the app; return its ack as a record, after the latency."""
        if self.fail_next_request:
            self.fail_next_request = False
            await self._wait(self.latency)
            raise RequestFailedError("the request failed (simulated, never sent)")
        self._app_device_id = device_id
        record = await self._set(self._app, self._connection_id, liked, local_revision, device_id)
        await self._wait(self.latency)
        return record

    async def read(self) -> ServerRecord:
        """Send a ``get``; return its value as a record, after the latency."""
        try:
            value, revision = await self._connected(self._app).get(ITEM)
        except (ClientConnectionError, RequestRefusedError) as error:
            raise RequestFailedError(f"the read failed: {error}") from error
        await self._wait(self.latency)
        if revision == self._record.revision:
            return self._record
        return ServerRecord(liked=bool(value), revision=max(revision, 0))

    async def write_as_other_device(self, liked: bool) -> ServerRecord:
        """Send a ``set`` over the other device's connection."""
        self._other_local_revision += 1
        return await self._set(
            self._other, OTHER_DEVICE_ID, liked, self._other_local_revision, OTHER_DEVICE_ID
        )

    async def _set(
        self,
        client: SyncClient[None] | None,
        connection_id: int,
        liked: bool,
        local_revision: int,
        device_id: int,
    ) -> ServerRecord:
        """Write over ``client`` (device id ``connection_id``) on behalf of ``device_id``."""
        send = self._connected(client).sender(ITEM)
        revisions: list[int] = []
        try:
            stored = await send(liked, local_revision, connection_id, revisions.append)
        except (ClientConnectionError, RequestRefusedError) as error:
            raise RequestFailedError(f"the write failed: {error}") from error
        record = ServerRecord(
            liked=bool(stored),
            revision=revisions[0],
            device_id=device_id,
            local_revision=local_revision,
        )
        self._learn_writer(record)
        return record

    def _learn_writer(self, record: ServerRecord) -> None:
        assert record.device_id is not None
        self._writers[record.revision] = (record.device_id, record.local_revision)
        if record.revision == self._record.revision and self._record.device_id == 0:
            # The push came first, on the other connection: now its writer is known.
            self._record = record
            self._notify(self._watchers)

    def _on_trace(self, event: Traced) -> None:
        push = event.message
        if not isinstance(push, Push) or push.key != ITEM:
            return
        if push.server_revision <= self._record.revision:
            return
        writer = self._writers.get(push.server_revision)
        if writer is None and push.device_id == self._connection_id:
            writer = (self._app_device_id, push.local_revision)
        device_id, local_revision = writer or (0, 0)
        self._record = ServerRecord(
            liked=bool(push.value),
            revision=push.server_revision,
            device_id=device_id,
            local_revision=local_revision,
        )
        self._notify(self._watchers)
        if self.push_enabled:
            self._notify(self._push_listeners)

    def _notify(self, listeners: dict[int, Callable[[ServerRecord], object]]) -> None:
        for listener in list(listeners.values()):
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
    def _connected(client: SyncClient[None] | None) -> SyncClient[None]:
        if client is None:
            raise RequestFailedError("not connected to the live server")
        return client
