"""Row 3: a whole tap against a server that answers at once, per call.

The optisync side awaits ``optimistic_sync_with_push`` (apply, take the lock,
send in the store's task, check the revisions, release the lock). Against:

* ``inline``: the hand-written "emit, then await send" an app would write
  without optisync, awaiting the same instant send in the caller's task;
* ``task``: the same send run in a bare task, ``await create_task(send(...))``,
  as optisync must (so that cancelling the caller does not cancel the send):
  the floor for anything that sends in a task of its own;
* ``eager``: the same, with the task started eagerly (Python 3.12+,
  ``eager_start=True``): an instant send then finishes inside the call,
  without a turn of the event loop.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

import attrs

from optisync import Store

from ._common import (
    Row,
    fmt_ns,
    fmt_ratio,
    ignore,
    incremented,
    itself,
    median_ns_per_op,
    replaced,
    timed_async_ns,
    unknown_revision,
)

__all__ = ["EAGER_TASKS", "OPS", "REPEATS", "CycleTimes", "measure", "measure_ns"]

OPS = 5_000
REPEATS = 9
INLINE_TARGET = 3.0
#: Issue 10's aim against a bare task: 1.3x on 3.11; below it with eager start (3.12+).
TASK_TARGET = 1.0 if sys.version_info >= (3, 12) else 1.3
#: Whether this Python can start a task eagerly (``eager_start``, new in 3.12).
EAGER_TASKS = sys.version_info >= (3, 12)


@attrs.frozen
class CycleTimes:
    """Median ns per awaited call; ``eager`` is None before Python 3.12."""

    cycle: float
    inline: float
    task: float
    eager: float | None


async def measure_ns(ops: int = OPS, repeats: int = REPEATS) -> CycleTimes:
    """Median ns per awaited call of the cycle and of each baseline."""
    server_revision = 0
    loop = asyncio.get_running_loop()

    async def send(
        value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> int:
        nonlocal server_revision
        server_revision += 1
        inform(server_revision)
        return value

    async with Store(0, device_id=1) as store:

        async def cycle() -> None:
            await store.optimistic_sync_with_push(
                key="counter",
                value_to_apply=lambda: incremented(store.state),
                apply_optimistic_value_to_state=replaced,
                get_value_from_state=itself,
                send_value_to_server=send,
                get_server_revision_from_state=unknown_revision,
            )

        async def inline() -> None:
            value = incremented(store.state)
            store.emit(replaced(store.state, value))
            await send(value, 0, 1, ignore)

        async def task() -> None:
            await loop.create_task(send(0, 0, 1, ignore))

        async def eager() -> None:
            await asyncio.Task(send(0, 0, 1, ignore), loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]

        sides: dict[str, Callable[[], Awaitable[None]]] = {
            "cycle": cycle,
            "inline": inline,
            "task": task,
        }
        if EAGER_TASKS:
            sides["eager"] = eager
        samples: dict[str, list[int]] = {name: [] for name in sides}
        for _ in range(repeats):  # interleaved, so drift hits every side alike
            for name, call in sides.items():
                samples[name].append(await timed_async_ns(_repeated(call, ops)))
        if store.is_syncing("counter"):
            raise AssertionError("the key should be free")
    medians = {name: median_ns_per_op(values, ops) for name, values in samples.items()}
    return CycleTimes(medians["cycle"], medians["inline"], medians["task"], medians.get("eager"))


def _repeated(call: Callable[[], Awaitable[None]], ops: int) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for _ in range(ops):
            await call()

    return run


def measure(ops: int = OPS, repeats: int = REPEATS) -> list[Row]:
    """The full-cycle rows: against the inline send, a bare task and an eager bare task."""
    times = asyncio.run(measure_ns(ops, repeats))
    rows = [
        _row("vs emit, await send inline", times, times.inline, "emit + send", INLINE_TARGET),
        _row("vs the send in a bare task", times, times.task, "task", TASK_TARGET),
    ]
    if times.eager is None:
        rows.append(
            Row(
                "3",
                "vs the send in an eager task",
                fmt_ns(times.cycle),
                "n/a (Python 3.12+)",
                "",
                "",
                None,
            )
        )
    else:
        rows.append(_row("vs the send in an eager task", times, times.eager, "eager task", None))
    return rows


def _row(
    measure: str, times: CycleTimes, baseline_ns: float, baseline: str, target: float | None
) -> Row:
    ratio = times.cycle / baseline_ns
    return Row(
        number="3",
        measure=measure,
        optisync=fmt_ns(times.cycle),
        baseline=f"{fmt_ns(baseline_ns)} ({baseline})",
        ratio=fmt_ratio(ratio),
        target="" if target is None else f"<= {target:.1f}x",
        met=None if target is None else ratio <= target,
    )
