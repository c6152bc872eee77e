"""``optisync.client``: a WebSocket transport from a :class:`~optisync.Store` to a server.

:class:`SyncClient` connects (and reconnects, with backoff), says hello with
the newest server revision it has seen and the server's generation, feeds
the replay and every later push to :meth:`Store.server_push
<optisync.Store.server_push>`, and hands out a ``send_value_to_server`` for
the sync methods. Install it with ``pip install "optisync[client]"``.

Example:
    >>> import asyncio
    >>> from optisync import Store
    >>> from optisync.client import SyncClient
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> def apply_value(state, key, value, revision):
    ...     return {**state, key: value}
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         store = Store({}, device_id=1)
    ...         async with SyncClient(store, url, apply_value=apply_value) as client:
    ...             await client.wait_online()
    ...             await store.optimistic_sync_with_push(
    ...                 key="like",
    ...                 value_to_apply=lambda: True,
    ...                 apply_optimistic_value_to_state=lambda s, v: {**s, "like": v},
    ...                 get_value_from_state=lambda s: s.get("like"),
    ...                 send_value_to_server=client.sender("like"),
    ...                 get_server_revision_from_state=lambda key: -1,
    ...             )
    ...             print(store.state, store.server_revision("like"), client.cursor)
    >>> asyncio.run(main())
    {'like': True} 1 1
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar

import attrs
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from optisync import PushMetadata, PushOutcome, Store
from optisync.server.protocol import (
    Ack,
    ClientMessage,
    Error,
    Get,
    Hello,
    ProtocolError,
    Push,
    Ready,
    ServerMessage,
    Set,
    Value,
    Welcome,
    decode_server,
    encode,
)

__all__ = [
    "ClientConnectionError",
    "RequestRefusedError",
    "ServerRefusedError",
    "SyncClient",
    "Traced",
]

logger: Final = logging.getLogger("optisync.client")

S = TypeVar("S")

#: Refusals at hello that another attempt cannot fix: the client stops.
_FATAL: Final = frozenset({"unauthorized", "bad_version", "bad_field", "bad_message"})


class ClientConnectionError(ConnectionError):
    """The client is offline, or its connection dropped while the request was in flight.

    The request may or may not have been committed; the replay on reconnect
    tells the store either way. It subclasses the builtin ``ConnectionError``.

    Example:
        >>> from optisync.client import ClientConnectionError
        >>> isinstance(ClientConnectionError("offline"), ConnectionError)
        True
    """


class RequestRefusedError(RuntimeError):
    """The server answered a request with an error; nothing changed on the server.

    Attributes:
        code: the server's reason (``forbidden``, ``rate_limited``, ``too_large`` …).

    Example:
        >>> from optisync.client import RequestRefusedError
        >>> RequestRefusedError("forbidden", "this connection may not write the key").code
        'forbidden'
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class ServerRefusedError(RuntimeError):
    """The server refused the connection for good (a bad token, another protocol).

    Example:
        >>> from optisync.client import ServerRefusedError
        >>> str(ServerRefusedError("unauthorized: the token was refused"))
        'unauthorized: the token was refused'
    """


@attrs.frozen
class Traced:
    """One protocol message the client sent or received, for a ``trace`` callback.

    Attributes:
        direction: ``"sent"`` (after the message went out) or ``"received"``
            (after the client handled it: :attr:`SyncClient.cursor` and
            :attr:`SyncClient.online` already tell its effect).
        message: the decoded message (:mod:`optisync.server.protocol`).
        outcome: for a received push, what :meth:`Store.server_push
            <optisync.Store.server_push>` did with it; otherwise None.

    Example:
        >>> from optisync import PushOutcome
        >>> from optisync.client import Traced
        >>> from optisync.server.protocol import Push
        >>> push = Push(key="like", value=True, server_revision=3, local_revision=0, device_id=0)
        >>> Traced("received", push, PushOutcome.APPLIED).outcome.value
        'applied'
    """

    direction: Literal["sent", "received"]
    message: ClientMessage | ServerMessage
    outcome: PushOutcome | None = None


