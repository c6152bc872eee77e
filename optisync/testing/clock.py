"""Virtual time: an asyncio event loop whose clock jumps instead of waiting.

Nothing in the simulator waits for real: when every task is waiting for a
timer, the loop moves its clock straight to the next timer. A scenario that
spans hours of simulated latency runs in milliseconds, and because the loop is
single-threaded and every random choice comes from a seeded generator, the same
seed replays the same run, step for step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar, TypeVarTuple

from optisync.errors import InvalidArgumentError, OptisyncError

__all__ = ["DeadlockError", "VirtualClockLoop", "run"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class DeadlockError(OptisyncError, RuntimeError):
    """Every task of a :class:`VirtualClockLoop` waits, and nothing can wake them.

    No timer is scheduled, no executor job runs, no real socket is open and no
    other thread woke the loop within ``deadlock_timeout``: virtual time
    cannot move, and a normal loop would hang forever. The message lists the
    waiting tasks; find the event or future nobody will set.

    Example:
        >>> import asyncio
        >>> from optisync import testing
        >>> async def stuck() -> None:
        ...     await asyncio.Event().wait()
        >>> try:
        ...     testing.run(stuck(), deadlock_timeout=0.0)
        ... except RuntimeError as error:
        ...     print(type(error).__name__, str(error)[:8])
        DeadlockError deadlock
    """


class _Clock:
    __slots__ = ("now",)

    def __init__(self, start: float) -> None:
        self.now = start


class _JumpingSelector(selectors.BaseSelector):
    """A real selector that, instead of sleeping until a timer, moves the clock there.

    Real file descriptors (the loop's self-pipe, used by ``call_soon_threadsafe``)
    are still polled, without waiting. With no timer at all, the loop has
    nothing to do until another thread or a real socket wakes it: it waits for
    real, and ``on_idle`` decides for how long (``None``: forever).

    While ``real_time`` is set, or ``busy()`` says another thread is working
    for the loop, it waits for timers for real too, and the clock moves by the
    time that really passed: virtual time never runs ahead of a thread.
    """

    def __init__(self, clock: _Clock) -> None:
        self._inner = selectors.DefaultSelector()
        self._clock = clock
        self.on_idle: Callable[[int], float | None] = lambda registered: None
        self.busy: Callable[[], bool] = lambda: False
        self.real_time = False

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            ready = self._inner.select(0)
            if ready:
                return ready
            limit = self.on_idle(len(self._inner.get_map()))
            ready = self._inner.select(limit)
            if not ready and limit is not None:
                self.on_idle(-1)  # nobody woke the loop: let it raise
            return ready
        ready = self._inner.select(0)
        if ready or timeout <= 0:
            return ready
        if self.real_time or self.busy():
            started = time.monotonic()
            ready = self._inner.select(timeout)
            self._clock.now += time.monotonic() - started
            return ready
        self._clock.now += timeout
        return ready

    def close(self) -> None:
        self._inner.close()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._inner.get_map()


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``asyncio.sleep(3600)`` returns at once.

    ``loop.time()`` starts at ``start_time`` and only moves when every task
    waits for a timer; it then jumps to the earliest timer, unless a job runs
    in an executor (then it moves with real time until the job is done). Everything built on
    ``loop.time()`` follows: ``asyncio.sleep``, ``asyncio.timeout``,
    ``call_later``. Real clocks (``time.monotonic()``) are untouched. Use it
    through :func:`run`, or as ``asyncio.Runner(loop_factory=VirtualClockLoop)``.

    A deadlock fails instead of hanging: when every task waits, no timer is
    scheduled, no executor job (``run_in_executor``, ``asyncio.to_thread``) is
    running and no real socket is open, the loop waits ``deadlock_timeout``
    seconds of real time for another thread to wake it
    (``call_soon_threadsafe``), then raises :class:`DeadlockError` (a
    ``RuntimeError``) naming the waiting tasks. Pass ``deadlock_timeout=None``
    to wait forever instead, as a normal loop does, if your code is woken by
    threads that may take longer.

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

    def __init__(self, start_time: float = 0.0, *, deadlock_timeout: float | None = 1.0) -> None:
        self._clock = _Clock(start_time)
        self._deadlock_timeout = deadlock_timeout
        self._executor_jobs = 0
        selector = _JumpingSelector(self._clock)
        self._jumping_selector = selector
        super().__init__(selector)
        # What the loop registers for itself (its self-pipe); anything more is a
        # real socket, whose peer may wake the loop at any time.
        self._own_registrations = len(selector.get_map())
        selector.on_idle = self._on_idle
        selector.busy = lambda: self._executor_jobs > 0
        if deadlock_timeout is not None and not deadlock_timeout >= 0:
            self.close()  # fully made, so that it can be closed cleanly
            raise InvalidArgumentError(
                f"deadlock_timeout must be >= 0 or None, got {deadlock_timeout}"
            )

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

    def run_in_executor(
        self,
        executor: concurrent.futures.Executor | None,
        func: Callable[[*Ts], T],
        *args: *Ts,
    ) -> asyncio.Future[T]:
        """``loop.run_in_executor``, counted: while a job runs, time is real.

        While a job runs on another thread, the clock does not jump to the
        next timer: it moves with real time until the job is done (so a
        ``timeout`` around a disk write on a worker thread does not expire in
        no time), and no deadlock is reported.

        Example:
            >>> import asyncio, time
            >>> from optisync import testing
            >>> async def main() -> str:
            ...     return await asyncio.to_thread(lambda: time.sleep(0.01) or "done")
            >>> testing.run(main())
            'done'
        """
        future: asyncio.Future[T] = super().run_in_executor(executor, func, *args)
        self._executor_jobs += 1

        def finished(_: asyncio.Future[T]) -> None:
            self._executor_jobs -= 1

        future.add_done_callback(finished)
        return future

    async def shutdown_default_executor(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (the signature of asyncio's own)
    ) -> None:
        """``loop.shutdown_default_executor``, on real time while it runs.

        The executor's threads join in real time, so its ``timeout`` (Python
        3.12+; ``asyncio.Runner`` and ``asyncio.run`` give it 300 s) is counted
        in real seconds, as on any other loop: meanwhile the clock follows the
        real one instead of jumping. The joining thread wakes the loop when it
        is done, so there is no deadlock check either.

        Example:
            >>> from optisync.testing import VirtualClockLoop
            >>> loop = VirtualClockLoop()
            >>> loop.run_until_complete(loop.shutdown_default_executor())
            >>> loop.close()
        """
        self._jumping_selector.real_time = True
        try:
            await super().shutdown_default_executor(*(() if timeout is None else (timeout,)))
        finally:
            self._jumping_selector.real_time = False

    def _on_idle(self, registered: int) -> float | None:
        if registered < 0:
            waiting = [task for task in asyncio.all_tasks(self) if not task.done()]
            raise DeadlockError(
                "deadlock: every task waits, and no timer, executor job, socket or other "
                "thread can wake them, so virtual time cannot move; "
                f"{len(waiting)} task(s) waiting: {waiting!r} (if another thread wakes the "
                "loop later than deadlock_timeout, pass deadlock_timeout=None)"
            )
        if (
            self._deadlock_timeout is None
            or self._executor_jobs
            or self._jumping_selector.real_time
            or registered > self._own_registrations
        ):
            return None
        return self._deadlock_timeout


def run(
    main: Coroutine[Any, Any, T], *, start_time: float = 0.0, deadlock_timeout: float | None = 1.0
) -> T:
    """Run ``main`` to completion on a fresh :class:`VirtualClockLoop`, like ``asyncio.run``.

    Tasks still running when ``main`` returns are cancelled, as ``asyncio.run``
    does; check for them inside ``main`` if they matter to you. A deadlock
    raises :class:`DeadlockError` rather than hanging; ``deadlock_timeout`` is
    explained in :class:`VirtualClockLoop`.

    Example:
        >>> import asyncio
        >>> from optisync import testing
        >>> async def nap() -> str:
        ...     await asyncio.sleep(86_400)  # a day, in no time
        ...     return f"woke at t={asyncio.get_running_loop().time():.0f}"
        >>> testing.run(nap())
        'woke at t=86400'
        >>> async def stuck() -> None:
        ...     await asyncio.Event().wait()  # nobody will ever set it
        >>> testing.run(stuck(), deadlock_timeout=0.0)
        Traceback (most recent call last):
        ...
        optisync.testing.clock.DeadlockError: deadlock: every task waits, ...
    """

    def factory() -> VirtualClockLoop:
        return VirtualClockLoop(start_time, deadlock_timeout=deadlock_timeout)

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
