"""What every benchmark row shares: the row record, medians, number formats, int callbacks."""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator

import attrs

__all__ = [
    "Row",
    "fmt_bytes",
    "fmt_ns",
    "fmt_ratio",
    "gc_paused",
    "ignore",
    "incremented",
    "itself",
    "median_ns_per_op",
    "replaced",
    "timed_async_ns",
    "timed_ns",
    "unknown_revision",
]


@attrs.frozen
class Row:
    """One line of the table.

    ``met`` is None when the row has no verdict (not available, or informative).
    """

    number: str
    measure: str
    optisync: str
    baseline: str
    ratio: str
    target: str
    met: bool | None


def timed_ns(run: Callable[[], object]) -> int:
    """Wall time of one ``run()``, in nanoseconds, after a full collection."""
    gc.collect()
    start = time.perf_counter_ns()
    run()
    return time.perf_counter_ns() - start


async def timed_async_ns(run: Callable[[], Awaitable[object]]) -> int:
    """Wall time of one ``await run()``, in nanoseconds, after a full collection."""
    gc.collect()
    start = time.perf_counter_ns()
    await run()
    return time.perf_counter_ns() - start


@contextlib.contextmanager
def gc_paused(paused: bool = True) -> Iterator[None]:
    """Keep the cyclic garbage collector off inside the block, when ``paused``."""
    was_enabled = gc.isenabled()
    if paused:
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def median_ns_per_op(samples_ns: list[int], ops: int) -> float:
    """The median of several repeats, divided by the operations in one repeat."""
    return statistics.median(samples_ns) / ops


def fmt_ns(ns: float) -> str:
    """A duration with a unit chosen for its size: ``"812 ns"``, ``"3.40 µs"``."""
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f} µs"
    return f"{ns / 1_000_000:.2f} ms"


def fmt_bytes(size: float) -> str:
    """A size in bytes: ``"212 B"``, ``"1.31 KB"`` (1 KB = 1,024 B)."""
    if size < 1_024:
        return f"{size:.0f} B"
    return f"{size / 1_024:.2f} KB"


def fmt_ratio(ratio: float) -> str:
    """A ratio with two significant decimals: ``"1.42x"``."""
    return f"{ratio:.2f}x"


# The callbacks of an int state, shared by the rows that sync a counter.


def incremented(state: int) -> int:
    """The next value of a counter."""
    return state + 1


def replaced(state: int, value: int) -> int:
    """The state once ``value`` is applied: the value itself."""
    return value


def itself(state: int) -> int:
    """The value a counter state holds."""
    return state


def unknown_revision(key: Hashable) -> int:
    """No server revision known: the state does not keep one."""
    return -1


def ignore(server_revision: int) -> None:
    """An ``inform_server_revision`` that nobody listens to."""
