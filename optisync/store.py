"""The :class:`Store`: an immutable state, ``emit()``, subscribers, and sync actions.

The store is the Cubit: state, emit, subscriptions, streams, hooks and close.
The sync machinery lives in one composed engine (``optisync._engine``) that
the strategies share. Every attribute the store keeps is name-mangled
(``__x``), so a subclass may use any ``_name`` of its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from optisync import command as _command
from optisync import sync as _sync
from optisync import sync_with_push as _sync_with_push
from optisync._engine import SyncEngine
from optisync._loop import LoopBinding, logger, report
from optisync._stream import StateStream, StreamChannel
from optisync._tasks import COMPLETED
from optisync._threadsafe import Handover
from optisync._types import OnFinish
from optisync.errors import ArgumentTypeError, InvalidArgumentError, StateError, StoreClosedError
from optisync.revisions import PushMetadata, PushOutcome, new_device_id, require_int

__all__ = ["Store"]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


class Store(Generic[S]):
    """A container of one immutable state, in the style of a bloc Cubit.

    Subclass it and write your actions as methods that call :meth:`emit` or one
    of the sync methods. Listeners learn about every change through
    :meth:`subscribe` (callbacks) or :meth:`stream` (an async iterator).

    Args:
        initial_state: the first state. Treat states as immutable values:
            replace them with :meth:`emit`, never change them in place.
        device_id: this store's device id for ``optimistic_sync_with_push``
            (an int >= 0); by default the one from
            :func:`optisync.set_device_id_provider`, or else a random 53-bit
            id of this store's own.
        local_revision_base: where this store's local revisions start (an
            int >= 0, default 0): each key's first change gets
            ``local_revision_base + 1``. A device that keeps its device id
            across restarts must give each run a higher base than any local
            revision an earlier run sent, so that the echo of a request sent
            before the restart is never taken for the echo of one sent after
            it; ``optisync.persistence`` does this for you.
        eager_start: run each lock cycle's task eagerly (Python 3.12+): the
            first request starts inside the call, up to the send's first
            ``await``, as in the Dart seed; about half the cost of a full
            cycle. It changes two behaviours, all the rules of the guide
            still hold otherwise: ``close()`` right after a tap no longer
            prevents its request; a send that never suspends finishes inside
            the call, so the next tap starts a new request rather than a
            follow-up. Off by default, so every Python version behaves the
            same.

    Subclassing: the names a subclass may not redefine are the public API
    below (``state``, ``emit``, the sync methods, ...) and dunders.
    Everything the store keeps is name-mangled (``_Store__...``), so your own
    ``_send``, ``_finish`` or ``_tasks`` never collide with it. Override
    ``on_change`` and ``on_error``; they are hooks. ``close`` may be
    extended to release what your store holds, as a Cubit's is: accept
    ``timeout`` and end with ``await super().close(timeout=timeout)``
    (``async with`` calls your ``close``).

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

    def __init__(
        self,
        initial_state: S,
        *,
        device_id: int | None = None,
        local_revision_base: int = 0,
        eager_start: bool = False,
    ) -> None:
        if eager_start and sys.version_info < (3, 12):
            raise InvalidArgumentError(
                "eager_start=True needs Python 3.12 or newer (asyncio eager tasks)."
            )
        if device_id is None:
            self.__device_id = new_device_id()
        else:
            self.__device_id = require_int(device_id, "device_id", minimum=0)
        self.__state = initial_state
        self.__closed = False
        self.__listeners: dict[int, Callable[[S], object]] = {}
        # The listeners an emit calls; None once they changed (rebuilt lazily).
        self.__snapshot: tuple[Callable[[S], object], ...] | None = ()
        self.__next_listener = 0
        self.__channels: set[StreamChannel[S]] = set()
        # States emitted by listeners while an emit delivers: delivered after it, in order.
        self.__delivering = False
        self.__pending: deque[S] = deque()
        self.__binding = LoopBinding()
        self.__engine: SyncEngine[S] = SyncEngine(
            self,
            self.__binding,
            eager_start=bool(eager_start),
            local_revision_base=require_int(local_revision_base, "local_revision_base", minimum=0),
        )
        self.__handover = Handover()

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> S:
        """The current state.

        Examples:
            >>> from optisync import Store
            >>> Store("hello").state
            'hello'
        """
        return self.__state

    @property
    def device_id(self) -> int:
        """This store's device id, sent with every request of ``optimistic_sync_with_push``.

        Examples:
            >>> from optisync import Store
            >>> Store(0, device_id=7).device_id
            7
        """
        return self.__device_id

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called.

        Examples:
            >>> from optisync import Store
            >>> Store(0).is_closed
            False
        """
        return self.__closed

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
        binding = self.__binding
        if binding.loop is None or binding.thread != threading.get_ident():
            binding.check_thread()
        if self.__closed:
            raise StoreClosedError("Cannot emit a new state: the store is closed.")
        current = self.__state
        if state is current or state == current:
            return
        self.on_change(current, state)
        self.__state = state
        if self.__delivering:
            # A listener emitted: deliver after the state being delivered,
            # so that every listener and stream sees the states in order.
            self.__pending.append(state)
            return
        self.__delivering = True
        try:
            interrupt = self.__notify(state, None)
            pending = self.__pending
            while pending:
                interrupt = self.__notify(pending.popleft(), interrupt)
        finally:
            self.__delivering = False
            self.__pending.clear()
        if interrupt is not None:
            raise interrupt

    def __notify(self, state: S, interrupt: BaseException | None) -> BaseException | None:
        """Call every listener; return the first KeyboardInterrupt-like error, if any."""
        listeners = self.__snapshot
        if listeners is None:
            listeners = self.__snapshot = tuple(self.__listeners.values())
        for listener in listeners:
            try:
                listener(state)
            except (Exception, asyncio.CancelledError) as error:
                # A listener's bug must not stop the others. A CancelledError
                # raised by plain code (future.result() on a cancelled future)
                # is such a bug: a listener is not a task that can be cancelled.
                report(self.on_error, error)
            except BaseException as error:  # KeyboardInterrupt, SystemExit
                # Everyone still gets this state and those queued after it,
                # so no listener is left behind; then it propagates.
                interrupt = interrupt or error
        return interrupt

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
            raise ArgumentTypeError(f"listener must be callable, got {type(listener).__name__}")
        token = self.__next_listener
        self.__next_listener += 1
        self.__listeners[token] = listener
        self.__snapshot = None

        def unsubscribe() -> None:
            if self.__listeners.pop(token, None) is not None:
                self.__snapshot = None

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
        if self.__closed:
            channel.end()
            return StateStream(channel, lambda: None)
        stop_listening = self.subscribe(channel.push)
        self.__channels.add(channel)

        def unsubscribe() -> None:
            stop_listening()
            self.__channels.discard(channel)

        return StateStream(channel, unsubscribe)

    # -- life cycle ----------------------------------------------------------

    # Not asyncio.timeout() around close(): on time-out close() still ends the
    # streams and reports what did not stop, instead of being cut off half done.
    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Cancel every sync in flight, free its key, end the streams; wait for all of it.

        After ``close()`` no task of the store is left, :meth:`emit` raises,
        and the sync methods refuse new calls. ``on_finish`` is not called for
        a cycle that close() cancels. Closing twice is harmless. A subclass
        may extend it; it must then await ``super().close(timeout=timeout)``.

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
        self.__closed = True
        await self.__handover.close()
        await self.__engine.close(timeout)
        for channel in self.__channels:
            channel.end()
        self.__channels.clear()
        self.__listeners.clear()
        self.__snapshot = ()
        self.__engine.status_listeners.clear()

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
        state = self.__engine.keys.get(key)
        return state is not None and state.locked

    def local_revision(self, key: Hashable) -> int:
        """The local revision of this store's latest optimistic change to ``key``.

        It is :attr:`local_revision_base` plus the number of changes this
        store made to the key (so 0 if none, with the default base).

        Examples:
            >>> from optisync import Store
            >>> Store(0).local_revision("k")
            0
            >>> Store(0, local_revision_base=2**32).local_revision("k")
            4294967296
        """
        engine = self.__engine
        state = engine.keys.get(key)
        return engine.local_revision_base if state is None else state.local_revision

    @property
    def local_revision_base(self) -> int:
        """Where this store's local revisions start (see the constructor).

        Examples:
            >>> from optisync import Store
            >>> Store(0, local_revision_base=10).local_revision_base
            10
        """
        return self.__engine.local_revision_base

    def server_revision(self, key: Hashable) -> int:
        """The newest server revision this store has seen for ``key`` (-1 if none).

        It is learnt from ``inform_server_revision`` and from pushes; persist it
        with your state so that stale pushes are recognised after a restart.

        Examples:
            >>> from optisync import Store
            >>> Store(0).server_revision("k")
            -1
        """
        state = self.__engine.keys.get(key)
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
        return self.__engine.subscribe_status(listener)

    def forget_server_revisions(self) -> None:
        """Forget the server revision of every key (the server was replaced).

        For a server that starts its revisions over: a new database, or one
        restored from a backup. Its pushes would look stale next to the
        revisions of the old one; after this, each key takes the next push
        or response as the newest. Local revisions are kept, so that a
        server that remembers this device's writes never takes a new one
        for a retry of an old one. A served store's fields call it when their
        transport reports a reset.

        Examples:
            >>> from optisync import PushMetadata, Store
            >>> store = Store({}, device_id=1)
            >>> meta = PushMetadata(server_revision=9, local_revision=1, device_id=2)
            >>> _ = store.server_push(key="k", push_metadata=meta,
            ...     apply_server_push_to_state=lambda s, k, r: {"k": r},
            ...     get_server_revision_from_state=lambda k: -1)
            >>> store.server_revision("k"), store.forget_server_revisions()
            (9, None)
            >>> store.server_revision("k")
            -1
        """
        self.__engine.forget_server_revisions()

    def forget_idle_keys(self, keys: Iterable[Hashable] | None = None) -> int:
        """Drop the per-key bookkeeping of idle keys; return how many were dropped.

        The store remembers each key it synced (revisions and lock, about
        150 bytes); an app with an unbounded number of keys (items that come
        and go) frees them here. With no ``keys``, every key not syncing now
        is forgotten; keys that are syncing are always kept. A forgotten key
        starts over: its local revision at :attr:`local_revision_base` and its
        server revision at -1 until it is read again from the state by
        ``get_server_revision_from_state`` (which every sync call and push
        does). So forget a key only when no echo of its older writes matters
        any more (a deleted item), or when your state holds its server
        revision, as the guide recommends.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> async def main() -> None:
            ...     async with Store(0) as store:
            ...         async def send(value: int) -> None:
            ...             pass
            ...         for key in range(3):
            ...             await store.optimistic_sync(
            ...                 key=key, value_to_apply=lambda: 1,
            ...                 apply_optimistic_value_to_state=lambda s, v: v,
            ...                 get_value_from_state=lambda s: s, send_value_to_server=send)
            ...         before = store.local_revision(0)
            ...         print(before, store.forget_idle_keys(), store.local_revision(0))
            >>> asyncio.run(main())
            1 3 0
        """
        return self.__engine.forget_idle_keys(keys)

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
            ArgumentTypeError: ``key`` is not hashable, or an argument has a
                wrong type (a ``TypeError``).
            InvalidArgumentError: ``max_follow_up_requests`` is below -1 (a
                ``ValueError``).
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
        engine = self.__engine
        if engine.coalesce(key, value_to_apply, apply_optimistic_value_to_state):
            return COMPLETED
        call = _sync_with_push.PushSync(
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
        return _sync_with_push.start(engine, call)

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
        device, made before the key's latest change in this run (a tap still
        on screen, not replaced by a push), only records its server revision.
        Any other push is applied
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
            ArgumentTypeError: bad ``push_metadata`` or unhashable ``key`` (a ``TypeError``).

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
            self.__engine,
            key,
            push_metadata,
            apply_server_push_to_state,
            get_server_revision_from_state,
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
        return self.__handover.submit(
            self.__binding.loop,
            lambda: self.server_push(
                key=key,
                push_metadata=push_metadata,
                apply_server_push_to_state=apply_server_push_to_state,
                get_server_revision_from_state=get_server_revision_from_state,
            ),
        )

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
            ArgumentTypeError: ``key`` is not hashable, or an argument has a
                wrong type (a ``TypeError``).
            InvalidArgumentError: ``max_follow_up_requests`` is below -1 (a
                ``ValueError``).
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
        engine = self.__engine
        if engine.coalesce(key, value_to_apply, apply_optimistic_value_to_state):
            return COMPLETED
        call = _sync.Sync(
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
        return _sync.start(engine, call)

    def optimistic_command(
        self,
        *,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
        get_value_from_state: Callable[[S], T],
        send_command_to_server: Callable[[T], Awaitable[R | None]],
        apply_server_response_to_state: Callable[[S, R], S] | None = None,
        rollback_state: Callable[[S, T, T, Exception], S | None] | None = None,
        reload_from_server: Callable[[], Awaitable[T]] | None = None,
        on_finish: OnFinish[S] | None = None,
    ) -> Awaitable[None]:
        """Apply a one-shot action at once, run it on the server, undo it if it fails.

        For what is not a value to converge on: add a todo, send a message.
        The call applies ``value_to_apply()`` to the state and takes the key's
        lock before it returns; a task the store owns then awaits
        ``send_command_to_server(value)``. On success a non-None response is
        applied with ``apply_server_response_to_state``. On failure the state
        is rolled back, unless it moved on: by default the value from before
        the command is restored only while the state still holds the value
        the command applied (see :func:`~optisync.roll_back_unless_moved_on`);
        then ``reload_from_server()``, if given, fetches the value, which is
        applied unless the value changed while it loaded. The command's error
        reaches ``on_finish`` and the awaiting caller; a failing reload goes
        to :meth:`on_error` and never hides it.

        One command per key runs at a time: a second call while one runs
        raises :class:`~optisync.CommandInProgressError` and changes nothing
        (queueing would make a double tap send twice). Cancellation,
        ``on_finish`` and error routing are those of the sync methods.

        Args:
            key: names the command (hashable), e.g. ``("add_todo", todo.id)``.
            value_to_apply: returns the value the command shows at once.
            apply_optimistic_value_to_state: ``(state, value) -> state``; also
                used to roll back and to apply a reload.
            get_value_from_state: ``state -> value``.
            send_command_to_server: ``async (value) -> response``.
            apply_server_response_to_state: ``(state, response) -> state``.
            rollback_state: ``(state, value_before, value_applied, error) ->
                state or None`` (None: no rollback).
            reload_from_server: ``async () -> value``, run after a failure.
            on_finish: ``(error or None) -> state or None``, sync or async;
                runs once after the lock is released.

        Returns:
            An awaitable that waits for the command and raises its error.

        Raises:
            CommandInProgressError: a command for ``key`` is running.
            ArgumentTypeError: ``key`` is not hashable, or an argument has a
                wrong type (a ``TypeError``).
            StoreClosedError: the store is closed.
            StateError: no running event loop.

        Examples:
            >>> import asyncio
            >>> from optisync import Store
            >>> class Todos(Store[tuple[str, ...]]):
            ...     def add(self, title: str, fail: bool = False) -> object:
            ...         async def send(todos: tuple[str, ...]) -> None:
            ...             if fail:
            ...                 raise ConnectionError("offline")
            ...         return self.optimistic_command(
            ...             key=("add", title),
            ...             value_to_apply=lambda: (*self.state, title),
            ...             apply_optimistic_value_to_state=lambda s, todos: todos,
            ...             get_value_from_state=lambda s: s,
            ...             send_command_to_server=send,
            ...         )
            >>> async def main() -> None:
            ...     async with Todos(()) as store:
            ...         await store.add("milk")
            ...         failed = store.add("eggs", fail=True)
            ...         print(store.state)  # shown at once
            ...         try:
            ...             await failed
            ...         except ConnectionError:
            ...             print(store.state)  # rolled back
            >>> asyncio.run(main())
            ('milk', 'eggs')
            ('milk',)
        """
        call = _command.Command(
            key,
            value_to_apply,
            apply_optimistic_value_to_state,
            get_value_from_state,
            send_command_to_server,
            apply_server_response_to_state,
            rollback_state,
            reload_from_server,
            on_finish,
        )
        return _command.start(self.__engine, call)


# -- library-internal access for optisync.fields and optisync.persistence --------------


def _engine_of(store: Store[Any]) -> SyncEngine[Any]:
    engine: SyncEngine[Any] = getattr(store, "_Store__engine")  # noqa: B009
    return engine


def adopt_local_revision_base(store: Store[Any], base: int) -> None:
    """Start a store that has made no change yet at ``base`` (for ``Persistence.attach``).

    Raises ``InvalidArgumentError`` if the store was built with another non-zero
    base, ``StateError`` if it already changed a key.
    """
    engine = _engine_of(store)
    current = engine.local_revision_base
    if current == base:
        return
    if current != 0:
        raise InvalidArgumentError(
            f"the store's local_revision_base is {current}, not the persisted {base}: "
            "leave it out (attach sets it) or build the store with "
            "local_revision_base=saved.local_revision_base"
        )
    if any(key_state.local_revision != current for key_state in engine.keys.values()):
        raise StateError(
            "the store already made a change: attach the persistence right after building "
            "the store, before any sync"
        )
    engine.local_revision_base = base
    for key_state in engine.keys.values():
        key_state.local_revision = base


def latest_change_is_push(store: Store[Any], key: Hashable) -> bool:
    """Whether the key's latest change came from a push (for the fields' retries)."""
    key_state = _engine_of(store).keys.get(key)
    return key_state is not None and key_state.from_push
