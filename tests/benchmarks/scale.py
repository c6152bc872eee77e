"""Row 4: time per call and memory per key with many keys in flight, then settled.

For each size N, one store takes N taps on N distinct keys while the server
holds every request (N cycles in flight at once), then the server answers
them all and they settle. Time: the N calls that start the cycles, then N
calls on the same keys once idle (they start new cycles), each divided by
N. For scale, the same N sends started as bare ``asyncio`` tasks (no
optisync): CPython's cyclic garbage collector makes even those slower per
task as more objects stay alive. Memory (``tracemalloc``, measured in a
separate run so tracing does not slow the timed one): what the store and its
tasks hold per in-flight key, including the held ``send`` coroutine (the
smallest a send can be), and what stays per key after they settle.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Hashable, Sequence

import attrs

from optisync import Store

from ._common import Row, fmt_bytes, fmt_ns, fmt_ratio

__all__ = ["SIZES", "ScaleResult", "measure", "measure_size"]

SIZES = (1_000, 10_000, 100_000)
TIME_FLATNESS = 1.5
IN_FLIGHT_BYTES = 1.5 * 1_024
IDLE_BYTES = 300


@attrs.frozen
class ScaleResult:
    """Per-key figures for one size: ns per call, bytes per key."""

    keys: int
    start_ns: float
    idle_call_ns: float
    bare_task_ns: float
    in_flight_bytes: float
    idle_bytes: float


def _revision(key: Hashable) -> int:
    return -1


def _apply(state: int, value: int) -> int:
    return value


def _value(state: int) -> int:
    return state


class _Round:
    """One store, N keys; the server holds every request until :meth:`settle`."""

    def __init__(self, keys: int) -> None:
        self.keys = [("item", number) for number in range(keys)]
        self.store: Store[int] = Store(0, device_id=1)
        self.answered = 0
        self.all_answered = asyncio.Event()
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(
        self, value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        await self.gate
        self.answered += 1
        if self.answered == len(self.keys):
            self.all_answered.set()
        inform(local_revision)

    def tap_all(self) -> int:
        """Tap every key once; return the ns it took."""
        store, send = self.store, self.send
        start = time.perf_counter_ns()
        for key in self.keys:
            store.optimistic_sync_with_push(
                key=key,
                value_to_apply=lambda: store.state + 1,
                apply_optimistic_value_to_state=_apply,
                get_value_from_state=_value,
                send_value_to_server=send,
                get_server_revision_from_state=_revision,
            )
        return time.perf_counter_ns() - start

    async def settle(self) -> None:
        """Answer every held request and wait until no key is locked."""
        self.gate.set_result(None)
        await self.all_answered.wait()
        for _ in range(3):  # the cycles end, then their done callbacks run
            await asyncio.sleep(0)
        if any(self.store.is_syncing(key) for key in self.keys):
            raise AssertionError("a key is still locked after settling")
        self.answered = 0
        self.all_answered.clear()
        self.gate = asyncio.get_running_loop().create_future()


async def _timed_round(keys: int) -> tuple[int, int]:
    bench = _Round(keys)
    gc.collect()
    await asyncio.sleep(0)
    start_ns = bench.tap_all()
    await bench.settle()
    gc.collect()
    idle_ns = bench.tap_all()
    await bench.settle()
    await bench.store.close()
    return start_ns, idle_ns


async def _bare_tasks_round(keys: int) -> int:
    """N held sends started as bare tasks: the floor any per-key task pays."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(
        value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        await gate

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    gc.collect()
    start = time.perf_counter_ns()
    for number in range(keys):
        tasks.add(loop.create_task(send(number, 1, 1, _ignore)))
    elapsed = time.perf_counter_ns() - start
    gate.set_result(None)
    await asyncio.gather(*tasks)
    return elapsed


def _ignore(server_revision: int) -> None:
    pass


async def _memory_round(keys: int) -> tuple[int, int]:
    bench = _Round(keys)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        bench.tap_all()
        await asyncio.sleep(0)  # every send is now started and held
        gc.collect()
        in_flight = tracemalloc.get_traced_memory()[0] - before
        await bench.settle()
        gc.collect()
        idle = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    await bench.store.close()
    return in_flight, idle


def measure_size(keys: int, repeats: int) -> ScaleResult:
    """Median time per call over ``repeats`` rounds, and memory from one traced round."""
    starts, idles, bares = [], [], []
    for _ in range(repeats):
        start_ns, idle_ns = asyncio.run(_timed_round(keys))
        starts.append(start_ns)
        idles.append(idle_ns)
        bares.append(asyncio.run(_bare_tasks_round(keys)))
    in_flight, idle = asyncio.run(_memory_round(keys))
    return ScaleResult(
        keys=keys,
        start_ns=statistics.median(starts) / keys,
        idle_call_ns=statistics.median(idles) / keys,
        bare_task_ns=statistics.median(bares) / keys,
        in_flight_bytes=in_flight / keys,
        idle_bytes=idle / keys,
    )


def _spread(values: Sequence[float]) -> float:
    return max(values) / min(values)


def _repeats_for(keys: int) -> int:
    return 5 if keys >= 100_000 else 7


def measure(sizes: Sequence[int] = SIZES, repeats: int | None = None) -> list[Row]:
    """Rows: time per call at each size (and its spread), memory per key."""
    results = [measure_size(keys, repeats or _repeats_for(keys)) for keys in sizes]
    rows = [
        Row(
            number="4",
            measure=f"scale: {r.keys:,} keys in flight, time per call (new keys / idle keys)",
            optisync=f"{fmt_ns(r.start_ns)} / {fmt_ns(r.idle_call_ns)}",
            baseline=f"{fmt_ns(r.bare_task_ns)} (bare create_task)",
            ratio=fmt_ratio(r.start_ns / r.bare_task_ns),
            target="",
            met=None,
        )
        for r in results
    ]
    spread = max(_spread([r.start_ns for r in results]), _spread([r.idle_call_ns for r in results]))
    bare_spread = _spread([r.bare_task_ns for r in results])
    rows.append(
        Row(
            number="4",
            measure="scale: time per call, slowest size / fastest size",
            optisync=fmt_ratio(spread),
            baseline=f"{fmt_ratio(bare_spread)} (bare create_task)",
            ratio="",
            target=f"<= {TIME_FLATNESS}x",
            met=spread <= TIME_FLATNESS,
        )
    )
    worst_in_flight = max(r.in_flight_bytes for r in results)
    worst_idle = max(r.idle_bytes for r in results)
    per_size = ", ".join(fmt_bytes(r.in_flight_bytes) for r in results)
    rows.append(
        Row(
            number="4",
            measure="scale: memory per in-flight key (worst size)",
            optisync=fmt_bytes(worst_in_flight),
            baseline=f"by size: {per_size}",
            ratio="",
            target="<= 1.50 KB",
            met=worst_in_flight <= IN_FLIGHT_BYTES,
        )
    )
    per_size = ", ".join(fmt_bytes(r.idle_bytes) for r in results)
    rows.append(
        Row(
            number="4",
            measure="scale: memory per idle key (worst size)",
            optisync=fmt_bytes(worst_idle),
            baseline=f"by size: {per_size}",
            ratio="",
            target=f"<= {IDLE_BYTES} B",
            met=worst_idle <= IDLE_BYTES,
        )
    )
    return rows
