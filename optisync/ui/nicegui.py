"""``optisync.ui.nicegui``: a :class:`~optisync.Store` drives NiceGUI pages.

* :func:`render` builds part of a page from a store's state, in a
  ``ui.refreshable``, and rebuilds it on each new state, in this page only.
  The subscription lives as long as the page's client: it goes when NiceGUI
  deletes the client (the tab closed and did not reconnect in time).
* :func:`open_with_app` opens a store, or a whole device
  (:func:`optisync.device.open_device`), when the NiceGUI app starts and
  closes it when the app shuts down; every page shares it.

NiceGUI runs one asyncio loop (uvicorn's), and runs page functions, event
handlers (sync or ``async``) and lifecycle hooks on it. A store must live on
that same loop: :func:`open_with_app` makes it there, in NiceGUI's startup.
Then a handler calls the store's actions directly (``on_click=lambda:
store.done.set(item, True)``), and a push from the server, which the
client delivers on that loop, refreshes every open page.

Needs the ``nicegui`` extra (``pip install "optisync[nicegui]"``); importing
this module imports NiceGUI, ``import optisync`` does not.

Example:
    A page in NiceGUI's user simulation (``nicegui.testing``), no browser:

    >>> import asyncio
    >>> from nicegui import ui
    >>> from nicegui.testing import user_simulation
    >>> from optisync import Store
    >>> from optisync.ui.nicegui import render
    >>> store = Store(0)
    >>> def page() -> None:
    ...     render(store, lambda count: ui.label(f"count: {count}"))
    ...     ui.button("add", on_click=lambda: store.emit(store.state + 1))
    >>> async def main() -> None:
    ...     async with user_simulation(page) as user:
    ...         await user.open("/")
    ...         user.find("add").click()
    ...         await user.should_see("count: 1")
    ...         print("shown:", store.state)
    >>> asyncio.run(main())
    shown: 1
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Generic, TypeVar

from nicegui import App, app, ui

from optisync.errors import NotOpenError
from optisync.store import Store

__all__ = ["AppScoped", "open_with_app", "render"]

S = TypeVar("S")
T = TypeVar("T")


def render(store: Store[S], build: Callable[[S], object]) -> ui.refreshable[[], None]:
    """Build ``build(store.state)`` here, and rebuild it on each new state of ``store``.

    Call it in a page function (or in any element's context of a page):
    ``build`` runs at once inside a ``ui.refreshable`` placed where the call
    is, and again, with the newest state, after each change. A change of a
    key's sync status rebuilds too, so ``build`` may show a "saving..." mark
    (``store.<field>.is_pending(item)``, ``store.is_syncing(key)``). Several
    changes in one turn of the loop (a tap, whose sync starts with it; a
    burst of pushes after a reconnect) rebuild once. Only this page is
    rebuilt: each call makes its own refreshable.

    The subscription lasts as long as the page's client: when NiceGUI deletes
    the client (its tab closed, and it did not reconnect within
    ``reconnect_timeout``), the page unsubscribes, and the store no longer
    holds on to the page. A disconnect alone keeps it: the tab may come back,
    and NiceGUI then replays what changed meanwhile. Closing the store ends
    the updates too; the page keeps showing the last state.

    Keep input elements outside ``build``: a rebuild replaces what ``build``
    made, and a half-typed text in it would be lost.

    Args:
        store: the store to show; it must run on NiceGUI's loop (see the module).
        build: ``(state) -> anything``: makes the elements that show ``state``.

    Returns:
        The refreshable (call ``.refresh()`` to rebuild it by hand).

    Raises:
        RuntimeError: NiceGUI's, when called outside a page (no client to tie the
            subscription to).

    Example:
        In a page function::

            @ui.page("/")
            def index() -> None:
                render(store, lambda todos: [ui.label(t) for t in todos.titles.values()])

        The module's example runs one in NiceGUI's user simulation.
    """
    client = ui.context.client
    scheduled = False

    def rebuild() -> None:
        nonlocal scheduled
        scheduled = False  # a change during build schedules the next rebuild
        build(store.state)

    view = ui.refreshable(rebuild)
    view()

    def on_change(_: object) -> None:
        nonlocal scheduled
        if not scheduled:
            scheduled = True
            # refresh() runs in a task of NiceGUI's: one rebuild for every change until then.
            view.refresh()

    client.on_delete(store.subscribe(on_change))
    client.on_delete(store.subscribe_sync_status(on_change))
    return view


class AppScoped(Generic[T]):
    """What :func:`open_with_app` opened: a value that lives as long as the NiceGUI app.

    The value opens in NiceGUI's startup and closes in its shutdown. NiceGUI
    does not wait for an async startup hook before it serves pages, so a page
    gets the value with ``await`` :meth:`opened` (pages may be ``async``);
    a handler, which runs later, may read :attr:`value`. The context manager
    is entered and exited in one task of its own, on NiceGUI's loop, whatever
    task runs NiceGUI's startup and shutdown.

    Example:
        A page of the todo example (``examples/nicegui_todo.py``; its tests run
        it in NiceGUI's user simulation and in Chromium)::

            todos = open_with_app(lambda: open_todos(args.url, args.storage))

            async def root() -> None:
                device = await todos.opened()
                todo_page(device.store)
    """

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[T]], nicegui: App) -> None:
        self.__opener = opener
        self.__nicegui = nicegui
        self.__value: T | None = None
        self.__opened: asyncio.Future[T] | None = None
        self.__stop: asyncio.Event | None = None
        self.__task: asyncio.Task[None] | None = None
        nicegui.on_startup(self.__start)
        nicegui.on_shutdown(self.__close)

    @property
    def is_open(self) -> bool:
        """Whether the value is open: opened at startup, not yet closed at shutdown.

        Example:
            >>> from nicegui import App
            >>> from optisync import Store
            >>> from optisync.ui.nicegui import open_with_app
            >>> open_with_app(lambda: Store(0), nicegui=App()).is_open
            False
        """
        return self.__value is not None

    @property
    def value(self) -> T:
        """The opened value (the store, or the device), for handlers and hooks.

        Raises:
            NotOpenError: it is not open (yet, or any more); a page awaits
                :meth:`opened` instead.

        Example:
            >>> from nicegui import App
            >>> from optisync import NotOpenError, Store
            >>> from optisync.ui.nicegui import open_with_app
            >>> try:
            ...     open_with_app(lambda: Store(0), nicegui=App()).value
            ... except NotOpenError as error:
            ...     print("not open")
            not open
        """
        if self.__value is None:
            raise NotOpenError(
                "not open: the NiceGUI app has not started yet, or has shut down;"
                " in a page, await opened() for the value"
            )
        return self.__value

    async def opened(self) -> T:
        """Wait until the value is open, and return it.

        Raises:
            NotOpenError: the app has not started, or has shut down.
            Exception: what the opening raised (``StorageInUseError``, say).

        Example:
            In a page function::

                async def root() -> None:
                    device = await todos.opened()

            The todo example's tests run it.
        """
        if self.__opened is None:
            raise NotOpenError("not open: the NiceGUI app has not started, or has shut down")
        # Shielded: a page that goes away must not cancel the opening for every other page.
        return await asyncio.shield(self.__opened)

    def __start(self) -> None:
        # A plain hook: NiceGUI calls it at once in its startup, on its loop (an async
        # hook would only be scheduled). The opening goes on in the task.
        opened = asyncio.get_running_loop().create_future()
        self.__opened = opened
        self.__stop = stop = asyncio.Event()  # one per run: an app may start again
        self.__task = asyncio.create_task(self.__hold(opened, stop), name="optisync open_with_app")

    async def __hold(self, opened: asyncio.Future[T], stop: asyncio.Event) -> None:
        try:
            async with self.__opener() as value:
                self.__value = value
                opened.set_result(value)
                await stop.wait()
        except Exception as error:
            if opened.done():
                raise  # the closing failed: NiceGUI's shutdown reports it
            opened.set_exception(error)  # for the pages awaiting opened()
            opened.exception()  # reported below, even when no page is waiting
            self.__nicegui.handle_exception(error)
        finally:
            self.__value = None
            opened.cancel()  # no-op once done; wakes the pages if the opening was cancelled

    async def __close(self) -> None:
        task, stop = self.__task, self.__stop
        self.__task, self.__stop, self.__opened = None, None, None
        if task is not None and stop is not None:
            stop.set()
            await task


def open_with_app(
    opener: Callable[[], AbstractAsyncContextManager[T]], *, nicegui: App | None = None
) -> AppScoped[T]:
    """Open ``opener()`` when the NiceGUI app starts; close it when the app shuts down.

    ``opener`` is called on NiceGUI's loop, in its startup (so a store made
    there lives on the loop that runs the pages and handlers); it returns an
    async context manager: a :class:`~optisync.Store` itself, or
    ``open_device(...)``. Its exit runs in NiceGUI's shutdown, before
    NiceGUI cancels its own background tasks. Call this before ``ui.run()``,
    as for ``app.on_startup``. A failure to open goes to NiceGUI's exception
    handlers (logged) and to every page awaiting :meth:`AppScoped.opened`.

    Args:
        opener: makes the async context manager that opens the value.
        nicegui: the NiceGUI app (default: ``nicegui.app``).

    Returns:
        The :class:`AppScoped` that holds the value while the app runs.

    Example:
        The device of the todo page (``examples/nicegui_todo.py``)::

            todos = open_with_app(lambda: open_todos(args.url, args.storage))

            async def root() -> None:
                todo_page((await todos.opened()).store)

            ui.run(root, reload=False)

        :class:`AppScoped` runs one with NiceGUI's startup and shutdown.
    """
    return AppScoped(opener, app if nicegui is None else nicegui)
