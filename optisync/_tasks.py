"""The awaitables that sync methods return, and the cycle each one watches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

from optisync.errors import StoreClosedError

__all__ = ["COMPLETED", "Cycle", "CycleResult"]


class _Completed:
    """An awaitable that is already complete: what a call on a locked key returns."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # makes this a generator: awaiting it finishes at once

    def __repr__(self) -> str:
        return "<optisync sync result: coalesced into the request in flight>"


COMPLETED = _Completed()


def _closed_error(cycle: Cycle) -> StoreClosedError:
    return StoreClosedError(f"The store was closed before the sync of key {cycle.key!r} finished.")


class Cycle:
    """One lock cycle of a key: its task, its outcome, and the callers waiting for it.

    Each awaiter waits on a future of its own, resolved by :meth:`finish` as
    the cycle's last act inside its task, so the awaiter resumes on the next
    loop turn, and cancelling an awaiter cancels only its own future, never
    the sync. The task itself never ends with an error (the outcome is kept
    here), so asyncio has nothing to log about it.
    """

    __slots__ = ("delivered", "error", "key", "reporter", "started", "task", "waiters")

    def __init__(self, key: object, reporter: Callable[[Cycle], object]) -> None:
        self.key = key
        # Called on the next loop turn with an error no awaiter was handed.
        self.reporter = reporter
        # False until the task takes its first step: a task cancelled before
        # that never ran the cycle's ``finally``, so close() frees its key.
        self.started = False
        self.task: asyncio.Task[None] | None = None
        self.waiters: list[asyncio.Future[None]] | None = None
        self.error: Exception | None = None
        # Whether an awaiter received the outcome; if none did, the store reports it.
        self.delivered = False

    def finish(self, error: BaseException | None) -> bool:
        """Hand the outcome to every awaiter still waiting; whether one was waiting."""
        if isinstance(error, Exception):
            self.error = error
        waiters, self.waiters = self.waiters, None
        handed = False
        for waiter in waiters or ():
            if waiter.done():  # its awaiter was cancelled
                continue
            handed = True
            if error is None:
                waiter.set_result(None)
            elif isinstance(error, asyncio.CancelledError):
                waiter.cancel()
            else:
                waiter.set_exception(error)
        return handed


class CycleResult:
    """What the call that took a key's lock returns.

    Awaiting it waits for the whole lock cycle (the request, its follow-ups and
    ``on_finish``) and raises its error, if any, or ``StoreClosedError`` if
    the store was closed first. An error that no caller is awaiting when the
    cycle ends goes to the store's ``on_error``; awaiting the result later
    still raises it. Cancelling the awaiting coroutine does not
    cancel the sync: the user's change is already on screen and must still
    reach the server. Dropping it unawaited is fine.
    """

    __slots__ = ("_cycle",)

    def __init__(self, cycle: Cycle) -> None:
        self._cycle = cycle

    def __await__(self) -> Generator[Any, None, None]:
        cycle = self._cycle
        task = cycle.task
        assert task is not None
        if task.done():
            if task.cancelled():
                raise _closed_error(cycle)
            cycle.delivered = True
            if cycle.error is not None:
                raise cycle.error
            return
        waiter = task.get_loop().create_future()
        if cycle.waiters is None:
            cycle.waiters = [waiter]
        else:
            cycle.waiters.append(waiter)
        try:
            yield from waiter.__await__()
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # The outcome reached our future, but our task was cancelled
                # before it resumed: leave the error to the store's hook.
                waiter.exception()  # retrieved: asyncio must not log it
                task.get_loop().call_soon(cycle.reporter, cycle)
                raise
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The store was closed under us: that is not our caller's
                # cancellation, so don't make its task look cancelled.
                raise _closed_error(cycle) from None
            raise
        except BaseException:
            cycle.delivered = True
            raise
        cycle.delivered = True

    def done(self) -> bool:
        """Whether the lock cycle has ended."""
        task = self._cycle.task
        return task is not None and task.done()

    def __repr__(self) -> str:
        state = "done" if self.done() else "in flight"
        return f"<optisync sync result for key {self._cycle.key!r}: {state}>"
