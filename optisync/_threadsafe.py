"""Calls handed over to a store's event loop from other threads.

Every future handed out is resolved: with the call's outcome once the loop
runs it, or with an error when the store closes, when the loop's tasks are
cancelled at shutdown (``asyncio.run`` does that), or at once when the loop
is already closed. A thread blocked in ``future.result()`` never waits for
a loop that is gone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from optisync.errors import StateError, StoreClosedError

__all__ = ["Handover"]

R = TypeVar("R")


class Handover:
    """The pending calls of one store and what resolves them."""

    __slots__ = ("gone", "lock", "pending", "watcher", "what")

    def __init__(self, what: str = "push") -> None:
        # What is handed over, for the error messages ("push", "call").
        self.what = what
        self.lock = threading.Lock()
        self.pending: set[concurrent.futures.Future[Any]] = set()
        # Why no call can run any more (the store closed, the loop shut down).
        self.gone: str | None = None
        # A task that lives while the loop does: cancelled at loop shutdown,
        # it fails what is still pending. Started by the first call run.
        self.watcher: asyncio.Task[None] | None = None

    def submit(
        self, loop: asyncio.AbstractEventLoop | None, call: Callable[[], R]
    ) -> concurrent.futures.Future[R]:
        if loop is None:
            raise StateError(
                "server_push_threadsafe() needs the store's event loop: create the store "
                "inside a running loop, or use it there once first."
            )
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self.lock:
            if self.gone is not None:
                future.set_exception(StoreClosedError(self.gone))
                return future
            self.pending.add(future)
        try:
            loop.call_soon_threadsafe(self._run, loop, future, call)
        except RuntimeError:  # the loop is closed
            with self.lock:
                self.pending.discard(future)
            self._fail(future, StateError("The store's event loop is closed."))
        return future

    def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        future: concurrent.futures.Future[R],
        call: Callable[[], R],
    ) -> None:
        with self.lock:
            if future not in self.pending:
                return  # already failed by close or shutdown
            self.pending.discard(future)
            if self.watcher is None and self.gone is None:
                self.watcher = loop.create_task(self._watch())
        if not future.set_running_or_notify_cancel():
            return  # the caller cancelled it
        try:
            result = call()
        except BaseException as error:  # handed over to the other thread
            future.set_exception(error)
        else:
            future.set_result(result)

    async def _watch(self) -> None:
        try:
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self._end(f"The event loop shut down before the handed-over {self.what} ran.")

    async def close(self, reason: str | None = None) -> None:
        """Fail what is pending (with ``reason``); stop the watcher and wait for it."""
        self._end(reason or f"The store was closed before the handed-over {self.what} ran.")
        watcher = self.watcher
        if watcher is not None and watcher is not asyncio.current_task():
            watcher.cancel()
            await asyncio.wait([watcher])  # not `await watcher`: its CancelledError isn't ours

    def _end(self, reason: str) -> None:
        with self.lock:
            if self.gone is None:
                self.gone = reason
            pending, self.pending = self.pending, set()
        for future in pending:
            self._fail(future, StoreClosedError(reason))

    @staticmethod
    def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
        if future.set_running_or_notify_cancel():
            future.set_exception(error)
