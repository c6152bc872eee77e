"""Which event loop and thread a store belongs to, and how errors are reported."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from optisync.errors import StateError, WrongThreadError

__all__ = ["LoopBinding", "is_being_cancelled", "logger", "report", "running_loop"]

logger = logging.getLogger("optisync")


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def is_being_cancelled() -> bool:
    """Whether the current task was asked to stop (close() or loop shutdown)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def report(on_error: Callable[[BaseException], object], error: BaseException) -> None:
    """Hand ``error`` to a store's ``on_error``; a hook that raises is logged, never propagated."""
    try:
        on_error(error)
    except Exception:
        logger.exception("on_error raised while reporting %r", error)


class LoopBinding:
    """The event loop a store runs on, and its thread.

    A store made outside a running loop belongs to the thread that made it
    until it is first used inside a running loop: from then on it belongs to
    that loop and its thread. Calls from any other thread are refused, since
    the store's state is not guarded by locks.
    """

    __slots__ = ("loop", "thread")

    def __init__(self) -> None:
        self.loop = running_loop()
        self.thread = threading.get_ident()

    def check_thread(self) -> None:
        """Refuse a call from another thread; bind to the running loop on first use.

        Callers skip this when ``loop`` is set and the thread matches (the
        common case), so it costs nothing on hot paths.
        """
        if self.loop is None:
            running = running_loop()
            if running is not None:
                self.loop = running
                self.thread = threading.get_ident()
                return
        if threading.get_ident() != self.thread:
            raise WrongThreadError(
                "This store belongs to another thread's event loop; "
                "use server_push_threadsafe() to hand a push over."
            )

    def bind(self) -> asyncio.AbstractEventLoop:
        """The running loop, which must be this store's: where a task is about to start."""
        running = running_loop()
        if running is None:
            raise StateError(
                "A sync action needs a running event loop: call it from a coroutine "
                "or a callback running on the loop."
            )
        if self.loop is None:
            self.loop = running
            self.thread = threading.get_ident()
        elif running is not self.loop:
            raise StateError("This store belongs to another event loop.")
        return running
