"""A threaded toolkit (Tk, Flet style) driving the todo store over the real server.

    python -m optisync.server --port 8765 &
    python -m examples.threaded_todo --url ws://127.0.0.1:8765 --storage threaded.sqlite3

A toolkit like Flet calls each click handler on a worker thread; Tk keeps its
widgets on its main thread, where ``root.after(0, ...)`` queues a repaint. The
store lives on an asyncio loop in a thread of its own (:class:`StoreThread`),
and the toolkit's threads reach it only through a
:class:`~optisync.threads.ThreadBridge`: the handlers ``call`` its actions, a
subscriber queues each new state for the main thread, which repaints. No real
window here: the "clicks" are handler threads started at once, and the
"repaint" prints the list.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import queue
import threading

from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync.device import Device
from optisync.threads import ThreadBridge

__all__ = ["StoreThread", "TodoWindow", "main"]


class StoreThread:
    """The device (store, client, storage) on an asyncio loop in a thread of its own."""

    def __init__(self, url: str, storage: str) -> None:
        self._url, self._storage = url, storage
        self._opened: concurrent.futures.Future[tuple[ThreadBridge[Todos], Device[TodoStore]]]
        self._opened = concurrent.futures.Future()
        self._closing: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="store-loop")

    def start(self, timeout: float = 30) -> tuple[ThreadBridge[Todos], Device[TodoStore]]:
        """Start the loop thread; return once the device is open."""
        self._thread.start()
        return self._opened.result(timeout)

    def stop(self) -> None:
        """Close the device (it saves everything) and end the loop thread."""
        if self._opened.done() and self._opened.exception() is None and self._closing:
            bridge, _ = self._opened.result()
            bridge.call(self._closing.set)
        self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # handed to the thread that waits in start()
            if not self._opened.done():
                self._opened.set_exception(error)

    async def _main(self) -> None:
        self._closing = asyncio.Event()
        async with open_todos(self._url, self._storage) as device:
            self._opened.set_result((ThreadBridge(device.store), device))
            await self._closing.wait()


class TodoWindow:
    """What a window would do: handlers on any thread, repaints on the main thread."""

    def __init__(self, bridge: ThreadBridge[Todos], device: Device[TodoStore]) -> None:
        self.bridge, self._device = bridge, device
        # Tk's root.after(0, repaint) in miniature: the main thread drains it.
        self.repaints: queue.SimpleQueue[Todos] = queue.SimpleQueue()
        self._stop_watching = bridge.subscribe(self.repaints.put)

    def on_add(self, item: str, title: str) -> None:
        """The "add" button's handler."""
        store = self._device.store
        self.bridge.call(lambda: store.title.set(item, title))

    def on_done(self, item: str) -> None:
        """The checkbox's handler."""
        store = self._device.store
        self.bridge.call(lambda: store.done.set(item, True))

    def on_sync(self) -> None:
        """The "sync" button's handler: wait until the server has every change."""
        self.bridge.run(self._device.caught_up, timeout=30)

    def repaint(self) -> int:
        """On the main thread: show the latest state; return how many states were queued."""
        count = 0
        while not self.repaints.empty():
            self.repaints.get()
            count += 1
        return count

    def close(self) -> None:
        self._stop_watching()


def listing(todos: Todos) -> list[str]:
    """The list as the window shows it."""
    return [
        f"[{'x' if todos.done.get(item) else ' '}] {item}: {title}"
        for item, title in sorted(todos.titles.items())
    ]


def main(argv: list[str] | None = None) -> Todos:
    """Click "add" and "done" from many handler threads at once, sync, and show the list."""
    parser = argparse.ArgumentParser(prog="python -m examples.threaded_todo")
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server's URL")
    parser.add_argument("--storage", default="threaded.sqlite3", help="this device's file")
    parser.add_argument("--handlers", type=int, default=8, help="handler threads")
    parser.add_argument("--items", type=int, default=5, help="items each handler adds")
    args = parser.parse_args(argv)

    device_thread = StoreThread(args.url, args.storage)
    bridge, device = device_thread.start()
    window = TodoWindow(bridge, device)
    try:

        def clicks(handler: int) -> None:
            for n in range(args.items):
                item = f"h{handler}-{n}"
                window.on_add(item, f"task {n} of handler {handler}")
                window.on_done(item)

        with concurrent.futures.ThreadPoolExecutor(args.handlers) as pool:
            for outcome in [pool.submit(clicks, h) for h in range(args.handlers)]:
                outcome.result()
        window.on_sync()
        repainted = window.repaint()
        print(*listing(bridge.state), sep="\n")
        print(f"{len(bridge.state.titles)} items, {repainted} repaints queued; synced")
        return bridge.state
    finally:
        window.close()
        device_thread.stop()


if __name__ == "__main__":
    main()
