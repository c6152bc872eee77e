"""The awaitables that sync methods return, and the cycle each one watches."""

from __future__ import annotations

import asyncio
from collections.abc import Generator
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


class Cycle:
    """One lock cycle of a key: its task, and how many callers await it."""

    __slots__ = ("awaiters", "key", "task")

    def __init__(self, key: object) -> None:
        self.key = key
        self.awaiters = 0
        self.task: asyncio.Task[None] | None = None


class CycleResult:
    """What the call that took a key's lock returns.

    Awaiting it waits for the whole lock cycle (the request, its follow-ups and
    ``on_finish``) and raises its error, if any, or ``StoreClosedError`` if
    the store was closed first. Cancelling the awaiting coroutine does not
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
        cycle.awaiters += 1
        try:
            # shield: cancelling the awaiter must not cancel the sync task.
            return (yield from asyncio.shield(task).__await__())
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                # The store was closed under us: that is not our caller's
                # cancellation, so don't make its task look cancelled.
                raise StoreClosedError(
                    f"The store was closed before the sync of key {cycle.key!r} finished."
                ) from None
            raise
        finally:
            cycle.awaiters -= 1

    def done(self) -> bool:
        """Whether the lock cycle has ended."""
        task = self._cycle.task
        return task is not None and task.done()

    def __repr__(self) -> str:
        state = "done" if self.done() else "in flight"
        return f"<optisync sync result for key {self._cycle.key!r}: {state}>"
