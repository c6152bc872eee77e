"""The todo list in a Textual app, on the real server.

    python -m optisync.server --port 8765 &
    python -m examples.textual_todo --url ws://127.0.0.1:8765 --storage textual.sqlite3

Type ``add milk Buy milk``, ``done milk`` or ``undo milk`` and press Enter;
another device's changes show as they are pushed. The list is a
:class:`~optisync.ui.textual.StoreWatcher`: it redraws on each new state and
stops listening when it unmounts. ``--screenshot PATH`` saves an SVG of the
screen instead (docs/img/textual-todo.svg).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
from pathlib import Path

from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import Footer, Header, Input, Static

from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync.device import Device
from optisync.ui.textual import StoreWatcher

__all__ = ["TodoApp", "TodoList", "main", "take_screenshot", "type_commands"]

HELP = "add ITEM TITLE | done ITEM | undo ITEM"


class TodoList(StoreWatcher, Static):
    """The items, one line each, redrawn on each new state of the store."""

    def __init__(self, store: TodoStore) -> None:
        super().__init__(id="todos")
        self.store = store

    def on_mount(self) -> None:
        self.watch_store(self.store, self.show, sync_status=True)

    def show(self, todos: Todos) -> None:
        """Draw the list ("saving" marks an item whose change the server has not confirmed)."""
        lines = [
            f"[{'x' if todos.done.get(item) else ' '}] {item}: {title}"
            + ("  (saving)" if self.store.done.is_pending(item) else "")
            for item, title in sorted(todos.titles.items())
        ]
        self.update("\n".join(lines) or "Nothing to do.")


class TodoApp(App[None]):
    """One device: the list, and a command line that changes it."""

    TITLE = "optisync: todos"

    def __init__(self, url: str, storage: str) -> None:
        super().__init__()
        self.url, self.storage = url, storage
        self._device: Device[TodoStore] | None = None
        self._resources = contextlib.AsyncExitStack()

    @property
    def device(self) -> Device[TodoStore]:
        """The device: its store, client, outbox (once mounted)."""
        if self._device is None:
            raise RuntimeError("the app is not running")
        return self._device

    @property
    def store(self) -> TodoStore:
        """The device's store (once mounted)."""
        return self.device.store

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder=HELP, id="command")
        yield Footer()

    async def on_mount(self) -> None:
        self._device = await self._resources.enter_async_context(open_todos(self.url, self.storage))
        self.sub_title = f"device {self.store.device_id} on {self.url}"
        await self.mount(TodoList(self.store), after="#command")

    async def on_unmount(self) -> None:
        await self._resources.aclose()  # closes the device: saved, disconnected

    def on_input_submitted(self, event: Input.Submitted) -> None:
        match event.value.split(maxsplit=2):
            case ["add", item, title]:
                self.store.title.set(item, title)
            case ["done" | "undo" as verb, item]:
                self.store.done.set(item, verb == "done")
            case _:
                self.notify(HELP, title="Commands")
        event.input.clear()


async def take_screenshot(url: str, path: Path) -> Path:
    """Type a few commands into a new device's app and save its screen as SVG to ``path``."""
    with tempfile.TemporaryDirectory() as folder:
        app = TodoApp(url, str(Path(folder) / "device.sqlite3"))
        async with app.run_test(size=(72, 12)) as pilot:
            await type_commands(pilot, "add milk Buy milk", "add docs Write the docs", "done milk")
            await app.device.caught_up()
            await pilot.pause()
            path.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=path.name, path=str(path.parent))
    return path


async def type_commands(pilot: Pilot[None], *commands: str) -> None:
    """Enter each command on the command line (its text pasted at once, then Enter)."""
    for command in commands:
        await pilot.click("#command")
        pilot.app.query_one("#command", Input).value = command
        await pilot.press("enter")


def main(argv: list[str] | None = None) -> None:
    """Run the app (or, with ``--screenshot``, save a picture of it)."""
    parser = argparse.ArgumentParser(prog="python -m examples.textual_todo")
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server's URL")
    parser.add_argument("--storage", default="textual.sqlite3", help="this device's file")
    parser.add_argument("--screenshot", type=Path, help="save an SVG of the screen there")
    args = parser.parse_args(argv)
    if args.screenshot is not None:
        print(asyncio.run(take_screenshot(args.url, args.screenshot)))
        return
    TodoApp(args.url, args.storage).run()


if __name__ == "__main__":
    main()
