"""A device: an optisync :class:`~optisync.Store` kept live over a WebSocket.

:class:`LiveStore` sends each change as a ``set`` and awaits its ``ack``
(``optimistic_sync_with_push``), hands every ``push`` to ``server_push``,
reconnects with backoff (``hello`` with its cursor gets the missed changes
replayed), and keeps its state, revisions and device id in a
:class:`~examples.live.persistence.DeviceStorage` file.

A request still waiting for its ack when the connection drops fails; its
``on_finish`` then reloads the item from the server (at once, or as soon as
the device is connected again), unless the user has changed it since.

Example:
    >>> import asyncio
    >>> from examples.live.client import LiveStore
    >>> from examples.live.server import LiveServer
    >>> async def main() -> None:
    ...     async with LiveServer() as server:
    ...         async with LiveStore(server.url) as phone, LiveStore(server.url) as laptop:
    ...             await phone.wait_ready()
    ...             await laptop.wait_ready()
    ...             await phone.toggle("like")
    ...             await laptop.wait_for(lambda state: state.value("like") is True)
    ...             print(phone.state.value("like"), laptop.state.revisions)
    >>> asyncio.run(main())
    True {'like': 1}
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

from examples.live.persistence import DeviceStorage, SavedItem
from examples.live.protocol import (
    MAX_NESTING,
    MAX_VALUE_BYTES,
    AckMessage,
    ErrorMessage,
    GetMessage,
    HelloMessage,
    JsonValue,
    ProtocolError,
    PushMessage,
    ReadyMessage,
    ServerMessage,
    SetMessage,
    ValueMessage,
    canonical_json,
    decode_server_message,
    encode,
    is_valid_item,
    nesting_depth,
)
from optisync import PushMetadata, PushOutcome, Store, StoreClosedError

__all__ = [
    "Backoff",
    "ConnectionLostError",
    "LiveState",
    "LiveStore",
    "NotConnectedError",
    "RequestRejectedError",
    "exponential_backoff",
]

#: ``async (attempt) -> None``: waits before reconnection attempt number ``attempt`` (1, 2, ...).
Backoff = Callable[[int], Awaitable[None]]

_FRAME_LIMIT = 1024 * 1024


class NotConnectedError(ConnectionError):
    """A change could not be sent: the device is offline.

    Example:
        >>> from examples.live.client import NotConnectedError
        >>> issubclass(NotConnectedError, ConnectionError)
        True
    """


class ConnectionLostError(ConnectionError):
    """The connection closed before the server acknowledged the request.

    The server may or may not have committed it; the reload (and the replay)
    tell which.

    Example:
        >>> from examples.live.client import ConnectionLostError
        >>> issubclass(ConnectionLostError, ConnectionError)
        True
    """


class RequestRejectedError(RuntimeError):
    """The server answered a request with an ``error``.

    Example:
        >>> from examples.live.client import RequestRejectedError
        >>> from examples.live.protocol import ErrorMessage
        >>> str(RequestRejectedError(ErrorMessage(1, "bad_field", "no")))
        'bad_field: no'
    """

    def __init__(self, error: ErrorMessage) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def exponential_backoff(
    first: float = 0.05,
    factor: float = 2.0,
    maximum: float = 2.0,
    jitter: float = 0.5,
    rng: random.Random | None = None,
) -> Backoff:
    """Wait ``first * factor**(attempt-1)`` seconds (at most ``maximum``), +/- ``jitter``.

    Jitter spreads the reconnections of many devices after a server restart.

    Example:
        >>> import asyncio
        >>> from examples.live.client import exponential_backoff
        >>> asyncio.run(exponential_backoff(first=0.001)(1))
    """
    chooser = rng if rng is not None else random.Random()

    async def wait(attempt: int) -> None:
        delay = min(maximum, first * factor ** max(0, attempt - 1))
        await asyncio.sleep(delay * (1 + jitter * (2 * chooser.random() - 1)))

    return wait


@attrs.frozen
class LiveState:
    """A device's state: each item's value, and the server revision it came with.

    Example:
        >>> from examples.live.client import LiveState
        >>> state = LiveState().with_value("like", True)
        >>> state.value("like"), state.revisions
        (True, {})
        >>> state.with_server_value("like", False, 3).revisions
        {'like': 3}
    """

    values: Mapping[str, JsonValue] = attrs.field(factory=dict)
    revisions: Mapping[str, int] = attrs.field(factory=dict)

    def value(self, item: str, default: JsonValue = None) -> JsonValue:
        """The value of ``item`` (``default`` if it has none).

        Example:
            >>> from examples.live.client import LiveState
            >>> LiveState({"like": True}).value("like"), LiveState().value("like", False)
            (True, False)
        """
        return self.values.get(item, default)

    def with_value(self, item: str, value: JsonValue) -> LiveState:
        """This state with ``item`` set to ``value`` (an optimistic change).

        Example:
            >>> from examples.live.client import LiveState
            >>> LiveState().with_value("color", "red").values
            {'color': 'red'}
        """
        return attrs.evolve(self, values={**self.values, item: value})

    def with_server_value(self, item: str, value: JsonValue, revision: int) -> LiveState:
        """This state with the server's ``value`` of ``item`` at ``revision`` (-1: no value).

        Example:
            >>> from examples.live.client import LiveState
            >>> state = LiveState().with_server_value("color", "red", 4)
            >>> state.values, state.revisions
            ({'color': 'red'}, {'color': 4})
            >>> state.with_server_value("color", None, -1).values
            {}
        """
        values = {**self.values, item: value}
        if revision == -1:
            del values[item]
        return LiveState(values, {**self.revisions, item: revision})


class LiveStore(Store[LiveState]):
    """A device connected to a :class:`~examples.live.server.LiveServer`.

    Args:
        url: the server, e.g. ``"ws://127.0.0.1:8765"``.
        storage_path: a SQLite file to restore from and save to (created if
            missing); it holds the device id, so ``device_id`` must then be None.
            None: nothing is kept.
        device_id: the device id when there is no storage file; by default a
            new random one. (Not optisync's per-process default: two
            LiveStores in one process are two devices, and must not take each
            other's pushes for self-echoes.)
        ack_timeout: seconds to wait for an ``ack`` before the request fails.
        open_timeout: seconds to wait for the WebSocket handshake.
        backoff: waits between reconnection attempts; default
            :func:`exponential_backoff`.

    Start it with :meth:`start` or ``async with``; it connects, says ``hello``
    with its cursor, and reconnects whenever the connection drops, until
    :meth:`close`. Override the ``on_*`` hooks to watch the traffic.

    Example:
        >>> import asyncio
        >>> from examples.live.client import LiveStore
        >>> async def main() -> None:
        ...     store = LiveStore("ws://127.0.0.1:9", device_id=7)  # nobody listens there
        ...     try:
        ...         await store.set_value("color", "red")
        ...     except ConnectionError as error:
        ...         print(type(error).__name__, store.state.value("color"))
        ...     await store.close()
        >>> asyncio.run(main())
        NotConnectedError red
    """

    def __init__(
        self,
        url: str,
        *,
        storage_path: str | Path | None = None,
        device_id: int | None = None,
        ack_timeout: float = 5.0,
        open_timeout: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        storage: DeviceStorage | None = None
        state = LiveState()
        pending: set[str] = set()
        cursor = 0
        if storage_path is not None:
            if device_id is not None:
                raise ValueError("the device id comes from the storage file: pass one or the other")
            storage = DeviceStorage(storage_path)
            saved = storage.load()
            device_id = saved.device_id
            state = _state_from(saved.items)
            pending = {item for item, saved_item in saved.items.items() if saved_item.pending}
            cursor = saved.cursor
        elif device_id is None:
            device_id = secrets.randbits(53)
        try:
            super().__init__(state, device_id=device_id)
        except BaseException:
            if storage is not None:
                storage.close()
            raise
        self.url = url
        self._storage = storage
        self._ack_timeout = ack_timeout
        self._open_timeout = open_timeout
        self._backoff = backoff if backoff is not None else exponential_backoff()
        self._connection: ClientConnection | None = None
        self._ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[AckMessage]] = {}
        self._request_ids = itertools.count(1)
        # The cursor is the newest revision R such that every change up to R
        # was received (revisions are consecutive); later ones wait in _ahead.
        self._cursor = cursor
        self._ahead: set[int] = set()
        # Items whose value on screen the server may not have.
        self._unconfirmed: set[str] = set(pending)
        # Items to reload, with the local revision at the time of the failure.
        self._reload: dict[str, int] = dict.fromkeys(pending, 0)
        self._waiters: set[asyncio.Future[None]] = set()
        self._dirty: set[str] = set()
        self._saved_cursor = cursor
        self._flush_handle: asyncio.Handle | None = None
        self.subscribe(lambda state: self._pulse())

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (in a task the store owns). Starting twice is harmless.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server:
            ...         store = LiveStore(server.url)
            ...         store.start()
            ...         await store.wait_ready()
            ...         print(store.is_connected)
            ...         await store.close()
            >>> asyncio.run(main())
            True
        """
        if self.is_closed:
            raise RuntimeError("the store is closed")
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Cancel the syncs in flight, disconnect, save, and close the storage file.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> async def main() -> None:
            ...     store = LiveStore("ws://127.0.0.1:9")
            ...     await store.close()
            ...     await store.close()  # harmless
            >>> asyncio.run(main())
        """
        await super().close(timeout=timeout)
        self._pulse()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.wait([runner])
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        storage, self._storage = self._storage, None
        if storage is not None:
            try:
                self._save(storage)
            finally:
                storage.close()

    async def __aenter__(self) -> LiveStore:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what the app uses ---------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """Whether the device is connected and has caught up with the server.

        Example:
            >>> from examples.live.client import LiveStore
            >>> LiveStore("ws://127.0.0.1:9").is_connected
            False
        """
        return self._ready.is_set()

    @property
    def cursor(self) -> int:
        """Every change up to this revision has reached this device (sent in ``hello``).

        Example:
            >>> from examples.live.client import LiveStore
            >>> LiveStore("ws://127.0.0.1:9").cursor
            0
        """
        return self._cursor

    @property
    def unconfirmed_items(self) -> frozenset[str]:
        """Items showing a value the server may not have (a sync or reload is due).

        Example:
            >>> from examples.live.client import LiveStore
            >>> LiveStore("ws://127.0.0.1:9").unconfirmed_items
            frozenset()
        """
        return frozenset(self._unconfirmed | self._reload.keys())

    async def wait_ready(self) -> None:
        """Wait until the device is connected and the replay is done.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server, LiveStore(server.url) as store:
            ...         await store.wait_ready()
            ...         print(store.is_connected)
            >>> asyncio.run(main())
            True
        """
        await self._ready.wait()

    async def wait_for(self, predicate: Callable[[LiveState], bool]) -> LiveState:
        """Wait until the state satisfies ``predicate``; return that state.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> async def main() -> None:
            ...     async with LiveStore("ws://127.0.0.1:9") as store:
            ...         state = await store.wait_for(lambda state: True)
            ...         print(state.values)
            >>> asyncio.run(main())
            {}
        """
        await self.wait_until(lambda: predicate(self.state))
        return self.state

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, checked after anything happens to this device.

        It is checked again after every state change, message, finished sync
        and connection change, so it may read more than the state (revisions,
        :attr:`unconfirmed_items`, :attr:`is_connected`, a server's database).

        Raises:
            StoreClosedError: the store closed first.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> async def main() -> None:
            ...     async with LiveStore("ws://127.0.0.1:9") as store:
            ...         await store.wait_until(lambda: not store.is_connected)
            ...         print("offline")
            >>> asyncio.run(main())
            offline
        """
        while not condition():
            if self.is_closed:
                raise StoreClosedError("the store closed while waiting")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    def _pulse(self) -> None:
        """Something happened: let every wait_until() check its condition again."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def drop_connection(self) -> None:
        """Cut the connection without a closing handshake (the network went away).

        The device reconnects after its backoff.

        Example:
            >>> from examples.live.client import LiveStore
            >>> LiveStore("ws://127.0.0.1:9").drop_connection()  # not connected: nothing
        """
        if self._connection is not None:
            self._connection.transport.abort()

    def set_value(self, item: str, value: JsonValue) -> Awaitable[None]:
        """Show ``value`` for ``item`` at once and sync it to the server.

        Raises ValueError, changing nothing, for an item name or a value the
        protocol refuses. Returns the awaitable of ``optimistic_sync_with_push``: the call that
        starts a request waits for its whole cycle and raises its error
        (e.g. :class:`NotConnectedError`); a call made while a request is in
        flight is coalesced and complete at once.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> from examples.live.server import LiveServer
            >>> async def main() -> None:
            ...     async with LiveServer() as server, LiveStore(server.url) as store:
            ...         await store.wait_ready()
            ...         await store.set_value("color", "red")
            ...         print(store.state.value("color"), store.server_revision("color"))
            >>> asyncio.run(main())
            red 1
        """
        # Refuse what the server would, before anything changes.
        if not is_valid_item(item):
            raise ValueError(f"not a valid item name: {item[:40]!r}")
        value_json = canonical_json(value)
        if len(value_json.encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"a value may hold at most {MAX_VALUE_BYTES} bytes of JSON")
        if nesting_depth(value_json) >= MAX_NESTING:  # the message's object is one more level
            raise ValueError(f"a value may nest arrays and objects at most {MAX_NESTING - 1} deep")

        async def send(
            value: JsonValue, local_revision: int, device_id: int, inform: Callable[[int], None]
        ) -> AckMessage:
            return await self._send_set(item, value, local_revision, device_id, inform)

        async def on_finish(error: BaseException | None) -> None:
            await self._finished(item, error)

        result = self.optimistic_sync_with_push(
            key=item,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, value: state.with_value(item, value),
            get_value_from_state=lambda state: state.value(item),
            send_value_to_server=send,
            get_server_revision_from_state=self._revision_in_state,
            apply_server_response_to_state=lambda state, ack: state.with_server_value(
                item, ack.value, ack.server_revision
            ),
            on_finish=on_finish,
        )
        self._unconfirmed.add(item)
        self._touch(item)
        return result

    def toggle(self, item: str) -> Awaitable[None]:
        """Flip a boolean item (absent counts as False): the like button.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveStore
            >>> async def main() -> None:
            ...     store = LiveStore("ws://127.0.0.1:9")
            ...     _ = store.toggle("like")  # offline: shows at once, then fails
            ...     print(store.state.value("like"))
            ...     await store.close()
            >>> asyncio.run(main())
            True
        """
        return self.set_value(item, not self.state.value(item))

    # -- hooks: override to watch the traffic -----------------------------------------

    def on_connected(self, ready: ReadyMessage, replayed: int) -> None:
        """Called when the replay after ``hello`` is done (``replayed`` pushes came)."""

    def on_disconnected(self, error: BaseException | None) -> None:
        """Called when a connection ends or an attempt to connect fails."""

    def on_sent(self, message: SetMessage | GetMessage) -> None:
        """Called after a ``set`` or ``get`` went out."""

    def on_ack(self, ack: AckMessage) -> None:
        """Called for every ``ack``."""

    def on_push(self, push: PushMessage, outcome: PushOutcome) -> None:
        """Called for every ``push``, with what ``server_push`` did with it.

        Example:
            >>> from examples.live.client import LiveStore
            >>> class Chatty(LiveStore):
            ...     def on_push(self, push, outcome):
            ...         print(push.item, push.server_revision, outcome.value)
        """

    def on_reload(self, reply: ValueMessage, applied: bool) -> None:
        """Called for every ``value`` answering a reload; ``applied``: the state took it."""

    def on_server_error(self, error: ErrorMessage) -> None:
        """Called for every ``error`` the server sends."""

    # -- sending -----------------------------------------------------------------------

    def _revision_in_state(self, item: Any) -> int:
        revision: int = self.state.revisions.get(item, -1)
        return revision

    async def _send_set(
        self,
        item: str,
        value: JsonValue,
        local_revision: int,
        device_id: int,
        inform: Callable[[int], None],
    ) -> AckMessage:
        connection = self._connection
        if connection is None:
            raise NotConnectedError(f"cannot send {item!r}: not connected to {self.url}")
        request_id = next(self._request_ids)
        answer: asyncio.Future[AckMessage] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = answer
        message = SetMessage(request_id, item, value, local_revision, device_id)
        try:
            try:
                await connection.send(encode(message))
            except ConnectionClosed as error:
                raise ConnectionLostError(
                    f"the connection closed while sending {item!r}"
                ) from error
            self.on_sent(message)
            async with asyncio.timeout(self._ack_timeout):
                ack = await answer
        finally:
            self._requests.pop(request_id, None)
        inform(ack.server_revision)
        self._touch(item)
        return ack

    async def _finished(self, item: str, error: BaseException | None) -> None:
        if error is None:
            if not self.is_syncing(item):
                self._unconfirmed.discard(item)
            self._touch(item)
            return
        # The server may or may not have this change: ask it, unless a newer tap does.
        self._reload[item] = self.local_revision(item)
        self._touch(item)
        connection = self._connection
        if connection is not None and self.is_connected:
            await self._send_get(connection, item)

    async def _send_get(self, connection: ClientConnection, item: str) -> None:
        message = GetMessage(next(self._request_ids), item)
        try:
            await connection.send(encode(message))
        except ConnectionClosed:
            return  # asked again after the next hello
        self.on_sent(message)

    # -- the connection ------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            error: BaseException | None = None
            try:
                async with connect(
                    self.url,
                    open_timeout=self._open_timeout,
                    close_timeout=1,
                    max_size=_FRAME_LIMIT,
                ) as connection:
                    attempt = 0
                    await self._session(connection)
            except (OSError, TimeoutError, WebSocketException) as caught:
                error = caught
            except Exception as caught:  # a bug must not end the reconnecting
                error = caught
                self.on_error(caught)
            self.on_disconnected(error)
            attempt += 1
            await self._backoff(attempt)

    async def _session(self, connection: ClientConnection) -> None:
        await connection.send(encode(HelloMessage(self._cursor)))
        self._connection = connection
        replayed = 0
        try:
            async for data in connection:
                message = self._receive(data)
                if isinstance(message, PushMessage) and not self._ready.is_set():
                    replayed += 1
                elif isinstance(message, ReadyMessage):
                    self._ready.set()
                    self._pulse()
                    self.on_connected(message, replayed)
                    for item in list(self._reload):
                        await self._send_get(connection, item)
        finally:
            self._connection = None
            self._ready.clear()
            self._pulse()
            for answer in self._requests.values():
                if not answer.done():
                    answer.set_exception(ConnectionLostError("the connection closed"))

    def _receive(self, data: str | bytes) -> ServerMessage | None:
        if self.is_closed:
            return None
        try:
            message = decode_server_message(data)
        except ProtocolError as error:
            self.on_error(error)
            return None
        if isinstance(message, PushMessage):
            self._apply_push(message)
        elif isinstance(message, AckMessage):
            answer = self._requests.get(message.request_id)
            if answer is not None and not answer.done():
                answer.set_result(message)
            self.on_ack(message)
        elif isinstance(message, ValueMessage):
            self._apply_reload(message)
        elif isinstance(message, ErrorMessage):
            failed = self._requests.get(message.request_id or -1)
            if failed is not None and not failed.done():
                failed.set_exception(RequestRejectedError(message))
            self.on_server_error(message)
        else:
            self._advance_cursor_to(message.server_revision)
        self._pulse()
        return message

    def _apply_push(self, push: PushMessage) -> None:
        item = push.item

        def apply(state: LiveState, key: Any, revision: int) -> LiveState:
            return state.with_server_value(item, push.value, revision)

        outcome = self.server_push(
            key=item,
            push_metadata=PushMetadata(
                server_revision=push.server_revision,
                local_revision=push.local_revision,
                device_id=push.device_id,
            ),
            apply_server_push_to_state=apply,
            get_server_revision_from_state=self._revision_in_state,
        )
        self._received(push.server_revision)
        self._touch(item)
        self.on_push(push, outcome)

    def _apply_reload(self, reply: ValueMessage) -> None:
        item = reply.item
        marked = self._reload.pop(item, None)
        if marked is None:
            return  # an answer to a reload already done
        applied = False
        if not self.is_syncing(item) and self.local_revision(item) == marked:
            known = max(self._revision_in_state(item), self.server_revision(item))
            if reply.server_revision >= known:
                self.emit(self.state.with_server_value(item, reply.value, reply.server_revision))
                applied = True
            self._unconfirmed.discard(item)
        self._touch(item)
        self.on_reload(reply, applied)

    def _received(self, revision: int) -> None:
        if revision <= self._cursor:
            return
        self._ahead.add(revision)
        while self._cursor + 1 in self._ahead:
            self._cursor += 1
            self._ahead.discard(self._cursor)

    def _advance_cursor_to(self, revision: int) -> None:
        # After a replay every change up to the server's head has come.
        if revision > self._cursor:
            self._cursor = revision
            self._ahead = {ahead for ahead in self._ahead if ahead > revision}
            self._received(revision)
            self._schedule_flush()

    # -- persistence ---------------------------------------------------------------------

    def _touch(self, item: str) -> None:
        self._dirty.add(item)
        self._schedule_flush()
        self._pulse()

    def _schedule_flush(self) -> None:
        # Save once per turn of the event loop, not once per message.
        if self._storage is not None and self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._storage is not None:
            try:
                self._save(self._storage)
            except Exception as error:
                self.on_error(error)

    def _save(self, storage: DeviceStorage) -> None:
        dirty, self._dirty = self._dirty, set()
        if not dirty and self._cursor == self._saved_cursor:
            return
        values = self.state.values
        unconfirmed = self._unconfirmed | self._reload.keys()
        items = {
            item: SavedItem(
                canonical_json(values[item]) if item in values else None,
                # The store also knows revisions from acks and self-echoes.
                max(self._revision_in_state(item), self.server_revision(item)),
                pending=item in unconfirmed,
            )
            for item in dirty
        }
        cursor = self._cursor
        storage.save(items, cursor=cursor)
        self._saved_cursor = cursor


def _state_from(items: Mapping[str, SavedItem]) -> LiveState:
    values: dict[str, JsonValue] = {}
    revisions: dict[str, int] = {}
    for item, saved in items.items():
        if saved.value is not None:
            values[item] = json.loads(saved.value)
        if saved.server_revision != -1:
            revisions[item] = saved.server_revision
    return LiveState(values, revisions)
