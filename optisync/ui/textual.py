"""Show a store in a Textual widget: subscribe on mount, stop on unmount, no drawing after.

Textual runs one asyncio loop, the one a store made in the app belongs to, so
a widget's handlers call the store's actions directly (``store.toggle()``);
what needs care is the way back. :class:`StoreWatcher`, mixed into a widget,
a screen or the app, gives it :meth:`~StoreWatcher.watch_store`: the callback
gets each new state while the node runs, the subscription ends when the node
unmounts (or the store closes), and the node never keeps the store alive.
Set a ``reactive`` in the callback and Textual repaints.

Needs the ``textual`` extra: ``pip install optisync[textual]``.
See docs/ui-textual.md.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable
from typing import Any, Generic, ParamSpec, TypeVar

from textual.message_pump import MessagePump

from optisync.errors import ArgumentTypeError, StateError
from optisync.store import Store

__all__ = ["StoreWatcher"]

S = TypeVar("S")
P = ParamSpec("P")


def _nothing(*_: object) -> None:
    pass


class _Watch(Generic[S]):
    """One watch: the store's listener (the store owns it; the node holds it weakly)."""

    __slots__ = ("__weakref__", "callback", "node", "stops", "store")

    def __init__(self, node: MessagePump, store: Store[S], callback: Callable[[S], object]) -> None:
        self.node = weakref.ref(node)
        self.store = weakref.ref(store)
        self.callback = callback
        self.stops: list[Callable[[], None]] = []

    def on_state(self, state: S) -> None:
        node = self.node()
        if node is None or not node.is_running:
            self.stop()  # unmounting: the widgets may be gone already
            return
        self.callback(state)

    def on_sync_status(self, _key: Hashable) -> None:
        store = self.store()
        if store is not None:
            self.on_state(store.state)

    def stop(self) -> None:
        stops, self.stops = self.stops, []
        self.callback = _nothing  # let the node go even if the store lives on
        for stop in stops:
            stop()


class StoreWatcher:
    """A mixin for a Textual widget, screen or app that shows one or more stores.

    Put it before the Textual class: ``class TodoList(StoreWatcher, Static)``.
    Call :meth:`watch_store` from ``on_mount`` (or later); each watch ends
    when the node unmounts, when the store closes, or when you call the
    function it returns. The node holds its watches weakly, so a store
    nobody else holds is freed.

    Everything runs on Textual's loop: the store must belong to the app's
    loop (make it in ``on_mount`` or in a coroutine the app runs). For a store
    on another thread, see :class:`optisync.threads.ThreadBridge`: its
    subscriber can ``post_message`` the state to a widget (thread-safe).

    Examples:
        >>> import asyncio
        >>> from textual.app import App
        >>> from textual.widgets import Label
        >>> from optisync import Store
        >>> from optisync.ui.textual import StoreWatcher
        >>> class Counter(StoreWatcher, Label):
        ...     def __init__(self, store: Store[int]) -> None:
        ...         super().__init__()
        ...         self.store = store
        ...     def on_mount(self) -> None:
        ...         self.watch_store(self.store, lambda n: self.update(f"count: {n}"))
        >>> class CounterApp(App[None]):
        ...     def compose(self):
        ...         self.store = Store(0)
        ...         yield Counter(self.store)
        >>> async def main() -> None:
        ...     app = CounterApp()
        ...     async with app.run_test() as pilot:
        ...         app.store.emit(3)
        ...         await pilot.pause()
        ...         shown = app.query_one(Counter).content
        ...     print(shown)  # Textual captures print() while the app runs
        >>> asyncio.run(main())
        count: 3
    """

    def watch_store(
        self,
        store: Store[S],
        callback: Callable[[S], object],
        *,
        init: bool = True,
        sync_status: bool = False,
    ) -> Callable[[], None]:
        """Call ``callback(state)`` with each new state of ``store`` while this node runs.

        Args:
            store: the store to show.
            callback: draws a state; it runs inside the store's ``emit``, on
                Textual's loop (setting a ``reactive`` there is the usual way).
            init: call it at once with the current state too (as Textual's
                ``watch(..., init=True)`` does).
            sync_status: call it also (with the current state) when a key
                starts or stops syncing, for a "Saving..." label that reads
                :meth:`~optisync.Store.is_syncing`.

        Returns:
            A function that ends the watch early (calling it twice is harmless).

        Raises:
            StateError: the node is not running (not mounted yet, or unmounting).

        Examples:
            >>> import asyncio
            >>> from textual.app import App
            >>> from optisync import Store
            >>> from optisync.ui.textual import StoreWatcher
            >>> class Shown(StoreWatcher, App[None]):
            ...     def on_mount(self) -> None:
            ...         self.store = Store("a")
            ...         self.stop = self.watch_store(self.store, seen.append)
            >>> seen: list[str] = []
            >>> async def main() -> None:
            ...     app = Shown()
            ...     async with app.run_test():
            ...         app.store.emit("b")
            ...         app.stop()
            ...         app.store.emit("c")
            >>> asyncio.run(main())
            >>> print(*seen)
            a b
        """
        if not isinstance(self, MessagePump):
            raise ArgumentTypeError(
                "StoreWatcher must be mixed into a Textual widget, screen or app: "
                f"{type(self).__name__} is none of them."
            )
        if not self.is_running:
            raise StateError(
                f"{type(self).__name__}.watch_store() needs the node running: call it from "
                "on_mount (or later), not from __init__ nor once it is unmounting."
            )
        watch = _Watch(self, store, callback)
        watch.stops.append(store.subscribe(watch.on_state))
        if sync_status:
            watch.stops.append(store.subscribe_sync_status(watch.on_sync_status))
        self.__watches().add(watch)
        if init:
            callback(store.state)
        return watch.stop

    def while_mounted(self, callback: Callable[P, object]) -> Callable[P, None]:
        """``callback``, called only while this node runs: for the other hooks a store calls.

        A store's ``on_error``, a log line, a status hook can fire while the
        app shuts down, when its widgets are gone; the function this returns
        then does nothing.

        Examples:
            >>> import asyncio
            >>> from textual.app import App
            >>> from optisync.ui.textual import StoreWatcher
            >>> class Logged(StoreWatcher, App[None]):
            ...     pass
            >>> lines: list[str] = []
            >>> async def main() -> None:
            ...     app = Logged()
            ...     log = app.while_mounted(lines.append)
            ...     async with app.run_test():
            ...         log("running")
            ...     log("gone")
            >>> asyncio.run(main())
            >>> lines
            ['running']
        """
        node = weakref.ref(self)

        def guarded(*args: P.args, **kwargs: P.kwargs) -> None:
            alive = node()
            if isinstance(alive, MessagePump) and alive.is_running:
                callback(*args, **kwargs)

        return guarded

    def __watches(self) -> weakref.WeakSet[_Watch[Any]]:
        watches: weakref.WeakSet[_Watch[Any]] | None = getattr(
            self, "_StoreWatcher__watch_set", None
        )
        if watches is None:
            watches = weakref.WeakSet()
            self.__watch_set = watches
        return watches

    def _on_unmount(self) -> None:
        # Textual calls each class's handler along the MRO: this one runs
        # whatever on_unmount the widget defines.
        for watch in list(self.__watches()):
            watch.stop()
