"""Edges an adversarial run found, and the small contract gaps a new user met."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import attrs
import pytest
from fakes import KEY, Doc, DocStore, FakeServer, own_tasks

from optisync import (
    PushMetadata,
    PushOutcome,
    StateError,
    Store,
    StoreClosedError,
    WrongThreadError,
)

# -- inform_server_revision and revision ranges ---------------------------------


async def test_inform_server_revision_twice_fails_the_request(store: DocStore) -> None:
    async def send(value: bool, local: int, device: int, inform: Any) -> bool:
        inform(1)
        inform(2)
        return value

    with pytest.raises(StateError, match="called twice"):
        await store.toggle(send_value_to_server=send)
    assert isinstance(store.finished[0], StateError)
    assert store.server_revision(KEY) == 1  # the first answer was taken, the second refused
    assert not store.is_syncing(KEY)


@pytest.mark.parametrize("revision", [-1, -5])
async def test_inform_server_revision_refuses_a_negative_revision(
    store: DocStore, revision: int
) -> None:
    async def send(value: bool, local: int, device: int, inform: Any) -> bool:
        inform(revision)
        return value

    with pytest.raises(ValueError, match=r"must be >= 0"):
        await store.toggle(send_value_to_server=send)
    assert store.server_revision(KEY) == -1


@pytest.mark.parametrize("field", ["server_revision", "local_revision", "device_id"])
def test_push_metadata_refuses_negative_numbers(field: str) -> None:
    values = {"server_revision": 1, "local_revision": 1, "device_id": 1, field: -1}
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        PushMetadata(**values)


def test_push_metadata_accepts_zero_for_a_change_no_device_made() -> None:
    assert PushMetadata(server_revision=0, local_revision=0, device_id=0).device_id == 0


def test_a_negative_device_id_is_refused() -> None:
    with pytest.raises(ValueError, match="device_id must be >= 0"):
        Store(0, device_id=-1)


async def test_a_stored_revision_of_minus_one_means_unknown(store: DocStore) -> None:
    assert store.push(True, server_revision=0) is PushOutcome.APPLIED  # -1 < 0: newer


# -- listeners that raise BaseException -------------------------------------------


def test_a_listener_raising_cancelled_error_is_reported_and_the_others_still_run() -> None:
    errors: list[BaseException] = []

    class Reporting(Store[int]):
        def on_error(self, error: BaseException) -> None:
            errors.append(error)

    store = Reporting(0)
    seen: list[tuple[str, int]] = []

    def cancelled_future_reader(state: int) -> None:
        # What future.result() on a cancelled future raises: a bug in this
        # listener, not a cancellation of anything.
        raise asyncio.CancelledError

    def emits_again(state: int) -> None:
        seen.append(("emitter", state))
        if state == 1:
            store.emit(2)  # queued behind the state being delivered

    store.subscribe(emits_again)
    store.subscribe(cancelled_future_reader)
    store.subscribe(lambda state: seen.append(("last", state)))
    store.emit(1)
    assert seen == [("emitter", 1), ("last", 1), ("emitter", 2), ("last", 2)]
    assert [type(error) for error in errors] == [asyncio.CancelledError] * 2
    store.emit(3)  # the store still delivers
    assert seen[-1] == ("last", 3)


def test_a_keyboard_interrupt_in_a_listener_reaches_the_others_then_propagates() -> None:
    store = Store(0)
    seen: list[tuple[str, int]] = []

    def interrupted(state: int) -> None:
        seen.append(("interrupted", state))
        if state == 1:
            store.emit(2)
            raise KeyboardInterrupt

    store.subscribe(interrupted)
    store.subscribe(lambda state: seen.append(("last", state)))
    with pytest.raises(KeyboardInterrupt):
        store.emit(1)
    assert seen == [("interrupted", 1), ("last", 1), ("interrupted", 2), ("last", 2)]
    assert store.state == 2


# -- threads -------------------------------------------------------------------------


def _in_thread(function: Any) -> BaseException | None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            function()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return errors[0] if errors else None


async def test_emit_from_another_thread_is_refused_and_changes_nothing() -> None:
    async with Store(0) as store:
        seen: list[int] = []
        store.subscribe(seen.append)
        store.emit(1)  # binds the store to this loop
        error = _in_thread(lambda: store.emit(2))
        assert isinstance(error, WrongThreadError)
        assert store.state == 1
        assert seen == [1]


def _meta(revision: int) -> PushMetadata:
    return PushMetadata(server_revision=revision, local_revision=1, device_id=2)


def _push_from(store: Store[int], revision: int) -> Any:
    return store.server_push_threadsafe(
        key="n",
        push_metadata=_meta(revision),
        apply_server_push_to_state=lambda s, k, r: r,
        get_server_revision_from_state=lambda key: -1,
    )


def test_threadsafe_pushes_are_all_resolved_when_the_loop_shuts_down() -> None:
    outcomes: list[object] = []
    started = threading.Event()
    store_box: list[Store[int]] = []

    def pusher() -> None:
        started.wait()
        store = store_box[0]
        for revision in range(1, 100_000):
            future = _push_from(store, revision)
            try:
                # A guard against a hang, not a timing check: an unresolved
                # future is the bug this test is about.
                outcomes.append(future.result(timeout=30))
            except StoreClosedError as error:
                outcomes.append(error)
                return

    async def main() -> None:
        store = Store(0)  # never closed: asyncio.run's shutdown ends it
        store.emit(1)  # bound to this loop
        reached = asyncio.Event()
        store.subscribe(lambda state: reached.set() if state >= 50 else None)
        store_box.append(store)
        started.set()
        await reached.wait()

    thread = threading.Thread(target=pusher)
    thread.start()
    asyncio.run(main())
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(outcomes[-1], StoreClosedError)
    assert PushOutcome.APPLIED in outcomes


async def test_a_threadsafe_push_after_close_fails_at_once() -> None:
    store = Store(0)
    store.emit(1)
    await store.close()
    future = _push_from(store, 1)
    with pytest.raises(StoreClosedError):
        future.result(timeout=0)


def test_a_threadsafe_push_to_a_closed_loop_fails_at_once() -> None:
    box: list[Store[int]] = []

    async def main() -> None:
        store = Store(0)
        store.emit(1)
        box.append(store)

    asyncio.run(main())
    future = _push_from(box[0], 1)
    with pytest.raises(StateError):
        future.result(timeout=0)


# -- close and a send that swallows cancellation ---------------------------------------


async def test_close_with_a_timeout_reports_a_sync_that_ignores_cancellation(
    store: DocStore,
) -> None:
    gate = asyncio.Event()

    async def stubborn(value: bool, local: int, device: int, inform: Any) -> bool:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await gate.wait()  # swallows the cancellation and goes on
        inform(1)
        return value

    store.toggle(send_value_to_server=stubborn)
    await asyncio.sleep(0)
    await store.close(timeout=0.01)  # bounded wait: the assertion is on what it reports
    assert store.is_closed
    assert len(store.errors) == 1
    assert "did not stop when close() cancelled it" in str(store.errors[0])
    gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert own_tasks() == set()


# -- forgetting idle keys -----------------------------------------------------------------


async def test_forget_idle_keys_frees_idle_keys_and_keeps_syncing_ones(
    store: DocStore, server: FakeServer
) -> None:
    for item in range(5):
        await store.sync_liked(True, key=("idle", item), send_value_to_server=_instant)
    busy = store.toggle()
    await server.request(1)
    assert store.forget_idle_keys() == 5
    assert store.local_revision(("idle", 0)) == 0
    assert store.is_syncing(KEY)
    assert store.forget_idle_keys([KEY]) == 0  # syncing: kept
    server.requests[0].respond(True, 1)
    await busy
    assert store.forget_idle_keys([KEY, "never seen"]) == 1


async def _instant(value: Any) -> Any:
    return value


# -- on_finish that taps the same key ------------------------------------------------------


async def test_a_state_on_finish_returns_does_not_overwrite_a_tap_it_made(
    store: DocStore, server: FakeServer
) -> None:
    def reload_and_tap(error: BaseException | None) -> Doc:
        store.set_liked(True, on_finish=None)  # the user taps again meanwhile
        return Doc(liked=False, revision=9)  # a reload, read before that tap

    done = store.set_liked(True, on_finish=reload_and_tap)
    (await server.request(1)).fail(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert store.state.liked is True  # the tap is on screen...
    (await server.request(2)).respond(True, server_revision=10)
    assert server.requests[1].value is True  # ...and on its way to the server
    for _ in range(5):
        await asyncio.sleep(0)
    assert store.state == attrs.evolve(Doc(), liked=True)
