"""Virtual time: an asyncio event loop whose clock jumps instead of waiting.

Nothing in the simulator waits for real: when every task is waiting for a
timer, the loop moves its clock straight to the next timer. A scenario that
spans hours of simulated latency runs in milliseconds, and because the loop is
single-threaded and every random choice comes from a seeded generator, the same
seed replays the same run, step for step.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

__all__ = ["VirtualClockLoop", "run"]

T = TypeVar("T")


class _Clock:
    __slots__ = ("now",)

    def __init__(self, start: float) -> None:
        self.now = start


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, instead of sleeping until a timer, moves the clock there.

    Real file descriptors (the loop's self-pipe, used by ``call_soon_threadsafe``)
    are still polled, without waiting. With no timer at all, the loop has truly
    nothing to do and blocks for real, exactly like a normal loop.
    """

    def __init__(self, clock: _Clock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return self._inner.select(None)
        ready = self._inner.select(0)
        if not ready and timeout > 0:
            self._clock.now += timeout
        return ready

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``asyncio.sleep(3600)`` returns at once.

    ``loop.time()`` starts at ``start_time`` and only moves when every task
    waits for a timer; it then jumps to the earliest timer. Everything built on
    ``loop.time()`` follows: ``asyncio.sleep``, ``asyncio.timeout``,
    ``call_later``. Real clocks (``time.monotonic()``) are untouched. Use it
    through :func:`run`, or as ``asyncio.Runner(loop_factory=VirtualClockLoop)``.

    Example:
        >>> import asyncio
        >>> from optisync.testing import VirtualClockLoop
        >>> async def main() -> float:
        ...     await asyncio.sleep(3600)
        ...     return asyncio.get_running_loop().time()
        >>> with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        ...     runner.run(main())
        3600.0
    """

    def __init__(self, start_time: float = 0.0) -> None:
        self._clock = _Clock(start_time)
        super().__init__(_JumpingSelector(self._clock))

    def time(self) -> float:
        """The virtual time, in seconds.

        Example:
            >>> from optisync.testing import VirtualClockLoop
            >>> loop = VirtualClockLoop(start_time=10.0)
            >>> loop.time()
            10.0
            >>> loop.close()
        """
        return self._clock.now


def run(main: Coroutine[Any, Any, T], *, start_time: float = 0.0) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualClockLoop`, like ``asyncio.run``.

    Tasks still running when ``main`` returns are cancelled, as ``asyncio.run``
    does; check for them inside ``main`` if they matter to you.

    Example:
        >>> import asyncio
        >>> from optisync import testing
        >>> async def nap() -> str:
        ...     await asyncio.sleep(86_400)  # a day, in no time
        ...     return f"woke at t={asyncio.get_running_loop().time():.0f}"
        >>> testing.run(nap())
        'woke at t=86400'
    """
    with asyncio.Runner(loop_factory=lambda: VirtualClockLoop(start_time)) as runner:
        return runner.run(main)
