"""The :class:`Store`: an immutable state, ``emit()``, subscribers, and sync actions."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from optisync import sync as _sync
from optisync import sync_with_push as _sync_with_push
from optisync._stream import StateStream, StreamChannel
from optisync._tasks import COMPLETED, Cycle, CycleResult
from optisync._types import OnFinish
from optisync.errors import RequestCancelledError, StateError, StoreClosedError, WrongThreadError
from optisync.revisions import PushMetadata, PushOutcome, _KeyState, _next_device_id, _require_int

__all__ = ["Store"]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

logger = logging.getLogger("optisync")


def _is_being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class Store(Generic[S]):
    """A container of one immutable state, in the style of a bloc Cubit.

    Subclass it and write your actions as methods that call :meth:`emit` or one
    of the sync methods. Listeners learn about every change through
    :meth:`subscribe` (callbacks) or :meth:`stream` (an async iterator).

    Args:
        initial_state: the first state. Treat states as immutable values:
            replace them with :meth:`emit`, never change them in place.
        device_id: this store's device id for ``optimistic_sync_with_push``;
            by default the one from :func:`optisync.set_device_id_provider`,
            or a random id made once per process.

    Examples:
        >>> import asyncio
        >>> from optisync import Store
        >>> class Counter(Store[int]):
        ...     def increment(self) -> None:
        ...         self.emit(self.state + 1)
        >>> async def main() -> None:
        ...     async with Counter(0) as counter:
        ...         counter.subscribe(lambda state: print("now", state))
        ...         counter.increment()
        >>> asyncio.run(main())
        now 1
    """

    def __init__(self, initial_state: S, *, device_id: int | None = None) -> None:
        self._state = initial_state
        if device_id is None:
            self._device_id = _next_device_id()
        else:
            self._device_id = _require_int(device_id, "device_id")
        self._closed = False
        self._listeners: dict[int, Callable[[S], object]] = {}
        self._snapshot: tuple[Callable[[S], object], ...] | None = ()
        self._next_listener = 0
        self._channels: set[StreamChannel[S]] = set()
        self._status_listeners: dict[int, Callable[[Hashable], object]] = {}
        self._keys: dict[Hashable, _KeyState] = {}
        self._tasks: dict[asyncio.Task[None], Cycle] = {}
        # One bound method for every cycle, rather than a closure per cycle.
        self._on_cycle_done = self._cycle_done
        self._loop = _running_loop()
        self._loop_thread = threading.get_ident()
        # States emitted by listeners while an emit delivers: delivered after it, in order.
        self._delivering = False
        self._pending: deque[S] = deque()

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> S:
        """The current state.

        Examples:
            >>> from optisync import Store
            >>> Store("hello").state
            'hello'
        """
        return self._state

    @property
    def device_id(self) -> int:
        """This store's device id, sent with every request of ``optimistic_sync_with_push``.

        Examples:
            >>> from optisync import Store
            >>> Store(0, device_id=7).device_id
            7
        """
        return self._device_id

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called.

        Examples:
            >>> from optisync import Store
            >>> Store(0).is_closed
            False
        """
        return self._closed

    def emit(self, state: S) -> None:
        """Replace the state and tell every listener and stream.

        A state equal (``==``) to the current one changes nothing and tells no
        one. :meth:`on_change` runs first (if it raises, nothing changes and
        the error propagates); a listener that raises does not stop the others
        and its error goes to :meth:`on_error`. A state a listener emits while
        an emit is delivering becomes the state at once and is delivered right
        after, so every listener and stream sees the states in order.

        Raises:
            StoreClosedError: the store is closed.

        Examples:
            >>> from optisync import Store
            >>> store = Store(1)
            >>> _ = store.subscribe(print)
            >>> store.emit(2)
            2
            >>> store.emit(2)  # equal: nobody is told
        """
        if self._closed:
            raise StoreClosedError("Cannot emit a new state: the store is closed.")
        current = self._state
        if state is current or state == current:
            return
        self.on_change(current, state)
        self._state = state
        if self._delivering:
            # A listener emitted: deliver after the state being delivered,
            # so that every listener and stream sees the states in order.
            self._pending.append(state)
            return
        self._delivering = True
        try:
            self._notify(state)
            pending = self._pending
            while pending:
                self._notify(pending.popleft())
        finally:
            self._delivering = False
            self._pending.clear()

    def _notify(self, state: S) -> None:
        listeners = self._snapshot
        if listeners is None:
            listeners = self._snapshot = tuple(self._listeners.values())
        for listener in listeners:
            try:
                listener(state)
            except Exception as error:  # a listener's bug must not stop the others
                self._report(error)

    # -- hooks ---------------------------------------------------------------

    def on_change(self, current: S, next: S) -> None:  # noqa: A002 - Cubit's name
        """Hook called by :meth:`emit` just before the state changes. Override it.

        Examples:
            >>> from optisync import Store
            >>> class Logged(Store[int]):
            ...     def on_change(self, current: int, next: int) -> None:
            ...         print(f"{current} -> {next}")
            >>> Logged(0).emit(5)
            0 -> 5
        """

    def on_error(self, error: BaseException) -> None:
        """Hook for errors nobody else receives. Override it; by default it logs.

        It gets errors raised by listeners, and the errors of sync actions
        that no caller awaits. The default logs them on the ``optisync``
        logger at ERROR level.

        Examples:
            >>> from optisync import Store
            >>> class Loud(Store[int]):
            ...     def on_error(self, error: BaseException) -> None:
            ...         print("error:", error)
            >>> store = Loud(0)
            >>> def broken(state: int) -> None:
            ...     raise ValueError("listener bug")
            >>> _ = store.subscribe(broken)
            >>> store.emit(1)
            error: listener bug
        """
        logger.error("Unhandled error in an optisync store", exc_info=error)

    def _report(self, error: BaseException) -> None:
        try:
            self.on_error(error)
        except Exception:
            logger.exception("on_error raised while reporting %r", error)

    # -- subscriptions -------------------------------------------------------

    def subscribe(self, listener: Callable[[S], object]) -> Callable[[], None]:
        """Call ``listener(state)`` after every change; return a function that stops it.

        A listener added or removed during an emit takes effect from the next
        emit. Subscribing to a closed store is allowed; nothing will come.

        Examples:
            >>> from optisync import Store
            >>> store = Store(0)
            >>> unsubscribe = store.subscribe(lambda s: print("got", s))
            >>> store.emit(1)
            got 1
            >>> unsubscribe()
            >>> store.emit(2)
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        token = self._next_listener
        self._next_listener += 1
        self._listeners[token] = listener
        self._snapshot = None

        def unsubscribe() -> None:
            if self._listeners.pop(token, None) is not None:
                self._snapshot = None

        return unsubscribe

    def stream(self) -> StateStream[S]:
        """An async iterator over every state emitted from now on.

        It buffers without bound, so a slow reader never slows :meth:`emit` and
        misses nothing; it ends when the store closes. Stop early with
        ``aclose()`` or by dropping it.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> async def main() -> None:
            ...     store = Store(0)
            ...     states = store.stream()
            ...     store.emit(1)
            ...     store.emit(2)
            ...     await store.close()
            ...     print([s async for s in states])
            >>> asyncio.run(main())
            [1, 2]
        """
        channel: StreamChannel[S] = StreamChannel()
        if self._closed:
            channel.end()
            return StateStream(channel, lambda: None)
        stop_listening = self.subscribe(channel.push)
        self._channels.add(channel)

        def unsubscribe() -> None:
            stop_listening()
            self._channels.discard(channel)

        return StateStream(channel, unsubscribe)

    # -- life cycle ----------------------------------------------------------

    async def close(self) -> None:
        """Cancel every sync in flight, free its key, end the streams; wait for all of it.

        After ``close()`` no task of the store is left, :meth:`emit` raises,
        and the sync methods refuse new calls. ``on_finish`` is not called for
        a cycle that close() cancels. Closing twice is harmless.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> async def main() -> None:
            ...     store = Store(0)
            ...     await store.close()
            ...     print(store.is_closed)
            >>> asyncio.run(main())
            True
        """
        self._closed = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        for channel in self._channels:
            channel.end()
        self._channels.clear()
        self._listeners.clear()
        self._snapshot = ()
        self._status_listeners.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- per-key status --------------------------------------------------------

    def is_syncing(self, key: Hashable) -> bool:
        """Whether a lock cycle (request, follow-ups) is in flight for ``key``.

        Examples:
            >>> from optisync import Store
            >>> Store(0).is_syncing(("like", 1))
            False
        """
        state = self._keys.get(key)
        return state is not None and state.locked

    def local_revision(self, key: Hashable) -> int:
        """How many optimistic changes this store made to ``key`` (0 if none).

        Examples:
            >>> from optisync import Store
            >>> Store(0).local_revision("k")
            0
        """
        state = self._keys.get(key)
        return 0 if state is None else state.local_revision

    def server_revision(self, key: Hashable) -> int:
        """The newest server revision this store has seen for ``key`` (-1 if none).

        It is learnt from ``inform_server_revision`` and from pushes; persist it
        with your state so that stale pushes are recognised after a restart.

        Examples:
            >>> from optisync import Store
            >>> Store(0).server_revision("k")
            -1
        """
        state = self._keys.get(key)
        return -1 if state is None else state.server_revision

    def subscribe_sync_status(self, listener: Callable[[Hashable], object]) -> Callable[[], None]:
        """Call ``listener(key)`` whenever a key's sync status changes.

        The status is what :meth:`is_syncing`, :meth:`local_revision` and
        :meth:`server_revision` return; it can change without the state
        changing (a lock released after a response equal to the state, a
        revision learnt from a response). A "Saving..." indicator listens
        here. A listener that raises goes to :meth:`on_error`. Returns a
        function that unsubscribes.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> async def main() -> None:
            ...     async with Store(False) as store:
            ...         store.subscribe_sync_status(
            ...             lambda key: print(key, "syncing:", store.is_syncing(key)))
            ...         async def send(value, local_revision, device_id, inform):
            ...             inform(1)
            ...             return None
            ...         await store.optimistic_sync_with_push(
            ...             key="like", value_to_apply=lambda: True,
            ...             apply_optimistic_value_to_state=lambda s, v: v,
            ...             get_value_from_state=lambda s: s, send_value_to_server=send,
            ...             get_server_revision_from_state=lambda key: -1)
            >>> asyncio.run(main())
            like syncing: True
            like syncing: True
            like syncing: False
        """
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {type(listener).__name__}")
        token = self._next_listener
        self._next_listener += 1
        self._status_listeners[token] = listener

        def unsubscribe() -> None:
            self._status_listeners.pop(token, None)

        return unsubscribe

    def _status_changed(self, key: Hashable) -> None:
        if not self._status_listeners:
            return
        for listener in tuple(self._status_listeners.values()):
            try:
                listener(key)
            except Exception as error:  # a listener's bug must not break a sync
                self._report(error)

    # -- sync actions ----------------------------------------------------------

    def optimistic_sync_with_push(
        self,
        *,
        key: K,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
        get_value_from_state: Callable[[S], T],
        send_value_to_server: Callable[[T, int, int, Callable[[int], None]], Awaitable[R | None]],
        get_server_revision_from_state: Callable[[K], int],
        apply_server_response_to_state: Callable[[S, R], S] | None = None,
        on_finish: OnFinish[S] | None = None,
        max_follow_up_requests: int = 10_000,
    ) -> Awaitable[None]:
        """Apply a change at once and sync it with a server that also pushes changes.

        Before it returns, the call applies ``value_to_apply()`` to the state
        and adds one to the key's local revision. If no request is in flight
        for ``key``, it takes the key's lock and starts a task (owned by the
        store) that sends the value; otherwise the change is coalesced into a
        follow-up. When a request completes: if the key's latest change came
        from a push there is no follow-up; else if the local revision moved
        on, a follow-up sends the value now in the state; else the key is
        stable and a non-None response is applied if its server revision is
        the newest known. See the guide for the whole contract.

        Args:
            key: what is synced (hashable), e.g. ``("like", item_id)``.
            value_to_apply: returns the value the user chose.
            apply_optimistic_value_to_state: ``(state, value) -> state``.
            get_value_from_state: ``state -> value``, read for follow-ups.
            send_value_to_server: ``async (value, local_revision, device_id,
                inform_server_revision) -> response``; it must call
                ``inform_server_revision(server_revision)``.
            get_server_revision_from_state: ``key -> int``, -1 when unknown.
            apply_server_response_to_state: ``(state, response) -> state``.
            on_finish: ``(error or None) -> state or None``, sync or async;
                runs once per lock cycle after the lock is released.
            max_follow_up_requests: follow-ups allowed per cycle; -1: no limit.

        Returns:
            An awaitable. The call that took the lock returns one that waits
            for the cycle and raises its error; a coalesced call returns one
            that is already complete. Awaiting is optional.

        Raises:
            TypeError: ``key`` is not hashable, or an argument has a wrong type.
            StoreClosedError: the store is closed.
            StateError: no running event loop, where a request must start.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> class Like(Store[bool]):
            ...     def toggle(self) -> object:
            ...         async def send(value, local_rev, device, inform):
            ...             inform(1)
            ...             return value
            ...         return self.optimistic_sync_with_push(
            ...             key="like",
            ...             value_to_apply=lambda: not self.state,
            ...             apply_optimistic_value_to_state=lambda s, v: v,
            ...             get_value_from_state=lambda s: s,
            ...             send_value_to_server=send,
            ...             get_server_revision_from_state=lambda key: -1,
            ...         )
            >>> async def main() -> None:
            ...     async with Like(False) as store:
            ...         await store.toggle()
            ...         print(store.state, store.server_revision("like"))
            >>> asyncio.run(main())
            True 1
        """
        if self._coalesce(key, value_to_apply, apply_optimistic_value_to_state):
            return COMPLETED
        return _sync_with_push.start(
            self,
            key,
            value_to_apply,
            apply_optimistic_value_to_state,
            get_value_from_state,
            send_value_to_server,
            get_server_revision_from_state,
            apply_server_response_to_state,
            on_finish,
            max_follow_up_requests,
        )

    def server_push(
        self,
        *,
        key: K,
        push_metadata: PushMetadata,
        apply_server_push_to_state: Callable[[S, K, int], S | None],
        get_server_revision_from_state: Callable[[K], int],
    ) -> PushOutcome:
        """Apply a change the server pushed, unless it is stale or a self-echo.

        The newest known server revision of ``key`` is the larger of the
        store's (:meth:`server_revision`) and ``get_server_revision_from_state(key)``.
        A push not newer than that is ignored (out of order, replayed,
        duplicated). A push that echoes an older local change of this very
        device only records its server revision. Any other push is applied
        with ``apply_server_push_to_state(state, key, server_revision)``
        (store the revision in your state there), marks the key's latest
        change as a push (so a request in flight gets no follow-up), and
        records the revision even when the function returns ``None``.

        Call it on the store's event-loop thread; from another thread use
        :meth:`server_push_threadsafe`.

        Returns:
            What was done: :class:`~optisync.PushOutcome`.

        Raises:
            WrongThreadError: called from another thread; nothing changed.
            StoreClosedError: the store is closed.
            TypeError: bad ``push_metadata`` or unhashable ``key``.

        Examples:
            >>> from optisync import PushMetadata, Store
            >>> store = Store({"liked": False, "rev": -1}, device_id=1)
            >>> def apply(state, key, rev):
            ...     return {"liked": True, "rev": rev}
            >>> meta = PushMetadata(server_revision=5, local_revision=1, device_id=2)
            >>> store.server_push(key="like", push_metadata=meta,
            ...     apply_server_push_to_state=apply,
            ...     get_server_revision_from_state=lambda key: store.state["rev"])
            <PushOutcome.APPLIED: 'applied'>
            >>> store.server_push(key="like", push_metadata=meta,
            ...     apply_server_push_to_state=apply,
            ...     get_server_revision_from_state=lambda key: store.state["rev"])
            <PushOutcome.STALE: 'stale'>
        """
        return _sync_with_push.push(
            self,
            key=key,
            push_metadata=push_metadata,
            apply_server_push_to_state=apply_server_push_to_state,
            get_server_revision_from_state=get_server_revision_from_state,
        )

    def server_push_threadsafe(
        self,
        *,
        key: K,
        push_metadata: PushMetadata,
        apply_server_push_to_state: Callable[[S, K, int], S | None],
        get_server_revision_from_state: Callable[[K], int],
    ) -> concurrent.futures.Future[PushOutcome]:
        """Hand a push over from any thread; it runs :meth:`server_push` on the loop.

        For listeners that call back on threads of their own (Firebase-style
        SDKs). The store must already be bound to its event loop: made inside
        a running loop, or used there once.

        Returns:
            A :class:`concurrent.futures.Future` with the
            :class:`~optisync.PushOutcome`, or the error ``server_push`` raised.

        Examples:
            >>> import asyncio, threading
            >>> from optisync import PushMetadata, Store
            >>> async def main() -> None:
            ...     store = Store(0, device_id=1)
            ...     meta = PushMetadata(server_revision=1, local_revision=1, device_id=2)
            ...     result = []
            ...     def listener_thread() -> None:
            ...         future = store.server_push_threadsafe(
            ...             key="n", push_metadata=meta,
            ...             apply_server_push_to_state=lambda s, k, rev: 42,
            ...             get_server_revision_from_state=lambda key: -1)
            ...         result.append(future.result(timeout=5))
            ...     thread = threading.Thread(target=listener_thread)
            ...     thread.start()
            ...     while thread.is_alive():
            ...         await asyncio.sleep(0.001)
            ...     print(result[0], store.state)
            >>> asyncio.run(main())
            PushOutcome.APPLIED 42
        """
        loop = self._loop
        if loop is None:
            raise StateError(
                "server_push_threadsafe() needs the store's event loop: create the store "
                "inside a running loop, or use it there once first."
            )
        future: concurrent.futures.Future[PushOutcome] = concurrent.futures.Future()

        def run_on_loop() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                outcome = self.server_push(
                    key=key,
                    push_metadata=push_metadata,
                    apply_server_push_to_state=apply_server_push_to_state,
                    get_server_revision_from_state=get_server_revision_from_state,
                )
            except BaseException as error:  # handed over to the other thread
                future.set_exception(error)
            else:
                future.set_result(outcome)

        loop.call_soon_threadsafe(run_on_loop)
        return future

    def optimistic_sync(
        self,
        *,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
        get_value_from_state: Callable[[S], T],
        send_value_to_server: Callable[[T], Awaitable[R | None]],
        apply_server_response_to_state: Callable[[S, R], S] | None = None,
        on_finish: OnFinish[S] | None = None,
        if_should_send_another_request: Callable[[T, T, int], bool] | None = None,
        max_follow_up_requests: int = 10_000,
    ) -> Awaitable[None]:
        """Apply a change at once and sync it with a server that does not push.

        The same lock, coalescing, ``on_finish``, limit and cancellation rules
        as :meth:`optimistic_sync_with_push`, without revisions: after each
        request, a follow-up is sent when
        ``if_should_send_another_request(state_value, sent_value, request_count)``
        says so (by default: when the value now in the state differs from the
        value sent). When stable, a non-None response is applied.

        Args:
            key: what is synced (hashable), e.g. ``("like", item_id)``.
            value_to_apply: returns the value the user chose.
            apply_optimistic_value_to_state: ``(state, value) -> state``.
            get_value_from_state: ``state -> value``, read after each request.
            send_value_to_server: ``async (value) -> response``.
            apply_server_response_to_state: ``(state, response) -> state``.
            on_finish: ``(error or None) -> state or None``, sync or async;
                runs once per lock cycle after the lock is released.
            if_should_send_another_request: ``(state_value, sent_value,
                request_count) -> bool``; by default ``state_value != sent_value``.
            max_follow_up_requests: follow-ups allowed per cycle; -1: no limit.

        Returns:
            An awaitable, as for :meth:`optimistic_sync_with_push`.

        Raises:
            TypeError: ``key`` is not hashable, or an argument has a wrong type.
            StoreClosedError: the store is closed.
            StateError: no running event loop, where a request must start.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> sent = []
            >>> class Like(Store[bool]):
            ...     def toggle(self) -> object:
            ...         async def send(value: bool) -> bool:
            ...             sent.append(value)
            ...             return value
            ...         return self.optimistic_sync(
            ...             key="like",
            ...             value_to_apply=lambda: not self.state,
            ...             apply_optimistic_value_to_state=lambda s, v: v,
            ...             get_value_from_state=lambda s: s,
            ...             send_value_to_server=send,
            ...         )
            >>> async def main() -> None:
            ...     async with Like(False) as store:
            ...         first = store.toggle()   # sends True
            ...         store.toggle()           # coalesced
            ...         store.toggle()           # coalesced: True again
            ...         await first
            ...         print(store.state, sent)
            >>> asyncio.run(main())
            True [True]
        """
        if self._coalesce(key, value_to_apply, apply_optimistic_value_to_state):
            return COMPLETED
        return _sync.start(
            self,
            key,
            value_to_apply,
            apply_optimistic_value_to_state,
            get_value_from_state,
            send_value_to_server,
            apply_server_response_to_state,
            on_finish,
            if_should_send_another_request,
            max_follow_up_requests,
        )

    # -- machinery shared by the sync strategies (internal) -------------------

    def _key_state(self, key: Hashable) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def _check_thread(self) -> None:
        if self._loop is None and _running_loop() is not None:
            self._bind_loop()  # first use on a loop (server_push_threadsafe needs it bound)
            return
        if threading.get_ident() != self._loop_thread:
            raise WrongThreadError(
                "This store belongs to another thread's event loop; "
                "use server_push_threadsafe() to hand a push over."
            )

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        running = _running_loop()
        if running is None:
            raise StateError(
                "A sync action needs a running event loop: call it from a coroutine "
                "or a callback running on the loop."
            )
        if self._loop is None:
            self._loop = running
            self._loop_thread = threading.get_ident()
        elif running is not self._loop:
            raise StateError("This store belongs to another event loop.")
        return running

    def _coalesce(
        self,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
    ) -> bool:
        """The hot path: a tap on a key whose request is in flight.

        Applies and counts the tap, which the cycle in flight will see as a
        follow-up, and returns True; returns False, doing nothing, when the
        key is free. Kept to a dict lookup and an emit (no scans).
        """
        try:
            key_state = self._keys.get(key)
        except TypeError:
            raise TypeError(f"key must be hashable, got {type(key).__name__}: {key!r}") from None
        if key_state is None or not key_state.locked:
            return False
        if threading.get_ident() != self._loop_thread:
            self._check_thread()
        if self._closed:
            raise StoreClosedError("Cannot start a sync: the store is closed.")
        new_state = apply_optimistic_value_to_state(self._state, value_to_apply())
        self._emit_tap(key, key_state, new_state, take_lock=False)
        return True

    def _take_lock_and_apply(
        self,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
    ) -> tuple[_KeyState, T, int]:
        """A tap on a free key: apply and count it, and take the key's lock.

        Returns the key's state, the value applied and the local revision it
        got. Nothing changes if it raises.
        """
        if self._closed:
            raise StoreClosedError("Cannot start a sync: the store is closed.")
        self._bind_loop()
        key_state = self._key_state(key)
        value = value_to_apply()
        new_state = apply_optimistic_value_to_state(self._state, value)
        revision = self._emit_tap(key, key_state, new_state, take_lock=True)
        return key_state, value, revision

    def _emit_tap(
        self, key: Hashable, key_state: _KeyState, new_state: S, *, take_lock: bool
    ) -> int:
        """Count a tap, take the lock if asked, and emit; undo it all if on_change vetoes.

        Returns the local revision this tap got (read before the emit: a
        listener may tap the same key again during it).
        """
        from_push = key_state.from_push
        key_state.local_revision += 1
        revision = key_state.local_revision
        key_state.from_push = False
        # Take the lock before emit: a listener that taps the same key
        # re-entrantly must be coalesced, not start a second request.
        if take_lock:
            key_state.locked = True
        try:
            self.emit(new_state)
        except BaseException:
            # on_change vetoed the tap (a listener's error never gets here):
            # it never happened, so it must not cause a follow-up either.
            if take_lock:
                key_state.locked = False
            key_state.local_revision -= 1
            key_state.from_push = from_push
            raise
        if self._status_listeners:  # skip the call when nobody listens
            self._status_changed(key)
        return revision

    def _start_cycle(
        self,
        key: Hashable,
        key_state: _KeyState,
        body: Coroutine[Any, Any, None],
        on_finish: OnFinish[S] | None,
    ) -> CycleResult:
        """Run the coroutine ``body`` as the key's lock cycle in a task the store owns."""
        assert self._loop is not None
        assert key_state.locked
        cycle = Cycle(key, body)
        coro = self._run_cycle(cycle, key_state, body, on_finish)
        try:
            task = self._loop.create_task(coro)
        except BaseException:
            coro.close()
            body.close()
            key_state.locked = False
            raise
        cycle.task = task
        self._tasks[task] = cycle
        task.add_done_callback(self._on_cycle_done)
        return CycleResult(cycle)

    async def _run_cycle(
        self,
        cycle: Cycle,
        key_state: _KeyState,
        body: Coroutine[Any, Any, None],
        on_finish: OnFinish[S] | None,
    ) -> None:
        try:
            try:
                try:
                    await body
                except asyncio.CancelledError as cancelled:
                    if self._closed or _is_being_cancelled():
                        raise  # close() or loop shutdown: the cycle did not finish
                    # Nobody cancelled the cycle: a callback raised it on its
                    # own (say, a client whose task was cancelled). That is a
                    # failed request, and must not look like our cancellation.
                    raise RequestCancelledError(cycle.key) from cancelled
                finally:
                    key_state.locked = False
                    self._status_changed(cycle.key)
            except Exception as error:
                # If on_finish raises, its error replaces this one (chained to it).
                if on_finish is not None:
                    await self._finish(cycle, on_finish, error)
                raise
            if on_finish is not None:
                await self._finish(cycle, on_finish, None)
        except BaseException as error:
            cycle.finish(error)
            raise
        cycle.finish(None)

    async def _finish(
        self,
        cycle: Cycle,
        on_finish: OnFinish[S],
        error: Exception | None,
    ) -> None:
        try:
            result = on_finish(error)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError as cancelled:
            if self._closed or _is_being_cancelled():
                raise
            raise RequestCancelledError(cycle.key) from cancelled
        if result is not None and not self._closed:
            self.emit(result)

    def _cycle_done(self, task: asyncio.Task[None]) -> None:
        cycle = self._tasks.pop(task)
        if task.cancelled():
            never_started = inspect.getcoroutinestate(cycle.body) == inspect.CORO_CREATED
            cycle.body.close()  # unstarted if cancelled before the task's first step
            cycle.finish(asyncio.CancelledError())
            if never_started:
                self._free_never_started(cycle.key)
            return
        error = task.exception()  # also marks it retrieved: no asyncio warning
        if error is not None and not cycle.delivered:
            self._report(error)

    def _free_never_started(self, key: Hashable) -> None:
        # A task cancelled before its first step (by close(), loop shutdown or
        # anyone else) never ran the cycle's finally, so the lock is still its.
        key_state = self._keys.get(key)
        if key_state is not None and key_state.locked:
            key_state.locked = False
            self._status_changed(key)
