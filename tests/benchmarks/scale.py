"""Row 4: time per call and memory per key with many keys in flight, then settled.

For each size N, one store takes N taps on N distinct keys while the server
holds every request (N cycles in flight at once), then the server answers
them all and they settle. Time: the N calls that start the cycles, then N
calls on the same keys once idle (they start new cycles), each divided by
N. For scale, the same N sends started as bare ``asyncio`` tasks (no
optisync): CPython's cyclic garbage collector makes even those slower per
task as more objects stay alive. So every round is timed twice: as an app
runs it, and with the collector off during the timed calls (it collects
between them), which leaves what the calls themselves cost. Memory (``tracemalloc``, measured in a
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
from collections.abc import Callable, Sequence

import attrs

from optisync import Store

from ._common import (
    Row,
    fmt_bytes,
    fmt_ns,
    fmt_ratio,
    gc_paused,
    ignore,
    itself,
    replaced,
    unknown_revision,
)

__all__ = ["SIZES", "ScaleResult", "Timings", "measure", "measure_size"]

SIZES = (1_000, 10_000, 100_000)
TIME_FLATNESS = 1.5
IN_FLIGHT_BYTES = 1.5 * 1_024
IDLE_BYTES = 300


@attrs.frozen
class Timings:
    """Median ns per call at one size: taps on new keys, on idle keys, bare tasks."""

    start_ns: float
    idle_call_ns: float
    bare_task_ns: float


@attrs.frozen
class ScaleResult:
    """Per-key figures for one size: ns per call (collector on, off), bytes per key."""

    keys: int
    gc_on: Timings
    gc_off: Timings
    in_flight_bytes: float
    idle_bytes: float


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

    def tap_all(self, gc_off: bool = False) -> int:
        """Tap every key once; return the ns it took (the collector off, if ``gc_off``)."""
        store, send = self.store, self.send
        with gc_paused(gc_off):
            start = time.perf_counter_ns()
            for key in self.keys:
                store.optimistic_sync_with_push(
                    key=key,
                    value_to_apply=lambda: store.state + 1,
                    apply_optimistic_value_to_state=replaced,
                    get_value_from_state=itself,
                    send_value_to_server=send,
                    get_server_revision_from_state=unknown_revision,
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


async def _timed_round(keys: int, gc_off: bool) -> tuple[int, int]:
    bench = _Round(keys)
    gc.collect()
    await asyncio.sleep(0)
    start_ns = bench.tap_all(gc_off)
    await bench.settle()
    gc.collect()
    idle_ns = bench.tap_all(gc_off)
    await bench.settle()
    await bench.store.close()
    return start_ns, idle_ns


async def _bare_tasks_round(keys: int, gc_off: bool) -> int:
    """N held sends started as bare tasks: the floor any per-key task pays."""
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(
        value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        await gate

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    gc.collect()
    with gc_paused(gc_off):
        start = time.perf_counter_ns()
        for number in range(keys):
            tasks.add(loop.create_task(send(number, 1, 1, ignore)))
        elapsed = time.perf_counter_ns() - start
    gate.set_result(None)
    await asyncio.gather(*tasks)
    return elapsed


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


def _timings(keys: int, repeats: int, gc_off: bool) -> Timings:
    starts, idles, bares = [], [], []
    for _ in range(repeats):
        start_ns, idle_ns = asyncio.run(_timed_round(keys, gc_off))
        starts.append(start_ns)
        idles.append(idle_ns)
        bares.append(asyncio.run(_bare_tasks_round(keys, gc_off)))
    return Timings(
        start_ns=statistics.median(starts) / keys,
        idle_call_ns=statistics.median(idles) / keys,
        bare_task_ns=statistics.median(bares) / keys,
    )


def measure_size(keys: int, repeats: int) -> ScaleResult:
    """Median time per call over ``repeats`` rounds, and memory from one traced round."""
    gc_on = _timings(keys, repeats, gc_off=False)
    gc_off = _timings(keys, repeats, gc_off=True)
    in_flight, idle = asyncio.run(_memory_round(keys))
    return ScaleResult(keys, gc_on, gc_off, in_flight / keys, idle / keys)


def _spread(values: Sequence[float]) -> float:
    return max(values) / min(values)


def _repeats_for(keys: int) -> int:
    return 5 if keys >= 100_000 else 7


def _time_rows(results: Sequence[ScaleResult], gc_off: bool) -> list[Row]:
    """Per size, the time per call; then the spread across sizes."""
    suffix = ", gc off" if gc_off else ""
    timings = [(r.keys, r.gc_off if gc_off else r.gc_on) for r in results]
    rows = [
        Row(
            number="4",
            measure=f"{keys:,} keys{suffix}: new / idle keys",
            optisync=f"{fmt_ns(t.start_ns)} / {fmt_ns(t.idle_call_ns)}",
            baseline=f"{fmt_ns(t.bare_task_ns)} (task)",
            ratio=fmt_ratio(t.start_ns / t.bare_task_ns),
            target="",
            met=None,
        )
        for keys, t in timings
    ]
    spread = max(
        _spread([t.start_ns for _, t in timings]), _spread([t.idle_call_ns for _, t in timings])
    )
    rows.append(
        Row(
            number="4",
            measure=f"slowest / fastest size{suffix}",
            optisync=fmt_ratio(spread),
            baseline=f"{fmt_ratio(_spread([t.bare_task_ns for _, t in timings]))} (task)",
            ratio="",
            target=f"<= {TIME_FLATNESS}x",
            met=spread <= TIME_FLATNESS,
        )
    )
    return rows


def _memory_row(label: str, per_key: Sequence[float], target: str, limit: float) -> Row:
    worst = max(per_key)
    return Row(
        number="4",
        measure=label,
        optisync=fmt_bytes(worst),
        baseline="by size: " + ", ".join(fmt_bytes(size) for size in per_key),
        ratio="",
        target=target,
        met=worst <= limit,
    )


def measure(sizes: Sequence[int] = SIZES, repeats: int | None = None) -> list[Row]:
    """Rows: time per call at each size and its spread (collector on, then off); memory."""
    results = [measure_size(keys, repeats or _repeats_for(keys)) for keys in sizes]
    return [
        *_time_rows(results, gc_off=False),
        *_time_rows(results, gc_off=True),
        _memory_row(
            "memory per in-flight key (worst size)",
            [r.in_flight_bytes for r in results],
            "<= 1.50 KB",
            IN_FLIGHT_BYTES,
        ),
        _memory_row(
            "memory per idle key (worst size)",
            [r.idle_bytes for r in results],
            f"<= {IDLE_BYTES} B",
            IDLE_BYTES,
        ),
    ]