class SyncClient(Generic[S]):
    """Keeps one :class:`~optisync.Store` connected to an optisync server.

    Args:
        store: the store; its :attr:`~optisync.Store.device_id` is the
            connection's device id.
        url: the server's ``ws://`` or ``wss://`` URL.
        apply_value: ``(state, key, value, server_revision) -> state``: puts a
            pushed value into the state (store the revision there too if your
            ``get_server_revision_from_state`` reads it).
        get_server_revision_from_state: passed to ``server_push``; the default
            relies on the store's own record (:meth:`~optisync.Store.server_revision`).
        token: sent in the hello for the server's authenticator.
        cursor: the newest server revision already applied (persisted by the
            app); the server replays what came after it.
        generation: the server generation that cursor belongs to.
        on_reset: called when the server says the cursor is from another
            database (new, or restored from a backup): reload your state.
        reconnect: reconnect after a drop (with websockets' backoff); False
            stays offline after the first drop (tests).
        trace: called with a :class:`Traced` for every message sent and
            received (a timeline, a debug log); an exception it raises is
            logged and ignored.

    Example:
        >>> from optisync import Store
        >>> from optisync.client import SyncClient
        >>> client = SyncClient(Store({}, device_id=3), "ws://127.0.0.1:8765",
        ...                     apply_value=lambda state, key, value, rev: state, cursor=12)
        >>> client.cursor, client.online
        (12, False)
    """

    def __init__(
        self,
        store: Store[S],
        url: str,
        *,
        apply_value: Callable[[S, str, Any, int], S],
        get_server_revision_from_state: Callable[[str], int] | None = None,
        token: str | None = None,
        cursor: int = 0,
        generation: str = "",
        on_reset: Callable[[], object] | None = None,
        reconnect: bool = True,
        trace: Callable[[Traced], object] | None = None,
    ) -> None:
        self._store = store
        self._url = url
        self._apply_value = apply_value
        self._get_revision = get_server_revision_from_state or (lambda key: -1)
        self._token = token
        self._cursor = cursor
        self._generation = generation
        self._on_reset = on_reset
        self._reconnect = reconnect
        self._trace = trace
        self._connection: ClientConnection | None = None
        self._online = False
        self._ready = asyncio.Event()
        self._listeners: list[Callable[[bool], object]] = []
        self._pending: dict[int, asyncio.Future[Ack | Value]] = {}
        self._request_ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None

    # -- what an app persists and watches ------------------------------------------

    @property
    def cursor(self) -> int:
        """The newest server revision received (replayed or pushed); persist it.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h", apply_value=lambda *a: 0).cursor
            0
        """
        return self._cursor

    @cursor.setter
    def cursor(self, revision: int) -> None:
        if self._task is not None:
            raise RuntimeError("set the cursor before start(): the server replays from it")
        self._cursor = revision

    @property
    def generation(self) -> str:
        """The server generation the cursor belongs to (``""``: none yet); persist it.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h", apply_value=lambda *a: 0,
            ...            generation="abc").generation
            'abc'
        """
        return self._generation

    @generation.setter
    def generation(self, generation: str) -> None:
        if self._task is not None:
            raise RuntimeError("set the generation before start()")
        self._generation = generation

    @property
    def online(self) -> bool:
        """Whether the client is connected and caught up (its replay done).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h", apply_value=lambda *a: 0).online
            False
        """
        return self._online

    def subscribe_status(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        """Call ``listener(online)`` on every change of :attr:`online`; returns an unsubscribe.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h", apply_value=lambda *a: 0)
            >>> unsubscribe = client.subscribe_status(print)
            >>> unsubscribe()
        """
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_online(self) -> None:
        """Wait until the client is connected and caught up.

        Example:
            >>> from optisync.client import SyncClient
            >>> SyncClient.wait_online  # doctest: +ELLIPSIS
            <function SyncClient.wait_online at ...>
        """
        await self._ready.wait()

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (``async with`` does it).

        Example:
            >>> from optisync.client import SyncClient
            >>> SyncClient.start  # doctest: +ELLIPSIS
            <function SyncClient.start at ...>
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Disconnect for good; requests in flight fail with :class:`ClientConnectionError`.

        Raises:
            ServerRefusedError: the server had refused the connection for good.

        Example:
            >>> from optisync.client import SyncClient
            >>> SyncClient.close  # doctest: +ELLIPSIS
            <function SyncClient.close at ...>
        """
        task = self._task
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- requests ----------------------------------------------------------------------

    def sender(self, key: str) -> Callable[[Any, int, int, Callable[[int], None]], Awaitable[Any]]:
        """A ``send_value_to_server`` for ``key``, ready for the sync methods.

        It sends a ``set``, calls ``inform_server_revision`` with the ack's
        revision and returns the value the server holds. It raises
        :class:`ClientConnectionError` when offline or on a drop, and
        :class:`RequestRefusedError` when the server refuses the write.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h", apply_value=lambda *a: 0)
            >>> send = client.sender("like")
        """

        async def send_value_to_server(
            value: Any,
            local_revision: int,
            device_id: int,
            inform_server_revision: Callable[[int], None],
        ) -> Any:
            if device_id != self._store.device_id:
                raise ValueError(
                    f"device_id {device_id} is not the store's {self._store.device_id}"
                )
            request_id = next(self._request_ids)
            answer = await self._request(
                request_id, Set(request_id, key, value, local_revision, device_id)
            )
            assert isinstance(answer, Ack)
            inform_server_revision(answer.server_revision)
            return answer.value

        return send_value_to_server

    async def get(self, key: str) -> tuple[Any, int]:
        """Read ``key`` from the server: its value and revision (``(None, -1)``: never written).

        Example:
            >>> from optisync.client import SyncClient
            >>> SyncClient.get  # doctest: +ELLIPSIS
            <function SyncClient.get at ...>
        """
        request_id = next(self._request_ids)
        answer = await self._request(request_id, Get(request_id, key))
        assert isinstance(answer, Value)
        return answer.value, answer.server_revision

    async def _request(self, request_id: int, message: Set | Get) -> Ack | Value:
        connection = self._connection
        if connection is None or not self._online:
            raise ClientConnectionError("offline: the client is not connected")
        future: asyncio.Future[Ack | Value] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await connection.send(encode(message), text=True)
            self._traced("sent", message)
            return await future
        except ConnectionClosed as error:
            raise ClientConnectionError("the connection dropped") from error
        finally:
            self._pending.pop(request_id, None)

    # -- the connection ----------------------------------------------------------------

    async def _run(self) -> None:
        refusals = 0
        try:
            # websockets' connect() iterator reconnects, with backoff when connecting fails.
            async for connection in connect(self._url, max_size=16 * 1024 * 1024):
                self._connection = connection
                try:
                    await self._session(connection)
                except ConnectionClosed:
                    pass
                finally:
                    reached = self._online
                    self._drop()
                if not self._reconnect:
                    return
                # Closed before its replay (the device id still held by a dead
                # connection, say): the iterator would retry at once, so back off.
                refusals = 0 if reached else refusals + 1
                if refusals:
                    await asyncio.sleep(min(0.05 * 2**refusals, 5.0))
        finally:
            self._drop()

    async def _session(self, connection: ClientConnection) -> None:
        hello = Hello(
            device_id=self._store.device_id,
            since=self._cursor,
            token=self._token,
            generation=self._generation,
        )
        await connection.send(encode(hello), text=True)
        self._traced("sent", hello)
        async for frame in connection:
            try:
                message = decode_server(frame)
            except ProtocolError:
                logger.warning("ignored a malformed message from the server")
                continue
            outcome = None
            try:
                outcome = self._handle(message)
            finally:
                self._traced("received", message, outcome)

    def _traced(
        self,
        direction: Literal["sent", "received"],
        message: ClientMessage | ServerMessage,
        outcome: PushOutcome | None = None,
    ) -> None:
        if self._trace is None:
            return
        try:
            self._trace(Traced(direction, message, outcome))
        except Exception:
            logger.exception("the trace callback failed")

    def _handle(self, message: ServerMessage) -> PushOutcome | None:
        if isinstance(message, Push):
            return self._push(message)
        if isinstance(message, Welcome):
            self._welcome(message)
        elif isinstance(message, Ready):
            self._set_online(True)
        elif isinstance(message, Error) and message.request_id is None:
            self._unnumbered_error(message)
        elif message.request_id is not None:
            future = self._pending.get(message.request_id)
            if future is not None and not future.done():
                if isinstance(message, Error):
                    future.set_exception(RequestRefusedError(message.code, message.message))
                else:
                    future.set_result(message)
        return None

    def _unnumbered_error(self, error: Error) -> None:
        # The server answers a connection's requests in order: an error it could
        # not number (a frame it could not read its request id from, such as one
        # nested too deep) answers the oldest one waiting.
        waiting = [future for future in self._pending.values() if not future.done()]
        if self._online and waiting:
            waiting[0].set_exception(RequestRefusedError(error.code, error.message))
        elif error.code in _FATAL:
            raise ServerRefusedError(f"{error.code}: {error.message}")
        else:
            logger.warning("server error: %s %s", error.code, error.message)

    def _welcome(self, welcome: Welcome) -> None:
        if welcome.reset:
            self._cursor = 0
            if self._on_reset is not None:
                self._on_reset()
        self._generation = welcome.generation

    def _push(self, push: Push) -> PushOutcome:
        key: Hashable = push.key
        outcome = self._store.server_push(
            key=key,
            push_metadata=PushMetadata(
                server_revision=push.server_revision,
                local_revision=push.local_revision,
                device_id=push.device_id,
            ),
            apply_server_push_to_state=lambda state, key, revision: self._apply_value(
                state, push.key, push.value, revision
            ),
            get_server_revision_from_state=lambda key: self._get_revision(push.key),
        )
        self._cursor = max(self._cursor, push.server_revision)
        return outcome

    def _drop(self) -> None:
        self._connection = None
        self._set_online(False)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ClientConnectionError("the connection dropped"))

    def _set_online(self, online: bool) -> None:
        if online == self._online:
            return
        self._online = online
        if online:
            self._ready.set()
        else:
            self._ready.clear()
        for listener in list(self._listeners):
            listener(online)
