"""optisync.testing's virtual clock: time jumps to the next timer, nothing waits for real."""

from __future__ import annotations

import asyncio
import sys
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


def test_a_deadlock_raises_instead_of_hanging() -> None:
    async def main() -> None:
        await asyncio.Event().wait()  # nothing will ever set it, and no timer is left

    with pytest.raises(testing.DeadlockError, match="deadlock: every task waits") as failure:
        testing.run(main(), deadlock_timeout=0.0)
    assert "main()" in str(failure.value)  # names the task that waits
    assert isinstance(failure.value, RuntimeError)  # what a caller unaware of optisync catches


def test_an_executor_job_slower_than_the_deadlock_timeout_is_not_a_deadlock() -> None:
    job_may_end = threading.Event()

    async def main() -> str:
        loop = asyncio.get_running_loop()
        job = asyncio.to_thread(lambda: job_may_end.wait(10) and "job done")
        # The job waits for a thread the loop does not know; release it only once
        # the loop has been idle long past its deadlock timeout.
        threading.Timer(0.2, job_may_end.set).start()
        result = await job
        assert loop.time() == 0.0
        return str(result)

    assert testing.run(main(), deadlock_timeout=0.0) == "job done"


def test_a_thread_job_left_running_at_exit_gets_real_time_to_finish() -> None:
    # At exit the runner waits for the default executor's threads, up to 300 s
    # (Python 3.12+). Python 3.13 times that wait on the loop's clock: a jumping
    # clock gave up on it at once ("did not finish joining") and left the job behind.
    job_may_end = threading.Event()
    job_finished = threading.Event()

    def job() -> None:
        job_may_end.wait(10)
        job_finished.set()

    async def main() -> None:
        asyncio.get_running_loop().run_in_executor(None, job)
        threading.Timer(0.2, job_may_end.set).start()

    testing.run(main())
    assert job_finished.is_set()


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Python 3.13 bounds the whole wait")
def test_the_executor_join_timeout_still_expires() -> None:
    job_may_end = threading.Event()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(None, job_may_end.wait, 10)
        with pytest.warns(RuntimeWarning, match="joining its threads within 0.05 seconds"):
            await loop.shutdown_default_executor(0.05)  # type: ignore[call-arg,unused-ignore]
        job_may_end.set()
        await job

    testing.run(main())


def test_virtual_time_resumes_once_the_executor_is_shut_down() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.to_thread(lambda: None)
        await loop.shutdown_default_executor()
        await asyncio.sleep(3600)  # an hour, were the clock still on real time
        return loop.time()

    assert testing.run(main()) >= 3600


def test_deadlock_timeout_none_waits_for_a_slow_thread() -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[str] = loop.create_future()
        timer = threading.Timer(0.2, lambda: loop.call_soon_threadsafe(woken.set_result, "late"))
        timer.start()
        result = await woken
        timer.join()
        return result

    assert testing.run(main(), deadlock_timeout=None) == "late"


def test_a_negative_deadlock_timeout_is_rejected() -> None:
    with pytest.raises(ValueError, match="deadlock_timeout"):
        VirtualClockLoop(deadlock_timeout=-1.0)


def test_the_clock_does_not_jump_past_a_timeout_while_a_worker_thread_works() -> None:
    started = threading.Event()
    release = threading.Event()

    def disk_write() -> str:
        started.set()
        release.wait(10)  # a guard, not a timing: the timer below releases it
        return "written"

    async def main() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        write = loop.run_in_executor(None, disk_write)
        await loop.run_in_executor(None, started.wait)
        threading.Timer(0.05, release.set).start()
        async with asyncio.timeout(3600):  # would expire at once if the clock jumped
            result = await write
        return result, loop.time()

    result, now = testing.run(main())
    assert result == "written"
    assert now < 3600
