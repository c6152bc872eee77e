"""The async iterator behind :meth:`Store.stream <optisync.Store.stream>`."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

__all__ = ["StateStream", "StreamChannel"]

S = TypeVar("S")


class StreamChannel(Generic[S]):
    """The buffer between a store's emits and one stream's reader.

    The store holds the channel, not the stream, so a stream that its reader
    drops (``break`` out of ``async for``) is collected and unsubscribes.
    """

    __slots__ = ("buffer", "ended", "waiters")

    def __init__(self) -> None:
        self.buffer: deque[S] = deque()
        self.ended = False
        self.waiters: list[asyncio.Future[None]] = []

    def push(self, state: S) -> None:
        # Unbounded on purpose: a slow reader must never slow emit() down,
        # and it must see every state.
        self.buffer.append(state)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class StateStream(AsyncIterator[S]):
    """Every state a store emits after :meth:`Store.stream` was called, in order.

    It ends once the store closes (after yielding the states emitted before
    that). ``aclose()`` or dropping it stops the subscription.

    Examples:
        >>> import asyncio
        >>> from optisync import StateStream, Store
        >>> async def main() -> None:
        ...     store = Store(0)
        ...     states: StateStream[int] = store.stream()
        ...     store.emit(1)
        ...     await states.aclose()
        ...     store.emit(2)
        ...     print([s async for s in states])
        >>> asyncio.run(main())
        [1]
    """

    __slots__ = ("__weakref__", "_channel", "_finalizer")

    def __init__(self, channel: StreamChannel[S], unsubscribe: Callable[[], None]) -> None:
        self._channel = channel
        self._finalizer = weakref.finalize(self, unsubscribe)

    def __aiter__(self) -> StateStream[S]:
        return self

    async def __anext__(self) -> S:
        channel = self._channel
        while not channel.buffer:
            if channel.ended:
                raise StopAsyncIteration
            waiter = asyncio.get_running_loop().create_future()
            channel.waiters.append(waiter)
            await waiter
        return channel.buffer.popleft()

    async def aclose(self) -> None:
        """Stop receiving states; iteration ends after those already buffered.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> async def main() -> None:
            ...     states = Store(0).stream()
            ...     await states.aclose()
            ...     print([s async for s in states])
            >>> asyncio.run(main())
            []
        """
        self._finalizer()
        self._channel.end()
