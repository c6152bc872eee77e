"""Row 1: how many requests N taps send when they are made during one request in flight.

optisync sends the first tap, coalesces the others, and sends one follow-up
with the latest value; a naive client sends every tap. The fake server holds
every response until all taps are made, so the counts are deterministic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from optisync import Store

from ._common import Row, unknown_revision

__all__ = ["SIZES", "measure", "naive_requests", "optisync_requests"]

SIZES = (1, 2, 10, 1_000, 10_000)


class _HeldServer:
    """Counts requests and answers none until ``taps_done`` is set."""

    def __init__(self) -> None:
        self.requests = 0
        self.first_in_flight = asyncio.Event()
        self.taps_done = asyncio.Event()

    async def receive(self) -> int:
        self.requests += 1
        self.first_in_flight.set()
        await self.taps_done.wait()
        return self.requests


async def optisync_requests(taps: int) -> int:
    """Requests that ``optimistic_sync_with_push`` sends for ``taps`` rapid taps."""
    server = _HeldServer()

    async def send(
        value: int, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        inform(await server.receive())

    async with Store(0, device_id=1) as store:

        def tap() -> Awaitable[None]:
            return store.optimistic_sync_with_push(
                key="counter",
                value_to_apply=lambda: store.state + 1,
                apply_optimistic_value_to_state=lambda state, value: value,
                get_value_from_state=lambda state: state,
                send_value_to_server=send,
                get_server_revision_from_state=unknown_revision,
            )

        cycle = tap()
        await server.first_in_flight.wait()
        for _ in range(taps - 1):
            tap()
        server.taps_done.set()
        await cycle
        if store.state != taps:
            raise AssertionError(f"state {store.state} after {taps} taps")
    return server.requests


async def naive_requests(taps: int) -> int:
    """Requests that a client sending every tap (emit, then send in a task) makes."""
    server = _HeldServer()
    tasks: set[asyncio.Task[int]] = set()
    async with Store(0, device_id=1) as store:
        for _ in range(taps):
            store.emit(store.state + 1)
            tasks.add(asyncio.create_task(server.receive()))
        await server.first_in_flight.wait()
        server.taps_done.set()
        await asyncio.gather(*tasks)
    return server.requests


def measure(sizes: Sequence[int] = SIZES) -> list[Row]:
    """One row per N: requests sent by optisync and by the naive client."""
    rows = []
    for taps in sizes:
        ours = asyncio.run(optisync_requests(taps))
        naive = asyncio.run(naive_requests(taps))
        expected = 1 if taps == 1 else 2
        plural = "" if taps == 1 else "s"
        rows.append(
            Row(
                number="1",
                measure=f"{taps:,} tap{plural}",
                optisync=f"{ours:,}",
                baseline=f"{naive:,} (naive)",
                ratio=f"{naive / ours:,.0f}x fewer" if naive > ours else "same",
                target=f"exactly {expected}",
                met=ours == expected,
            )
        )
    return rows
