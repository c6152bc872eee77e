"""``python -m examples.nicegui_todo --url ws://127.0.0.1:8765``: the todo list as a web page.

One device (the NiceGUI app, saved to ``--storage``) on the library's server,
shared by every browser tab that opens http://127.0.0.1:8080. A todo added
or ticked in one tab, or on another device (``python -m examples.todo_app``),
shows in every tab. Needs the ``nicegui`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import uuid

from nicegui import ui

from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync.ui.nicegui import open_with_app, render


def todo_page(store: TodoStore) -> None:
    """The page: a field to add a todo, and the list, rebuilt on each new state."""
    ui.label("Todos").classes("text-2xl")
    with ui.row().classes("items-center"):
        title = ui.input("New todo").props("outlined dense")
        ui.button("Add", on_click=lambda: add(store, title))
    title.on("keydown.enter", lambda: add(store, title))
    render(store, lambda todos: todo_list(store, todos))


def add(store: TodoStore, title: ui.input) -> None:
    if text := str(title.value).strip():
        store.title.set(uuid.uuid4().hex[:8], text)  # shows at once; the client sends it
    title.value = ""


def todo_list(store: TodoStore, todos: Todos) -> None:
    for item, text in sorted(todos.titles.items(), key=lambda entry: entry[1]):
        with ui.row().classes("items-center gap-1 -my-3"):
            ui.checkbox(
                text,
                value=todos.done.get(item, False),
                on_change=lambda event, item=item: store.done.set(item, bool(event.value)),
            )
            if store.title.is_pending(item) or store.done.is_pending(item):
                ui.label("saving...").classes("text-xs text-grey")  # until the server has it
    if not todos.titles:
        ui.label("Nothing to do.").classes("text-grey")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.nicegui_todo", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the sync server's URL")
    parser.add_argument("--storage", default="web.sqlite3", help="this device's state file")
    parser.add_argument("--port", type=int, default=8080, help="the page's port on 127.0.0.1")
    args = parser.parse_args(argv)
    todos = open_with_app(lambda: open_todos(args.url, args.storage))

    async def root() -> None:
        todo_page((await todos.opened()).store)

    # Ctrl-C: uvicorn shuts down (closing the device), then raises KeyboardInterrupt again.
    with contextlib.suppress(KeyboardInterrupt):
        ui.run(
            root, host="127.0.0.1", port=args.port, title="optisync todos", reload=False, show=False
        )


if __name__ == "__main__":
    main()
