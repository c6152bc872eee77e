"""Use a store from other threads: a Tk, Flet or worker thread calls actions, reads state.

A :class:`~optisync.Store` belongs to one event loop and its thread. A
:class:`ThreadBridge`, made on that loop, is the one object other threads
touch: :meth:`~ThreadBridge.submit` and :meth:`~ThreadBridge.call` run a
function on the loop, :meth:`~ThreadBridge.run` waits for it with a timeout,
:attr:`~ThreadBridge.state` reads the latest state, and
:meth:`~ThreadBridge.subscribe` tells a toolkit about each new state.

Every future the bridge hands out is resolved: with the call's outcome, or
with :class:`~optisync.StoreClosedError` when the store or the bridge closes,
or when the loop shuts down or is closed. No thread ever waits on a loop that
is gone. See docs/ui-threads.md for the whole picture.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, TypeVarTuple, Unpack, overload

from optisync._threadsafe import Handover
from optisync.errors import (
    BlockingOnLoopThreadError,
    CallTimeoutError,
    StateError,
    StoreClosedError,
)
from optisync.store import Store

__all__ = ["ThreadBridge", "bridge"]

S = TypeVar("S")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")

_CLOSED = "The thread bridge was closed before the handed-over call ran."
_STORE_CLOSED = "The store was closed before the handed-over call finished."
_SHUTDOWN = "The event loop shut down before the handed-over call finished."


class ThreadBridge(Generic[S]):
    """Calls a store's actions and reads its state from any thread.

    Make it on the store's event loop (in a coroutine, or a callback the loop
    runs); from then on any thread may use it. Each call runs on the loop, in
    the order the calls were made from one thread. Hand the store's methods
    to it (``bridge.call(store.toggle)``): a thread may name them, never call
    them itself. A function that returns an
    awaitable (a coroutine function, or a sync action's awaitable) is awaited
    in a task of the bridge, and its result is the call's result.

    The bridge closes with the store (or by :meth:`close`), and when the
    loop shuts down: calls not yet run, and calls still running, fail with
    :class:`~optisync.StoreClosedError`; later calls fail at once.

    Args:
        store: the store, bound to the running loop.

    Raises:
        StateError: no event loop is running in this thread.

    Examples:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.threads import ThreadBridge
        >>> class Counter(Store[int]):
        ...     def add(self, n: int) -> int:
        ...         self.emit(self.state + n)
        ...         return self.state
        >>> async def main() -> None:
        ...     async with Counter(0) as store:
        ...         bridge = ThreadBridge(store)
        ...         def handler() -> None:  # a toolkit's handler, on its own thread
        ...             print("run:", bridge.run(store.add, 2, timeout=5))
        ...             print("state:", bridge.state)
        ...         await asyncio.to_thread(handler)
        >>> asyncio.run(main())
        run: 2
        state: 2
    """

    def __init__(self, store: Store[S]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise StateError(
                "ThreadBridge(store) must be made on the store's event loop: "
                "in a coroutine or a callback that loop runs."
            ) from None
        self.__store = store
        self.__loop = loop
        self.__thread = threading.get_ident()
        self.__state = store.state
        self.__handover = Handover("call")
        self.__lock = threading.Lock()
        self.__listeners: dict[int, Callable[[S], object]] = {}
        self.__next_listener = 0
        self.__tasks: set[asyncio.Task[Any]] = set()
        self.__closing: str | None = None
        self.__stop_listening = store.subscribe(self.__on_state)
        # Lives as long as the store and the loop: its end closes the bridge.
        self.__watcher = loop.create_task(self.__watch(store))

    # -- reading ---------------------------------------------------------------

    @property
    def store(self) -> Store[S]:
        """The store, to name its methods in a call; run them from the loop's thread only.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     store = Store(0)
            ...     print(ThreadBridge(store).store is store)
            ...     await store.close()
            >>> asyncio.run(main())
            True
        """
        return self.__store

    @property
    def state(self) -> S:
        """The store's latest state, safe to read from any thread.

        It is the state of the last emit the loop ran (states are immutable
        values: hand them around freely).

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store("a") as store:
            ...         bridge = ThreadBridge(store)
            ...         store.emit("b")
            ...         print(await asyncio.to_thread(lambda: bridge.state))
            >>> asyncio.run(main())
            b
        """
        return self.__state

    @property
    def is_closed(self) -> bool:
        """Whether the bridge refuses new calls (it, its store or its loop closed).

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     store = Store(0)
            ...     bridge = ThreadBridge(store)
            ...     await store.close()
            ...     await asyncio.sleep(0)  # the bridge sees the store close
            ...     print(bridge.is_closed)
            >>> asyncio.run(main())
            True
        """
        return self.__closing is not None

    def subscribe(self, listener: Callable[[S], object]) -> Callable[[], None]:
        """Call ``listener(state)`` on the loop's thread after each change; return a stop function.

        Both may be called from any thread. The listener runs on the loop's
        thread, inside the emit: keep it short and hand the state over to
        your toolkit's thread (Tk: ``root.after(0, ...)``; Qt: a signal;
        Flet: ``page.update()``). A listener that raises is reported to the
        store's :meth:`~optisync.Store.on_error`.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store(0) as store:
            ...         bridge = ThreadBridge(store)
            ...         stop = await asyncio.to_thread(bridge.subscribe, print)
            ...         store.emit(1)
            ...         stop()
            ...         store.emit(2)
            >>> asyncio.run(main())
            1
        """
        with self.__lock:
            token = self.__next_listener
            self.__next_listener += 1
            self.__listeners[token] = listener

        def unsubscribe() -> None:
            with self.__lock:
                self.__listeners.pop(token, None)

        return unsubscribe

    def __on_state(self, state: S) -> None:
        self.__state = state
        with self.__lock:
            listeners = tuple(self.__listeners.values())
        for listener in listeners:
            try:
                listener(state)
            except Exception as error:  # one toolkit's bug must not stop the others
                self.__store.on_error(error)

    # -- calling ---------------------------------------------------------------

    @overload
    def submit(
        self, fn: Callable[[Unpack[Ts]], Awaitable[R]], /, *args: *Ts
    ) -> concurrent.futures.Future[R]: ...

    @overload
    def submit(
        self, fn: Callable[[Unpack[Ts]], R], /, *args: *Ts
    ) -> concurrent.futures.Future[R]: ...

    def submit(self, fn: Callable[[*Ts], Any], /, *args: *Ts) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args)`` on the store's loop; return a future of its outcome.

        From any thread, the loop's own included. If ``fn`` returns an
        awaitable, the future gets what awaiting it gives. Pass keywords with
        ``functools.partial`` or a lambda. Cancelling the future before the
        loop runs the call drops the call.

        Returns:
            A :class:`concurrent.futures.Future` with the result or the error
            ``fn`` raised, or :class:`~optisync.StoreClosedError` when the
            store, the bridge or the loop closed first.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store([]) as store:
            ...         bridge = ThreadBridge(store)
            ...         def tap(label: str) -> None:
            ...             store.emit([*store.state, label])  # runs on the loop
            ...         future = await asyncio.to_thread(bridge.submit, tap, "hi")
            ...         await asyncio.wrap_future(future)
            ...         print(store.state)
            >>> asyncio.run(main())
            ['hi']
        """
        outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()
        started = self.__handover.submit(self.__loop, lambda: self.__start(outcome, fn, args))
        started.add_done_callback(lambda handed: _fail_from(handed, outcome))
        return outcome

    def call(self, fn: Callable[[Unpack[Ts]], object], /, *args: *Ts) -> None:
        """Run ``fn(*args)`` on the store's loop, and don't wait: a UI handler's tap.

        Its error, if any, goes to the store's :meth:`~optisync.Store.on_error`
        (as a sync action's does when nobody awaits it). A call the closing
        of the store, the bridge or the loop prevents is dropped quietly.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store(0) as store:
            ...         bridge = ThreadBridge(store)
            ...         done = asyncio.Event()
            ...         _ = store.subscribe(lambda state: done.set())
            ...         await asyncio.to_thread(bridge.call, store.emit, 5)
            ...         await done.wait()
            ...         print(store.state)
            >>> asyncio.run(main())
            5
        """
        future = self.submit(fn, *args)
        future.add_done_callback(self.__report)

    def __report(self, future: concurrent.futures.Future[object]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is not None and not isinstance(error, StoreClosedError):
            self.__store.on_error(error)

    @overload
    def run(
        self,
        fn: Callable[[Unpack[Ts]], Awaitable[R]],
        /,
        *args: *Ts,
        timeout: float | None,
    ) -> R: ...

    @overload
    def run(self, fn: Callable[[Unpack[Ts]], R], /, *args: *Ts, timeout: float | None) -> R: ...

    def run(self, fn: Callable[[*Ts], Any], /, *args: *Ts, timeout: float | None) -> Any:
        """Run ``fn(*args)`` on the store's loop and wait for its outcome, at most ``timeout`` s.

        ``timeout`` is required (``None`` waits for ever): a thread of a UI
        must not hang on a busy loop.

        Raises:
            BlockingOnLoopThreadError: called on the loop's own thread, which
                would wait for itself; nothing was run.
            CallTimeoutError: no outcome in time (a ``TimeoutError``). A call
                not started yet never runs; a running one goes on.
            StoreClosedError: the store, the bridge or the loop closed first.

        Whatever ``fn`` raises is raised here.

        Examples:
            >>> import asyncio, optisync
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store(1) as store:
            ...         bridge = ThreadBridge(store)
            ...         async def double() -> int:
            ...             await asyncio.sleep(0)
            ...             store.emit(store.state * 2)
            ...             return store.state
            ...         print(await asyncio.to_thread(bridge.run, double, timeout=5))
            ...         try:
            ...             bridge.run(double, timeout=5)  # on the loop's thread
            ...         except optisync.BlockingOnLoopThreadError:
            ...             print("refused")
            >>> asyncio.run(main())
            2
            refused
        """
        if threading.get_ident() == self.__thread:
            raise BlockingOnLoopThreadError(
                "ThreadBridge.run() on the store's own loop thread would wait for itself: "
                "call the store directly there, or await asyncio.wrap_future(bridge.submit(...))."
            )
        future = self.submit(fn, *args)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            dropped = future.cancel()
            raise CallTimeoutError(
                f"The store's loop gave no outcome within {timeout} s; the call "
                + ("was dropped before it ran." if dropped else "is still running.")
            ) from None

    def __start(
        self,
        outcome: concurrent.futures.Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        """Run on the loop: start the call, resolve ``outcome`` now or when its awaitable ends."""
        if not outcome.set_running_or_notify_cancel():
            return  # the caller cancelled it
        if self.__closing is not None:
            outcome.set_exception(StoreClosedError(self.__closing))
            return
        try:
            result = fn(*args)
        except BaseException as error:  # handed over to the calling thread
            outcome.set_exception(error)
            return
        if not inspect.isawaitable(result):
            outcome.set_result(result)
            return
        task = self.__loop.create_task(_await(result))
        self.__tasks.add(task)
        task.add_done_callback(lambda done: self.__finish(done, outcome))

    def __finish(self, task: asyncio.Task[Any], outcome: concurrent.futures.Future[Any]) -> None:
        self.__tasks.discard(task)
        if task.cancelled():
            reason = self.__closing or _SHUTDOWN
            outcome.set_exception(StoreClosedError(reason))
        elif (error := task.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(task.result())

    # -- closing ---------------------------------------------------------------

    async def __watch(self, store: Store[S]) -> None:
        states = store.stream()
        try:
            async for _ in states:
                pass
        except asyncio.CancelledError:
            if self.__closing is None:  # not close(): the loop is shutting down
                await self.__end(_SHUTDOWN)
            raise
        finally:
            await states.aclose()  # the store must not buffer states for nobody
        await self.__end(_STORE_CLOSED)

    async def close(self) -> None:
        """Stop the bridge: fail the calls not run yet, cancel those running, wait for them.

        Call it on the loop. Closing the store closes its bridge too; a
        bridge whose loop shuts down closes by itself. Closing twice is
        harmless. The store itself stays open.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.threads import ThreadBridge
            >>> async def main() -> None:
            ...     async with Store(0) as store:
            ...         bridge = ThreadBridge(store)
            ...         await bridge.close()
            ...         future = bridge.submit(store.emit, 1)
            ...         print(type(future.exception()).__name__, store.state)
            >>> asyncio.run(main())
            StoreClosedError 0
        """
        await self.__end(_CLOSED)
        watcher = self.__watcher
        if watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.wait([watcher])  # not `await watcher`: its CancelledError isn't ours

    async def __end(self, reason: str) -> None:
        if self.__closing is None:
            self.__closing = reason
        self.__stop_listening()
        with self.__lock:
            self.__listeners.clear()
        await self.__handover.close(self.__closing)
        tasks = list(self.__tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)


def bridge(store: Store[S]) -> ThreadBridge[S]:
    """A :class:`ThreadBridge` for ``store``; call it on the store's loop.

    Examples:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync import threads
        >>> async def main() -> None:
        ...     async with Store(0) as store:
        ...         print(threads.bridge(store).state)
        >>> asyncio.run(main())
        0
    """
    return ThreadBridge(store)


async def _await(awaitable: Awaitable[R]) -> R:
    return await awaitable


def _fail_from(
    handed: concurrent.futures.Future[None], outcome: concurrent.futures.Future[Any]
) -> None:
    """Give ``outcome`` the error of a hand-over that never started the call."""
    if handed.cancelled() or handed.exception() is None or outcome.done():
        return
    # Resolved or cancelled meanwhile by another thread: that outcome stands.
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        outcome.set_exception(handed.exception())
