"""``optisync.ui.qt``: a :class:`~optisync.Store` drives Qt widgets (PySide6, with qasync).

:class:`StoreSignals` is a ``QObject`` that emits its ``state_changed``
signal with each new state of a store, runs the store's actions from slots,
and lives exactly as long as the widget it is given as parent: when that
widget is destroyed, the store subscription goes with it.

Qt and asyncio must share one thread: run the app on qasync's ``QEventLoop``
(``qasync.run(main())``), so the store's loop is Qt's event loop, every
listener and every slot runs in the GUI thread, and a slot can start a
coroutine. Needs the ``qt`` extra (``pip install "optisync[qt]"``); importing
this module imports PySide6, ``import optisync`` does not.

Example:
    >>> from PySide6.QtCore import QObject
    >>> from optisync import Store
    >>> from optisync.ui.qt import StoreSignals
    >>> store = Store(0)
    >>> window = QObject()  # a QWidget in an app
    >>> signals = StoreSignals(store, parent=window)
    >>> signals.bind(lambda count: print("shows", count))
    shows 0
    >>> store.emit(1)
    shows 1
    >>> signals.close()  # or let Qt destroy the window: the subscription goes with it
    >>> store.emit(2)
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import shiboken6
from PySide6.QtCore import SIGNAL, QObject, Signal

from optisync.store import Store

__all__ = ["StoreSignals"]

S = TypeVar("S")


class StoreSignals(QObject, Generic[S]):
    """A ``QObject`` that emits ``state_changed(state)`` with each new state of ``store``.

    It has two signals: :attr:`state_changed` (each new state) and
    :attr:`failed` (an action's error).

    Lifetime: pass the widget that shows the state as ``parent``. Qt then
    deletes this object with the widget, and the subscription is removed as
    the widget is destroyed (``destroyed`` fires before its children go), so
    a state is never emitted to a deleted object. :meth:`close` does the same
    by hand. The store holds only a weak reference to this object: without a
    parent, it lives as long as you keep it. Closing it does not close the
    store (the store belongs to whoever opened it, often for the whole app).

    Args:
        store: the store to show.
        parent: the widget (any ``QObject``) whose lifetime this adapter shares.

    Example:
        >>> from PySide6.QtCore import QObject
        >>> from optisync import Store
        >>> from optisync.ui.qt import StoreSignals
        >>> store = Store("draft")
        >>> window = QObject()
        >>> signals = StoreSignals(store, parent=window)
        >>> _ = signals.state_changed.connect(print)
        >>> store.emit("saved")
        saved
        >>> import shiboken6
        >>> shiboken6.delete(window)  # what Qt does when the window is destroyed
        >>> signals.closed
        True
        >>> store.emit("edited")  # the subscription went with the window: nothing printed
    """

    state_changed = Signal(object)
    """Emitted with the store's new state, once per change, in the store's loop thread.

    Example:
        >>> from optisync import Store
        >>> from optisync.ui.qt import StoreSignals
        >>> store = Store("a")
        >>> signals = StoreSignals(store)
        >>> _ = signals.state_changed.connect(lambda state: print("repaint", state))
        >>> store.emit("b")
        repaint b
    """

    failed = Signal(object)
    """Emitted with the error (an ``Exception``) of an action started with :meth:`run`.

    With no slot connected, the error goes to the store's
    :meth:`~optisync.Store.on_error` instead.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.ui.qt import StoreSignals
        >>> async def main() -> None:
        ...     signals = StoreSignals(Store(0))
        ...     _ = signals.failed.connect(lambda error: print("not saved:", error))
        ...     async def save() -> None:
        ...         raise TimeoutError("no answer")
        ...     await asyncio.wait([signals.run(save())])
        >>> asyncio.run(main())
        not saved: no answer
    """

    def __init__(self, store: Store[S], parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.__store = store
        # Closures over plain objects, never over self: they may run while
        # Qt destroys this object, when its Python wrapper is already invalid.
        lifetime = _Lifetime(store, weakref.ref(self))
        self.__lifetime = lifetime
        if parent is not None:
            parent.destroyed.connect(lifetime.close)
        self.destroyed.connect(lifetime.close)

    @property
    def store(self) -> Store[S]:
        """The store this adapter shows.

        Example:
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> store = Store(0)
            >>> StoreSignals(store).store is store
            True
        """
        return self.__store

    @property
    def state(self) -> S:
        """The store's current state (what a widget paints first).

        Example:
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> StoreSignals(Store(["milk"])).state
            ['milk']
        """
        return self.__store.state

    @property
    def closed(self) -> bool:
        """Whether the subscription is gone (:meth:`close`, or the parent was destroyed).

        Example:
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> signals = StoreSignals(Store(0))
            >>> signals.close()
            >>> signals.closed
            True
        """
        return self.__lifetime.is_closed

    def bind(self, slot: Callable[[S], object]) -> None:
        """Connect ``slot`` to :attr:`state_changed` and call it now with the current state.

        The usual way to paint: one function renders a state, at start and
        after each change.

        Example:
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> store = Store(1)
            >>> signals = StoreSignals(store)
            >>> signals.bind(lambda n: print("paint", n))
            paint 1
            >>> store.emit(2)
            paint 2
        """
        self.state_changed.connect(slot)
        slot(self.__store.state)

    def run(self, action: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run ``action`` (a coroutine, or the awaitable a store action returns) from a slot.

        Call it in the loop's thread (a slot under qasync). It is awaited in a
        task this adapter owns: :meth:`close` (or the parent's destruction)
        cancels that task, so a coroutine never touches a deleted widget.
        Cancelling it does not cancel a sync the store started
        (``store.done.set(...)``): the change still reaches the server. A
        future or task you pass is awaited as it is, never cancelled here.
        Its error is emitted with :attr:`failed` (or given to the store's
        ``on_error`` when no slot listens), never lost in an unawaited task.
        Returns the future.

        Raises:
            RuntimeError: no asyncio loop runs in this thread (run the app on
                qasync's ``QEventLoop``).

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> async def main() -> None:
            ...     signals = StoreSignals(Store(0))
            ...     _ = signals.failed.connect(lambda error: print("failed:", error))
            ...     async def save() -> None:
            ...         raise ConnectionError("offline")
            ...     await asyncio.wait([signals.run(save())])
            >>> asyncio.run(main())
            failed: offline
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "StoreSignals.run() needs a running asyncio loop in this thread: "
                "run the Qt app on qasync's QEventLoop (qasync.run(main()))."
            ) from None
        future = asyncio.ensure_future(action, loop=loop)
        if future is not action:  # a task made here, which only awaits the action
            self.__lifetime.own(future)
        future.add_done_callback(self.__lifetime.report)
        return future

    def close(self) -> None:
        """Unsubscribe from the store and cancel the tasks :meth:`run` started; idempotent.

        Qt calls it for you when the parent is destroyed. The store stays open.

        Example:
            >>> from optisync import Store
            >>> from optisync.ui.qt import StoreSignals
            >>> store = Store(0)
            >>> signals = StoreSignals(store)
            >>> _ = signals.state_changed.connect(print)
            >>> signals.close()
            >>> store.emit(1)  # nothing emitted
        """
        self.__lifetime.close()


class _Lifetime(Generic[S]):
    """The subscription and owned tasks of one adapter, closed once.

    It reaches the adapter only through a weak reference checked with
    ``shiboken6.isValid``, so nothing calls into a deleted C++ object.
    """

    def __init__(self, store: Store[S], adapter: weakref.ref[StoreSignals[S]]) -> None:
        self.store = store
        self.adapter = adapter
        self.tasks: set[asyncio.Future[Any]] = set()
        self.is_closed = False
        self.unsubscribe = store.subscribe(self.deliver)

    def live_adapter(self) -> StoreSignals[S] | None:
        adapter = self.adapter()
        if self.is_closed or adapter is None or not shiboken6.isValid(adapter):
            return None
        return adapter

    def deliver(self, state: S) -> None:
        adapter = self.live_adapter()
        if adapter is not None:
            adapter.state_changed.emit(state)

    def own(self, task: asyncio.Future[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def report(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            return
        adapter = self.live_adapter()
        if adapter is not None and adapter.receivers(SIGNAL("failed(PyObject)")) > 0:
            adapter.failed.emit(error)
        else:
            self.store.on_error(error)

    def close(self, *_: object) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        self.unsubscribe()
        for task in list(self.tasks):
            task.cancel()
