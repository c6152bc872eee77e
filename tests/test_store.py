"""Store: state, emit, subscribers, streams, hooks and closing."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest
from fakes import own_tasks

from optisync import StateError, Store, StoreClosedError


class Recording(Store[int]):
    def __init__(self, initial: int = 0) -> None:
        super().__init__(initial, device_id=1)
        self.changes: list[tuple[int, int]] = []
        self.errors: list[BaseException] = []

    def on_change(self, current: int, next: int) -> None:  # noqa: A002
        self.changes.append((current, next))

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)


def test_initial_state_and_properties() -> None:
    store = Store("start", device_id=5)
    assert store.state == "start"
    assert store.device_id == 5
    assert store.is_closed is False


def test_emit_replaces_the_state_and_tells_listeners_in_order() -> None:
    store = Recording()
    seen: list[tuple[str, int]] = []
    store.subscribe(lambda s: seen.append(("a", s)))
    store.subscribe(lambda s: seen.append(("b", s)))
    store.emit(1)
    store.emit(2)
    assert store.state == 2
    assert seen == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_emitting_an_equal_state_tells_no_one() -> None:
    store = Recording(3)
    seen: list[int] = []
    store.subscribe(seen.append)
    store.emit(3)
    assert seen == []
    assert store.changes == []


def test_on_change_sees_current_and_next_before_the_state_changes() -> None:
    store = Recording()
    during: list[int] = []
    original = store.on_change

    def on_change(current: int, next: int) -> None:  # noqa: A002
        during.append(store.state)
        original(current, next)

    store.on_change = on_change  # type: ignore[method-assign]
    store.emit(4)
    assert store.changes == [(0, 4)]
    assert during == [0]


def test_a_raising_listener_does_not_stop_the_emit_or_the_others() -> None:
    store = Recording()
    seen: list[int] = []
    error = ValueError("listener bug")

    def broken(state: int) -> None:
        raise error

    store.subscribe(broken)
    store.subscribe(seen.append)
    store.emit(1)
    assert store.state == 1
    assert seen == [1]
    assert store.errors == [error]


def test_the_default_error_hook_logs_on_the_optisync_logger(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = Store(0)

    def broken(state: int) -> None:
        raise ValueError("listener bug")

    store.subscribe(broken)
    with caplog.at_level(logging.ERROR, logger="optisync"):
        store.emit(1)
    assert [record.name for record in caplog.records] == ["optisync"]
    assert caplog.records[0].exc_info is not None
    assert "listener bug" in str(caplog.records[0].exc_info[1])


def test_an_error_hook_that_raises_is_logged_not_propagated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Store[int]):
        def on_error(self, error: BaseException) -> None:
            raise RuntimeError("hook bug")

    store = Broken(0)
    store.subscribe(lambda s: 1 / 0)
    with caplog.at_level(logging.ERROR, logger="optisync"):
        store.emit(1)
    assert store.state == 1
    assert "on_error raised" in caplog.text


def test_unsubscribe_stops_the_listener_and_is_idempotent() -> None:
    store = Store(0)
    seen: list[int] = []
    unsubscribe = store.subscribe(seen.append)
    store.emit(1)
    unsubscribe()
    unsubscribe()
    store.emit(2)
    assert seen == [1]


def test_a_listener_added_during_an_emit_starts_with_the_next_one() -> None:
    store = Store(0)
    late: list[int] = []

    def adder(state: int) -> None:
        if state == 1:
            store.subscribe(late.append)

    store.subscribe(adder)
    store.emit(1)
    store.emit(2)
    assert late == [2]


def test_subscribe_refuses_a_non_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        Store(0).subscribe(42)  # type: ignore[arg-type]


async def test_emit_after_close_raises() -> None:
    store = Store(0)
    await store.close()
    assert store.is_closed
    with pytest.raises(StoreClosedError, match="closed") as caught:
        store.emit(1)
    assert isinstance(caught.value, RuntimeError)
    assert isinstance(caught.value, StateError)


async def test_close_twice_is_harmless() -> None:
    store = Store(0)
    await store.close()
    await store.close()
    assert store.is_closed


async def test_async_with_closes_the_store() -> None:
    async with Store(0) as store:
        store.emit(1)
    assert store.is_closed


# -- streams -----------------------------------------------------------------


async def test_stream_yields_every_state_emitted_after_it_was_made() -> None:
    store = Store(0)
    store.emit(1)
    states = store.stream()
    store.emit(2)
    store.emit(3)
    await store.close()
    assert [state async for state in states] == [2, 3]


async def test_stream_waits_for_the_next_state() -> None:
    store = Store(0)
    states = store.stream()
    reader = asyncio.create_task(anext(states))
    await asyncio.sleep(0)
    assert not reader.done()
    store.emit(7)
    assert await reader == 7
    await store.close()


async def test_a_slow_reader_does_not_slow_emit_and_misses_nothing() -> None:
    store = Store(0)
    states = store.stream()
    for value in range(1, 10_001):
        store.emit(value)  # nobody reads meanwhile: emit never waits
    await store.close()
    received = [state async for state in states]
    assert received == list(range(1, 10_001))


async def test_stream_ends_when_the_store_closes() -> None:
    store = Store(0)
    states = store.stream()
    reader = asyncio.create_task(anext(states, "ended"))
    await asyncio.sleep(0)
    await store.close()
    assert await reader == "ended"


async def test_stream_of_a_closed_store_is_empty() -> None:
    store = Store(0)
    await store.close()
    assert [state async for state in store.stream()] == []


async def test_aclose_unsubscribes_the_stream() -> None:
    store = Store(0)
    states = store.stream()
    store.emit(1)
    await states.aclose()
    store.emit(2)
    assert [state async for state in states] == [1]
    assert store._Store__listeners == {}  # type: ignore[attr-defined]  # no leak


async def test_a_dropped_stream_unsubscribes_itself() -> None:
    store = Store(0)
    states = store.stream()
    store.emit(1)
    async for _ in states:
        break
    del states
    gc.collect()
    assert store._Store__listeners == {}  # type: ignore[attr-defined]  # no leak
    store.emit(2)


async def test_two_streams_each_get_every_state() -> None:
    store = Store(0)
    first, second = store.stream(), store.stream()
    store.emit(1)
    store.emit(2)
    await store.close()
    assert [s async for s in first] == [1, 2]
    assert [s async for s in second] == [1, 2]


async def test_close_leaves_no_task_behind_with_readers_waiting() -> None:
    store = Store(0)
    readers = [asyncio.create_task(_drain(store)) for _ in range(3)]
    await asyncio.sleep(0)
    store.emit(1)
    await store.close()
    results = await asyncio.gather(*readers)
    assert results == [[1], [1], [1]]
    assert own_tasks() == set()


async def _drain(store: Store[Any]) -> list[Any]:
    return [state async for state in store.stream()]
