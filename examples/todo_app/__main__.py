"""``python -m examples.todo_app --url ws://127.0.0.1:8765 --storage phone.sqlite3``: one device.

Type commands at its prompt (no quoting: the rest of the line is the title)::

    add milk Buy milk     a new item "milk" titled "Buy milk"
    done milk             tick it (undo milk: untick it)
    list                  the items, as this device shows them
    sync                  wait until the server has every change and this device every push
    quit

``--json`` answers each command with one line of JSON once the change is saved
to the storage file (what the end-to-end test drives).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable

from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync import OptisyncError

HELP = "commands: add ITEM TITLE | done ITEM | undo ITEM | list | sync | quit"


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the device until ``quit`` or the end of input."""
    parser = argparse.ArgumentParser(prog="python -m examples.todo_app", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server's URL")
    parser.add_argument("--storage", default="todos.sqlite3", help="this device's state file")
    parser.add_argument("--json", action="store_true", help="answer each command in JSON")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args.url, args.storage, as_json=args.json))
    except OptisyncError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


async def _run(url: str, storage: str, *, as_json: bool) -> None:
    async with open_todos(url, storage) as device:
        store = device.store
        if not as_json:
            print(f"device {store.device_id} on {url}; {HELP}")
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line or line.strip() == "quit":
                return
            try:
                reply = await _command(store, device.caught_up, line.strip().split(maxsplit=2))
            except (OptisyncError, ValueError) as error:
                reply = f"error: {error}"
            await device.persistence.flush()  # the answer comes once the change is saved
            if as_json:
                print(json.dumps({"reply": reply, "state": _as_dict(store.state)}), flush=True)
            else:
                print(reply or _listing(store.state), flush=True)


async def _command(
    store: TodoStore, caught_up: Callable[[], Awaitable[None]], words: list[str]
) -> str:
    match words:
        case ["add", item, title]:
            store.title.set(item, title)
        case ["done" | "undo" as verb, item]:
            store.done.set(item, verb == "done")
        case ["sync"]:
            await caught_up()
        case ["list"]:
            return ""
        case _:
            return HELP
    return ""


def _listing(todos: Todos) -> str:
    items = sorted(todos.titles.keys() | todos.done.keys())
    lines = [f"[{'x' if todos.done.get(i) else ' '}] {i}: {todos.titles.get(i, '')}" for i in items]
    return "\n".join(lines) or "(no items)"


def _as_dict(todos: Todos) -> dict[str, dict[str, object]]:
    return {"titles": dict(todos.titles), "done": dict(todos.done)}


if __name__ == "__main__":
    sys.exit(main())
