"""optisync.testing's virtual clock: time jumps to the next timer, nothing waits for real."""

from __future__ import annotations

import asyncio
import threading

import pytest

from optisync import testing
from optisync.testing import VirtualClockLoop


def test_sleep_moves_the_clock_by_exactly_the_delay() -> None:
    async def main() -> float:
        await asyncio.sleep(86_400)
        return asyncio.get_running_loop().time()

    assert testing.run(main()) == 86_400


def test_the_clock_starts_at_start_time() -> None:
    async def main() -> float:
        return asyncio.get_running_loop().time()

    assert testing.run(main(), start_time=1_000.0) == 1_000.0


def test_timers_fire_in_the_order_of_their_virtual_deadlines() -> None:
    async def main() -> list[str]:
        fired: list[str] = []
        loop = asyncio.get_running_loop()
        loop.call_later(3.0, fired.append, "late")
        loop.call_later(1.0, fired.append, "early")
        loop.call_later(2.0, fired.append, "middle")
        await asyncio.sleep(5.0)
        return fired

    assert testing.run(main()) == ["early", "middle", "late"]


def test_a_timeout_expires_at_its_virtual_deadline() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await asyncio.Event().wait()
        return loop.time()

    assert testing.run(main()) == 30.0


def test_the_clock_does_not_move_while_callbacks_are_ready() -> None:
    async def main() -> float:
        for _ in range(100):
            await asyncio.sleep(0)
        return asyncio.get_running_loop().time()

    assert testing.run(main()) == 0.0


def test_another_thread_can_wake_a_loop_that_has_no_timer() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[str] = loop.create_future()
        thread = threading.Thread(
            target=lambda: loop.call_soon_threadsafe(woken.set_result, "from thread")
        )
        thread.start()
        result = await woken
        thread.join()
        return result

    assert testing.run(main()) == "from thread"


def test_the_loop_works_with_asyncio_runner() -> None:
    async def main() -> float:
        await asyncio.sleep(2.5)
        return asyncio.get_running_loop().time()

    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        assert runner.run(main()) == 2.5
