"""Row 3: a whole tap against a server that answers at once.

The optisync side awaits ``optimistic_sync_with_push`` (apply, take the lock,
send in the store's task, check the revisions, release the lock). The
baseline is the hand-written "emit, then await send" an app would write
without optisync, awaiting the same instant send function. A second,
informative baseline sends in a task of its own, as optisync must (so that
cancelling the caller does not cancel the send): it shows what the task
alone costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from optisync import Store

from ._common import Row, fmt_ns, fmt_ratio, median_ns_per_op, timed_async_ns

__all__ = ["OPS", "REPEATS", "measure", "measure_ns"]

OPS = 5_000
REPEATS = 9
TARGET = 3.0


def _revision(key: Hashable) -> int:
    return -1


def _next(state: int) -> int:
    return state + 1


def _apply(state: int, value: int) -> int:
    return value


def _value(state: int) -> int:
    return state


async def measure_ns(ops: int = OPS, repeats: int = REPEATS) -> tuple[float, float, float]:
    """Median ns per awaited tap: (optisync, emit then await send, emit then await a task)."""
    server_revision = 0

    async def send(
        value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> int:
        nonlocal server_revision
        server_revision += 1
        inform(server_revision)
        return value

    async with Store(0, device_id=1) as store:

        async def sync_tap() -> None:
            await store.optimistic_sync_with_push(
                key="counter",
                value_to_apply=lambda: _next(store.state),
                apply_optimistic_value_to_state=_apply,
                get_value_from_state=_value,
                send_value_to_server=send,
                get_server_revision_from_state=_revision,
            )

        async def hand_written_tap() -> None:
            value = _next(store.state)
            store.emit(_apply(store.state, value))
            await send(value, 0, 1, _ignore)

        async def hand_written_task_tap() -> None:
            value = _next(store.state)
            store.emit(_apply(store.state, value))
            await asyncio.get_running_loop().create_task(send(value, 0, 1, _ignore))

        async def run_sync() -> None:
            for _ in range(ops):
                await sync_tap()

        async def run_hand_written() -> None:
            for _ in range(ops):
                await hand_written_tap()

        async def run_hand_written_task() -> None:
            for _ in range(ops):
                await hand_written_task_tap()

        sync_samples, hand_samples, task_samples = [], [], []
        for _ in range(repeats):  # interleaved, so drift hits every side alike
            sync_samples.append(await timed_async_ns(run_sync))
            hand_samples.append(await timed_async_ns(run_hand_written))
            task_samples.append(await timed_async_ns(run_hand_written_task))
        if store.is_syncing("counter"):
            raise AssertionError("the key should be free")
    return (
        median_ns_per_op(sync_samples, ops),
        median_ns_per_op(hand_samples, ops),
        median_ns_per_op(task_samples, ops),
    )


def _ignore(server_revision: int) -> None:
    pass


def measure(ops: int = OPS, repeats: int = REPEATS) -> list[Row]:
    """The full-cycle row, and the informative one against a send in a task."""
    sync_ns, hand_ns, task_ns = asyncio.run(measure_ns(ops, repeats))
    ratio = sync_ns / hand_ns
    return [
        Row(
            number="3",
            measure="full cycle vs an instant server",
            optisync=fmt_ns(sync_ns),
            baseline=f"{fmt_ns(hand_ns)} (emit, await send)",
            ratio=fmt_ratio(ratio),
            target=f"<= {TARGET:.0f}x",
            met=ratio <= TARGET,
        ),
        Row(
            number="3",
            measure="full cycle, for scale: the baseline sending in a task",
            optisync=fmt_ns(sync_ns),
            baseline=f"{fmt_ns(task_ns)} (emit, await a task of send)",
            ratio=fmt_ratio(sync_ns / task_ns),
            target="",
            met=None,
        ),
    ]
