"""optisync.threads: a store's actions and state from other threads.

Threads and the loop meet at threading.Event gates; nothing sleeps. The
timeout tests wait for a short timeout on purpose: that wait is the behaviour.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from examples import threaded_todo
from examples.todo_app.todos import open_todos
from optisync import (
    BlockingOnLoopThreadError,
    CallTimeoutError,
    OptisyncError,
    Store,
    StoreClosedError,
)
from optisync.server import SqliteStorage, SyncServer
from optisync.threads import ThreadBridge

THREADS = 16
TAPS = 200


class Taps(Store[tuple[tuple[int, int], ...]]):
    """Each tap appends its id: a lost tap is missing, a duplicated one shows twice."""

    State = tuple[tuple[int, int], ...]

    def __init__(self) -> None:
        super().__init__(())
        self.errors: list[BaseException] = []

    def tap(self, tap_id: tuple[int, int]) -> int:
        self.emit((*self.state, tap_id))
        return len(self.state)

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)


def start_threads(target: Callable[[int], None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    return threads


async def join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        await asyncio.to_thread(thread.join)


async def test_sixteen_threads_tapping_at_once_lose_and_duplicate_no_tap() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    changes: list[object] = []
    store.subscribe(changes.append)
    seen_by_threads: list[int] = []

    def tapper(n: int) -> None:
        for i in range(TAPS):
            if i % 2:
                bridge.call(store.tap, (n, i))
            else:
                seen_by_threads.append(bridge.run(store.tap, (n, i), timeout=30))

    await join(start_threads(tapper))
    await asyncio.wrap_future(bridge.submit(lambda: None))  # after every call above
    expected = sorted((n, i) for n in range(THREADS) for i in range(TAPS))
    assert sorted(store.state) == expected
    assert len(changes) == THREADS * TAPS
    assert len(set(seen_by_threads)) == len(seen_by_threads) == THREADS * TAPS // 2
    assert bridge.state == store.state
    assert store.errors == []
    await store.close()


async def test_taps_racing_the_store_close_are_each_applied_once_or_failed() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    half_way = asyncio.Event()
    store.subscribe(lambda state: half_way.set() if len(state) == THREADS * TAPS // 2 else None)
    futures: list[concurrent.futures.Future[int]] = []
    lock = threading.Lock()

    def tapper(n: int) -> None:
        for i in range(TAPS):
            future = bridge.submit(store.tap, (n, i))
            with lock:
                futures.append(future)

    threads = start_threads(tapper)
    await half_way.wait()
    await store.close()
    await join(threads)
    await bridge.close()  # waits for the close the store's close started

    assert all(future.done() for future in futures), "a future was left pending"
    applied = [future.result() for future in futures if future.exception() is None]
    failed = [future.exception() for future in futures if future.exception() is not None]
    assert sorted(applied) == list(range(1, len(store.state) + 1))
    assert len(set(store.state)) == len(store.state) == len(applied)
    assert len(applied) + len(failed) == THREADS * TAPS
    assert all(isinstance(error, StoreClosedError) for error in failed)
    assert bridge.is_closed


async def test_a_call_after_the_store_closed_fails_at_once_with_a_clear_error() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    await store.close()
    await bridge.close()
    future = await asyncio.to_thread(bridge.submit, store.tap, (0, 0))
    error = future.exception(timeout=0)
    assert isinstance(error, StoreClosedError)
    assert "closed" in str(error)
    with pytest.raises(StoreClosedError):
        await asyncio.to_thread(lambda: bridge.run(store.tap, (0, 1), timeout=30))
    assert store.state == ()


async def test_closing_the_bridge_cancels_a_running_call_and_keeps_the_store() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    future = bridge.submit(forever)
    await started.wait()
    await bridge.close()
    assert isinstance(future.exception(timeout=0), StoreClosedError)
    assert not store.is_closed
    await store.close()


def test_a_thread_blocked_on_a_call_is_released_when_the_loop_shuts_down() -> None:
    ready = threading.Event()
    started = threading.Event()
    bridges: list[ThreadBridge[tuple[tuple[int, int], ...]]] = []
    outcome: list[BaseException] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def app() -> None:
        bridges.append(ThreadBridge(Taps()))
        ready.set()
        await asyncio.to_thread(started.wait)
        # returning: asyncio.run cancels every task, then closes the loop

    def blocked_thread() -> None:
        ready.wait()
        try:
            bridges[0].run(forever, timeout=None)
        except OptisyncError as error:
            outcome.append(error)

    thread = threading.Thread(target=blocked_thread)
    thread.start()
    asyncio.run(app())
    thread.join()
    assert isinstance(outcome[0], StoreClosedError)
    assert "shut down" in str(outcome[0])
    late = bridges[0].submit(forever)
    assert isinstance(late.exception(timeout=0), StoreClosedError)


async def test_a_blocking_call_on_the_loop_thread_is_refused_not_deadlocked() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    with pytest.raises(BlockingOnLoopThreadError, match="own loop thread"):
        bridge.run(store.tap, (0, 0), timeout=None)
    future = bridge.submit(store.tap, (0, 1))  # submitting on the loop thread is fine
    assert await asyncio.wrap_future(future) == 1
    assert store.state == ((0, 1),)
    await store.close()


async def test_a_timeout_drops_a_call_the_loop_has_not_started() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    errors: list[BaseException] = []
    loop_may_go_on = threading.Event()

    def handler() -> None:
        try:
            bridge.run(store.tap, (0, 0), timeout=0.05)
        except CallTimeoutError as error:
            errors.append(error)
        finally:
            loop_may_go_on.set()

    thread = threading.Thread(target=handler)
    thread.start()
    loop_may_go_on.wait()  # the loop is blocked: the call cannot start in time
    thread.join()
    await asyncio.wrap_future(bridge.submit(lambda: None))  # runs after the dropped call
    assert "dropped before it ran" in str(errors[0])
    assert isinstance(errors[0], TimeoutError)
    assert store.state == ()
    await store.close()


async def test_a_timeout_leaves_a_running_call_running() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    gate = asyncio.Event()
    tapped = asyncio.Event()
    store.subscribe(lambda state: tapped.set())

    async def slow_tap() -> int:
        await gate.wait()
        return store.tap((0, 0))

    with pytest.raises(CallTimeoutError, match="still running"):
        await asyncio.to_thread(lambda: bridge.run(slow_tap, timeout=0.05))
    gate.set()
    await tapped.wait()
    assert store.state == ((0, 0),)
    await store.close()


async def test_an_error_reaches_the_caller_of_run_and_on_error_for_call() -> None:
    store = Taps()
    bridge = ThreadBridge(store)

    def broken() -> None:
        raise ValueError("bug in the action")

    with pytest.raises(ValueError, match="bug in the action"):
        await asyncio.to_thread(lambda: bridge.run(broken, timeout=30))
    await asyncio.to_thread(bridge.call, broken)
    await asyncio.wrap_future(bridge.submit(lambda: None))
    assert [str(error) for error in store.errors] == ["bug in the action"]
    await store.close()


async def test_subscribers_get_each_state_on_the_loop_thread_until_they_stop() -> None:
    store = Taps()
    bridge = ThreadBridge(store)
    got: list[tuple[int, object]] = []
    stop = await asyncio.to_thread(
        bridge.subscribe, lambda s: got.append((threading.get_ident(), s))
    )
    store.tap((0, 0))
    await asyncio.to_thread(stop)
    store.tap((0, 1))
    assert got == [(threading.get_ident(), ((0, 0),))]
    await store.close()


async def test_a_bridge_needs_a_running_loop() -> None:
    def make() -> None:
        ThreadBridge(Store(0))

    with pytest.raises(OptisyncError, match="event loop"):
        await asyncio.to_thread(make)


async def test_the_threaded_todo_example_converges_with_a_second_device(tmp_path: Path) -> None:
    server = SyncServer(SqliteStorage(str(tmp_path / "server.sqlite3")))
    async with server.run(port=0) as url:
        arguments = ["--url", url, "--storage", str(tmp_path / "threaded.sqlite3")]
        shown = await asyncio.to_thread(threaded_todo.main, [*arguments, "--handlers", "8"])
        assert len(shown.titles) == 8 * 5
        assert all(shown.done.values())
        assert len(shown.done) == 8 * 5
        async with open_todos(url, str(tmp_path / "second.sqlite3")) as second:
            await second.caught_up()  # the server has its changes, it has every push
            assert second.store.state == shown


async def test_a_closed_bridge_leaves_no_listener_on_the_store() -> None:
    class Counted(Taps):
        live = 0

        def subscribe(self, listener: Callable[[Taps.State], object]) -> Callable[[], None]:
            stop = super().subscribe(listener)
            self.live += 1

            def unsubscribe() -> None:
                self.live -= 1
                stop()

            return unsubscribe

    store = Counted()
    bridge = ThreadBridge(store)
    await asyncio.wrap_future(bridge.submit(store.tap, (0, 0)))  # the bridge is watching
    assert store.live > 0
    await bridge.close()
    assert store.live == 0
    store.tap((0, 1))  # the store lives on, telling no bridge
    await store.close()
