"""optisync.ui.textual, tested in Textual's own harness (App.run_test and its Pilot).

The todo app runs against the real server (``python -m optisync.server`` in a
process of its own, on loopback) with a second device; the lifecycle tests
count a store's live subscriptions.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Label, Static

from examples.textual_todo import TodoApp, TodoList, take_screenshot, type_commands
from examples.todo_app.todos import open_todos
from optisync import StateError, Store
from optisync.ui.textual import StoreWatcher
from tests.server.conftest import server_process


class Counted(Store[int]):
    """A store that counts the listeners still subscribed."""

    def __init__(self) -> None:
        super().__init__(0)
        self.live = 0

    def subscribe(self, listener: Callable[[int], object]) -> Callable[[], None]:
        stop = super().subscribe(listener)
        self.live += 1
        stopped = False

        def unsubscribe() -> None:
            nonlocal stopped
            if not stopped:
                stopped = True
                self.live -= 1
            stop()

        return unsubscribe


class Shown(StoreWatcher, Label):
    def __init__(self, store: Store[int]) -> None:
        super().__init__(id="shown")
        self.store = weakref.ref(store)
        self.drawn: list[int] = []

    def on_mount(self) -> None:
        store = self.store()
        assert store is not None
        self.watch_store(store, self.draw)

    def draw(self, state: int) -> None:
        self.drawn.append(state)
        self.update(f"state {state}")


class OneWidget(App[None]):
    def __init__(self, store: Store[int]) -> None:
        super().__init__()
        self.widget = Shown(store)

    def compose(self) -> ComposeResult:
        yield self.widget


def text(app: App[None], selector: str) -> str:
    return str(app.query_one(selector, Static).content)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """``python -m optisync.server`` in a process of its own, as a user runs it."""
    with server_process("--database", str(tmp_path / "server.sqlite3")) as (_, address):
        yield address


async def test_the_todo_app_shows_a_tap_at_once_and_a_push_from_another_device(
    url: str, tmp_path: Path
) -> None:
    app = TodoApp(url, str(tmp_path / "app.sqlite3"))
    async with app.run_test() as pilot, open_todos(url, str(tmp_path / "other.sqlite3")) as other:
        await type_commands(pilot, "add milk Buy milk")
        assert text(app, "#todos") == "[ ] milk: Buy milk"  # before any response
        await app.device.caught_up()

        pushed = asyncio.Event()
        app.store.subscribe(lambda todos: pushed.set() if todos.done.get("milk") else None)
        await other.caught_up()
        await other.store.done.set("milk", True)  # the other device ticks it
        await pushed.wait()
        assert text(app, "#todos") == "[x] milk: Buy milk"

        await type_commands(pilot, "undo milk", "add tea Make tea")
        await app.device.caught_up()
        await other.caught_up()
        assert other.store.state == app.store.state
        assert other.store.state.done == {"milk": False}
        assert "[ ] tea: Make tea" in text(app, "#todos")


async def test_closing_the_app_ends_every_watch_and_keeps_the_store_open() -> None:
    store = Counted()
    app = OneWidget(store)
    async with app.run_test() as pilot:
        store.emit(1)
        await pilot.pause()
        assert text(app, "#shown") == "state 1"
        assert store.live == 1
    assert store.live == 0
    store.emit(2)  # the app is gone: nothing draws
    assert app.widget.drawn == [0, 1]
    assert not store.is_closed
    await store.close()


async def test_a_removed_widget_stops_watching_and_is_never_drawn_again() -> None:
    store = Counted()
    app = OneWidget(store)
    async with app.run_test() as pilot:
        await app.widget.remove()
        assert store.live == 0
        store.emit(5)
        await pilot.pause()
    assert app.widget.drawn == [0]
    await store.close()


async def test_a_watching_widget_does_not_keep_the_store_alive() -> None:
    store = Counted()
    gone = weakref.ref(store)
    app = OneWidget(store)
    async with app.run_test() as pilot:
        del store
        gc.collect()
        assert gone() is None
        await pilot.pause()  # the widget lives on, with nothing to draw
        assert app.widget.is_mounted


async def test_a_state_emitted_while_the_app_shuts_down_is_not_drawn() -> None:
    store = Counted()

    class EmitsOnUnmount(OneWidget):
        def on_unmount(self) -> None:
            store.emit(9)  # the widgets are gone by now

    app = EmitsOnUnmount(store)
    async with app.run_test():
        pass
    assert app.widget.drawn == [0]
    assert store.state == 9
    assert store.live == 0
    await store.close()


async def test_closing_the_store_first_leaves_the_widget_quiet() -> None:
    store = Counted()
    app = OneWidget(store)
    async with app.run_test() as pilot:
        await store.close()
        await pilot.pause()
        assert text(app, "#shown") == "state 0"


async def test_the_screenshot_helper_saves_an_svg_of_the_todo_app(url: str, tmp_path: Path) -> None:
    path = await take_screenshot(url, tmp_path / "todo.svg")
    svg = path.read_text()
    assert svg.startswith("<svg")
    assert "Buy&#160;milk" in svg or "Buy milk" in svg


def test_the_todo_list_widget_is_a_store_watcher() -> None:
    assert issubclass(TodoList, StoreWatcher)


async def test_watching_before_the_widget_runs_is_refused_with_a_clear_error() -> None:
    class TooEarly(StoreWatcher, Label):
        def __init__(self, store: Store[int]) -> None:
            super().__init__()
            self.watch_store(store, print)

    store = Store(0)
    with pytest.raises(StateError, match="on_mount"):
        TooEarly(store)
    await store.close()
