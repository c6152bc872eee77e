"""optimistic_sync_with_push: the seed's flows and every numbered rule of its contract."""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import attrs
import pytest
from fakes import KEY, Doc, DocStore, FakeServer, own_tasks, settle

import optisync
from optisync import (
    FollowUpLimitError,
    MissingServerRevisionError,
    PushMetadata,
    PushOutcome,
    StateError,
    StoreClosedError,
    WrongThreadError,
)

# -- the seed's two flows ------------------------------------------------------


async def test_seed_flow_three_taps_during_a_request_send_two_requests(
    store: DocStore, server: FakeServer
) -> None:
    first = store.toggle()  # LIKE
    assert (store.state.liked, store.local_revision(KEY)) == (True, 1)
    request1 = await server.request(1)
    store.toggle()  # UNLIKE
    assert (store.state.liked, store.local_revision(KEY)) == (False, 2)
    store.toggle()  # LIKE
    assert (store.state.liked, store.local_revision(KEY)) == (True, 3)
    assert server.log == [(True, 1)]

    request1.respond(True, server_revision=1)
    request2 = await server.request(2)
    assert server.log == [(True, 1), (True, 3)]  # follow-up: the state's value, revision 3
    request2.respond(True, server_revision=2)
    await first

    assert server.log == [(True, 1), (True, 3)]
    assert store.state == Doc(liked=True, revision=-1)
    assert store.server_revision(KEY) == 2
    assert not store.is_syncing(KEY)
    assert store.finished == [None]


async def test_seed_flow_push_during_a_request_prevents_the_follow_up(
    store: DocStore, server: FakeServer
) -> None:
    first = store.toggle()  # LIKE
    request1 = await server.request(1)
    store.toggle()  # UNLIKE, local revision 2
    assert store.push(False, server_revision=2) is PushOutcome.APPLIED
    request1.respond(True, server_revision=1)
    await first

    assert server.log == [(True, 1)]
    assert store.state == Doc(liked=False, revision=2)  # the older response was not applied
    assert store.server_revision(KEY) == 2
    assert store.local_revision(KEY) == 2
    assert store.finished == [None]


# -- rule 1: the optimistic update happens before the call returns -------------


async def test_optimistic_value_is_applied_before_the_call_returns_even_unawaited(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()
    assert store.state.liked is True
    assert store.local_revision(KEY) == 1
    await server.request(1)


async def test_calls_on_a_locked_key_still_apply_and_count(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()
    for expected_revision in range(2, 7):
        store.toggle()
        assert store.local_revision(KEY) == expected_revision
    assert store.state.liked is False  # six toggles
    (await server.request(1)).respond(True, 1)
    (await server.request(2)).respond(False, 2)
    await settle(store)
    assert server.log == [(True, 1), (False, 6)]


# -- rule 2: one request in flight, owned tasks, completed awaitables ---------


async def test_a_call_on_a_locked_key_returns_an_already_complete_awaitable(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()
    coalesced = store.toggle()
    await coalesced  # completes although request 1 is still unanswered
    assert not server.requests[0].reply.done() if server.requests else True
    assert store.is_syncing(KEY)
    (await server.request(1)).respond(True, 1)
    (await server.request(2)).respond(False, 2)
    await settle(store)


async def test_a_dropped_result_still_syncs_without_warning(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()  # result dropped at once
    gc.collect()
    request = await server.request(1)
    request.respond(True, 1)
    await settle(store)
    assert store.finished == [None]
    assert store.server_revision(KEY) == 1


async def test_only_one_request_is_in_flight_per_key(store: DocStore, server: FakeServer) -> None:
    for _ in range(50):
        store.toggle()
    await server.request(1)
    for _ in range(10):
        await asyncio.sleep(0)
    assert len(server.requests) == 1


async def test_different_keys_sync_independently(store: DocStore, server: FakeServer) -> None:
    store.toggle()
    store.toggle(key="other")
    first, second = await server.request(1), await server.request(2)
    assert {first.local_revision, second.local_revision} == {1}
    assert store.is_syncing(KEY)
    assert store.is_syncing("other")
    first.respond(True, 1)
    second.respond(True, 1)
    await settle(store, KEY)
    await settle(store, "other")


# -- rule 3: the follow-up decision -------------------------------------------


async def test_follow_up_is_sent_even_when_the_value_equals_the_value_sent(
    store: DocStore, server: FakeServer
) -> None:
    store.set_liked(True)
    request1 = await server.request(1)
    store.set_liked(True)  # same value, newer local revision
    request1.respond(True, 1)
    (await server.request(2)).respond(True, 2)
    await settle(store)
    assert server.log == [(True, 1), (True, 2)]


async def test_no_follow_up_when_no_tap_happened_during_the_request(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle()
    (await server.request(1)).respond(True, 1)
    await done
    assert server.log == [(True, 1)]


async def test_a_tap_after_a_push_brings_the_follow_up_back(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()  # True, rev 1
    request1 = await server.request(1)
    store.push(False, server_revision=5)
    store.toggle()  # the user taps after the push: True, local revision 2
    request1.respond(True, 4)
    request2 = await server.request(2)
    assert server.log == [(True, 1), (True, 2)]
    request2.respond(True, 6)
    await settle(store)
    assert store.state.liked is True
    assert store.server_revision(KEY) == 6


async def test_follow_ups_chain_while_taps_keep_coming(store: DocStore, server: FakeServer) -> None:
    store.toggle()
    for number in range(1, 5):
        request = await server.request(number)
        store.toggle()
        request.respond(request.value, number)
    (await server.request(5)).respond(store.state.liked, 5)
    await settle(store)
    assert [revision for _, revision in server.log] == [1, 2, 3, 4, 5]
    assert store.finished == [None]


# -- rule 4: applying the response when stable --------------------------------


async def test_response_is_applied_when_stable_and_newest(
    store: DocStore, server: FakeServer
) -> None:
    done = store.set_liked(True)
    (await server.request(1)).respond(False, 3)  # the server decided otherwise
    await done
    assert store.state.liked is False


async def test_response_older_than_a_known_push_is_not_applied(
    store: DocStore, server: FakeServer
) -> None:
    done = store.set_liked(True)
    request = await server.request(1)
    store.push(True, server_revision=9)  # newer than the response's 3
    request.respond(False, 3)
    await done
    assert store.state.liked is True


async def test_response_older_than_the_state_revision_is_not_applied(
    server: FakeServer,
) -> None:
    async with DocStore(server) as store:
        store.emit(Doc(liked=False, revision=10))  # e.g. restored from disk
        done = store.set_liked(True)
        (await server.request(1)).respond(False, 4)
        await done
        assert store.state.liked is True


async def test_response_equal_to_the_newest_revision_is_applied(
    store: DocStore, server: FakeServer
) -> None:
    done = store.set_liked(True)
    request = await server.request(1)
    # a self-echo of this very request arrives before its response
    assert store.push(True, server_revision=3, local_revision=1, device_id=1) is PushOutcome.APPLIED
    request.respond(True, 3)
    await done
    assert store.state == Doc(liked=True, revision=3)


async def test_a_none_response_is_never_applied(store: DocStore, server: FakeServer) -> None:
    applied: list[Any] = []
    done = store.set_liked(True, apply_server_response_to_state=lambda s, v: applied.append(v) or s)
    (await server.request(1)).respond(None, 1)
    await done
    assert applied == []
    assert store.state.liked is True


# -- rule 5: inform_server_revision --------------------------------------------


async def test_send_without_inform_fails_with_an_error_naming_inform_server_revision(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle()
    (await server.request(1)).respond(True, server_revision=None)
    with pytest.raises(RuntimeError, match=r"inform_server_revision\(\)") as caught:
        await done
    assert isinstance(caught.value, MissingServerRevisionError)
    assert not store.is_syncing(KEY)
    assert store.finished == [caught.value]


@pytest.mark.parametrize("bad", ["3", 3.0, None, True, False])
async def test_inform_rejects_a_revision_that_is_not_an_int(store: DocStore, bad: Any) -> None:
    seen: list[BaseException] = []

    async def send(value: bool, local: int, device: int, inform: Any) -> bool:
        try:
            inform(bad)
        except TypeError as error:
            seen.append(error)
        inform(1)
        return value

    await store.toggle(send_value_to_server=send)
    assert len(seen) == 1
    assert "int" in str(seen[0])
    assert store.server_revision(KEY) == 1


async def test_inform_after_the_request_finished_is_an_error(store: DocStore) -> None:
    saved: list[Any] = []

    async def send(value: bool, local: int, device: int, inform: Any) -> bool:
        inform(1)
        saved.append(inform)
        return value

    await store.toggle(send_value_to_server=send)
    with pytest.raises(StateError, match="after its request had finished"):
        saved[0](2)
    assert store.server_revision(KEY) == 1


async def test_send_receives_value_local_revision_and_device_id(server: FakeServer) -> None:
    async with DocStore(server, device_id=77) as store:
        store.toggle()
        request = await server.request(1)
        assert (request.value, request.local_revision, request.device_id) == (True, 1, 77)
        request.respond(True, 1)
        await settle(store)


# -- rule 6: on_finish -----------------------------------------------------------


async def test_on_finish_runs_once_after_the_lock_is_released(
    store: DocStore, server: FakeServer
) -> None:
    syncing_during_finish: list[bool] = []

    def on_finish(error: BaseException | None) -> None:
        syncing_during_finish.append(store.is_syncing(KEY))

    done = store.toggle(on_finish=on_finish)
    request1 = await server.request(1)
    store.toggle()
    request1.respond(True, 1)
    (await server.request(2)).respond(False, 2)
    await done
    assert syncing_during_finish == [False]


async def test_state_returned_by_on_finish_is_emitted(store: DocStore, server: FakeServer) -> None:
    done = store.toggle(on_finish=lambda error: Doc(liked=False, revision=42))
    (await server.request(1)).respond(True, 1)
    await done
    assert store.state == Doc(liked=False, revision=42)


async def test_async_on_finish_is_awaited_and_its_state_emitted(
    store: DocStore, server: FakeServer
) -> None:
    async def reload(error: BaseException | None) -> Doc:
        await asyncio.sleep(0)
        return Doc(liked=error is not None, revision=7)

    done = store.toggle(on_finish=reload)
    (await server.request(1)).fail(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert store.state == Doc(liked=True, revision=7)


async def test_failed_request_calls_on_finish_then_raises_to_the_caller(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle()
    request1 = await server.request(1)
    store.toggle()  # a tap that would need a follow-up: the failure ends the cycle
    error = ConnectionError("offline")
    request1.fail(error)
    with pytest.raises(ConnectionError) as caught:
        await done
    assert caught.value is error
    assert store.finished == [error]
    assert not store.is_syncing(KEY)
    assert len(server.requests) == 1


async def test_an_error_nobody_awaits_goes_to_the_error_hook(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()
    error = ConnectionError("offline")
    (await server.request(1)).fail(error)
    await settle(store)
    assert store.finished == [error]
    assert store.errors == [error]


async def test_an_awaited_error_does_not_also_go_to_the_error_hook(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle()
    (await server.request(1)).fail(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    await settle(store)
    assert store.errors == []


async def test_on_finish_error_replaces_the_request_error_and_runs_once(
    store: DocStore, server: FakeServer
) -> None:
    calls: list[BaseException | None] = []

    def on_finish(error: BaseException | None) -> None:
        calls.append(error)
        raise ValueError("reload failed")

    done = store.toggle(on_finish=on_finish)
    (await server.request(1)).fail(ConnectionError("offline"))
    with pytest.raises(ValueError, match="reload failed") as caught:
        await done
    assert isinstance(caught.value.__context__, ConnectionError)
    assert len(calls) == 1
    assert not store.is_syncing(KEY)


async def test_on_finish_error_after_success_reaches_the_caller_once(
    store: DocStore, server: FakeServer
) -> None:
    calls: list[BaseException | None] = []

    def on_finish(error: BaseException | None) -> None:
        calls.append(error)
        raise ValueError("finish bug")

    done = store.toggle(on_finish=on_finish)
    (await server.request(1)).respond(True, 1)
    with pytest.raises(ValueError, match="finish bug"):
        await done
    assert calls == [None]


@pytest.mark.parametrize(
    "callback",
    ["get_value_from_state", "get_server_revision_from_state", "apply_server_response_to_state"],
)
async def test_a_raising_callback_in_the_cycle_unlocks_and_reaches_on_finish(
    store: DocStore, server: FakeServer, callback: str
) -> None:
    error = LookupError(callback)
    calls = 0

    def broken(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if callback == "get_server_revision_from_state" and calls == 1:
            return -1  # read when the call takes the lock, to seed the revision
        raise error

    done = store.toggle(**{callback: broken})
    request1 = await server.request(1)
    if callback == "get_value_from_state":
        store.toggle()  # it is read for the follow-up
    request1.respond(True, 1)
    with pytest.raises(LookupError) as caught:
        await done
    assert caught.value is error
    assert store.finished == [error]
    assert not store.is_syncing(KEY)


async def test_a_send_that_raises_before_awaiting_unlocks_the_key(store: DocStore) -> None:
    def send(*args: Any) -> Any:
        raise OSError("no route")

    with pytest.raises(OSError, match="no route"):
        await store.toggle(send_value_to_server=send)
    assert not store.is_syncing(KEY)
    assert len(store.finished) == 1


# -- rule 7: the follow-up limit -------------------------------------------------


async def test_follow_up_limit_raises_unlocks_and_runs_on_finish(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle(max_follow_up_requests=1)
    for number in (1, 2):
        request = await server.request(number)
        store.toggle()
        request.respond(request.value, number)
    with pytest.raises(FollowUpLimitError, match="Too many follow-up requests") as caught:
        await done
    assert isinstance(caught.value, RuntimeError)
    assert len(server.requests) == 2
    assert not store.is_syncing(KEY)
    assert store.finished == [caught.value]
    # The key is usable again at once.
    again = store.toggle()
    (await server.request(3)).respond(store.state.liked, 3)
    await again


async def test_zero_follow_ups_allows_exactly_one_request(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle(max_follow_up_requests=0)
    request = await server.request(1)
    store.toggle()
    request.respond(True, 1)
    with pytest.raises(FollowUpLimitError):
        await done
    assert len(server.requests) == 1


async def test_minus_one_means_no_follow_up_limit(store: DocStore, server: FakeServer) -> None:
    done = store.toggle(max_follow_up_requests=-1)
    for number in range(1, 30):
        request = await server.request(number)
        store.toggle()
        request.respond(request.value, number)
    (await server.request(30)).respond(store.state.liked, 30)
    await done
    assert len(server.requests) == 30


@pytest.mark.parametrize(("bad", "error"), [(-2, ValueError), (1.5, TypeError), (True, TypeError)])
async def test_a_bad_limit_is_refused_before_anything_changes(
    store: DocStore, bad: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="max_follow_up_requests"):
        store.toggle(max_follow_up_requests=bad)
    assert store.state == Doc()
    assert store.local_revision(KEY) == 0


# -- rule 8: cancellation and close ----------------------------------------------


async def test_cancelling_the_awaiting_coroutine_does_not_cancel_the_sync(
    store: DocStore, server: FakeServer
) -> None:
    waiter = asyncio.create_task(_await(store.toggle()))
    request = await server.request(1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert store.is_syncing(KEY)
    request.respond(True, 1)
    await settle(store)
    assert store.finished == [None]
    assert store.server_revision(KEY) == 1


async def test_cancelled_awaiter_leaves_a_later_error_to_the_error_hook(
    store: DocStore, server: FakeServer
) -> None:
    waiter = asyncio.create_task(_await(store.toggle()))
    request = await server.request(1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    error = ConnectionError("offline")
    request.fail(error)
    await settle(store)
    assert store.errors == [error]


async def test_close_cancels_the_sync_frees_the_key_and_leaves_no_task(
    server: FakeServer,
) -> None:
    store = DocStore(server)
    done = store.toggle()
    await server.request(1)
    await store.close()
    assert not store.is_syncing(KEY)
    assert own_tasks() == set()
    assert store.finished == []  # the cycle did not finish: on_finish is not called
    with pytest.raises(StoreClosedError, match="closed before the sync"):
        await done
    assert store.errors == []


async def test_close_right_after_a_tap_frees_the_key_before_any_request(
    server: FakeServer,
) -> None:
    store = DocStore(server)
    done = store.toggle()  # the cycle's task has not run yet
    await store.close()
    assert not store.is_syncing(KEY)
    assert server.requests == []
    assert own_tasks() == set()
    with pytest.raises(StoreClosedError):
        await done


async def test_an_error_taken_by_a_caller_in_the_same_loop_turn_is_not_reported_again(
    store: DocStore,
) -> None:
    async def send(*args: Any) -> None:
        raise ConnectionError("refused at once")

    done = store.toggle(send_value_to_server=send)
    caller = asyncio.create_task(_await(done))
    with pytest.raises(ConnectionError):
        await caller
    await settle(store)
    assert store.errors == []


async def test_close_while_on_finish_awaits_leaves_no_task(server: FakeServer) -> None:
    store = DocStore(server)
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def on_finish(error: BaseException | None) -> Doc:
        entered.set()
        await gate.wait()
        return Doc(liked=True, revision=1)

    store.toggle(on_finish=on_finish)
    (await server.request(1)).respond(True, 1)
    await entered.wait()
    await store.close()
    assert own_tasks() == set()
    assert not store.is_syncing(KEY)


async def test_calls_after_close_are_refused(server: FakeServer) -> None:
    store = DocStore(server)
    await store.close()
    with pytest.raises(StoreClosedError):
        store.toggle()
    assert store.local_revision(KEY) == 0


async def test_close_from_inside_a_sync_does_not_deadlock(server: FakeServer) -> None:
    store = DocStore(server)

    async def on_finish(error: BaseException | None) -> None:
        await store.close()

    done = store.toggle(on_finish=on_finish)
    (await server.request(1)).respond(True, 1)
    await done
    assert store.is_closed
    assert own_tasks() == set()


# -- rule 9: bad keys and callbacks ----------------------------------------------


async def test_an_unhashable_key_is_a_type_error_before_anything_is_applied(
    store: DocStore,
) -> None:
    with pytest.raises(TypeError, match="hashable"):
        store.toggle(key=["not", "hashable"])
    assert store.state == Doc()
    assert own_tasks() == set()


async def test_a_non_callable_callback_is_a_type_error_at_call_time(store: DocStore) -> None:
    with pytest.raises(TypeError, match="send_value_to_server must be callable"):
        store.toggle(send_value_to_server=None)
    assert store.state == Doc()


async def test_value_to_apply_raising_changes_nothing_and_starts_nothing(store: DocStore) -> None:
    def broken() -> bool:
        raise KeyError("no such item")

    with pytest.raises(KeyError):
        store.toggle(value_to_apply=broken)
    assert store.state == Doc()
    assert store.local_revision(KEY) == 0
    assert not store.is_syncing(KEY)
    assert store.finished == []


async def test_apply_optimistic_raising_changes_nothing(store: DocStore) -> None:
    def broken(state: Doc, value: bool) -> Doc:
        raise ValueError("bad state")

    with pytest.raises(ValueError, match="bad state"):
        store.toggle(apply_optimistic_value_to_state=broken)
    assert store.local_revision(KEY) == 0
    assert not store.is_syncing(KEY)


def test_a_first_call_outside_a_running_loop_is_refused_before_applying() -> None:
    store = DocStore(FakeServer())
    with pytest.raises(StateError, match="running event loop"):
        store.toggle()
    assert store.state == Doc()
    assert store.local_revision(KEY) == 0


async def test_a_listener_tapping_the_same_key_is_coalesced(
    store: DocStore, server: FakeServer
) -> None:
    tapped: list[bool] = []

    def listener(state: Doc) -> None:
        if not tapped:
            tapped.append(True)
            store.toggle()  # re-entrant tap during the first emit

    store.subscribe(listener)
    store.toggle()
    assert store.local_revision(KEY) == 2
    request1 = await server.request(1)
    request1.respond(True, 1)
    (await server.request(2)).respond(False, 2)
    await settle(store)
    assert server.log == [(True, 1), (False, 2)]


# -- server_push -------------------------------------------------------------------


async def test_a_push_not_newer_than_the_known_revision_is_ignored(store: DocStore) -> None:
    assert store.push(True, server_revision=5) is PushOutcome.APPLIED
    assert store.push(False, server_revision=5) is PushOutcome.STALE  # duplicate
    assert store.push(False, server_revision=3) is PushOutcome.STALE  # out of order
    assert store.state == Doc(liked=True, revision=5)


async def test_a_stale_push_still_seeds_the_revision_from_the_state(store: DocStore) -> None:
    store.emit(Doc(liked=True, revision=8))  # restored from disk
    assert store.server_revision(KEY) == -1
    assert store.push(False, server_revision=4) is PushOutcome.STALE
    assert store.server_revision(KEY) == 8
    assert store.state.liked is True


async def test_the_known_revision_is_the_max_of_the_store_and_the_state(store: DocStore) -> None:
    store.push(True, server_revision=6)
    store.emit(Doc(liked=True, revision=2))  # the app lost its stored revision
    assert store.push(False, server_revision=5) is PushOutcome.STALE
    assert store.push(False, server_revision=7) is PushOutcome.APPLIED


async def test_a_self_echo_of_an_older_local_revision_only_records_the_revision(
    store: DocStore, server: FakeServer
) -> None:
    store.toggle()  # True, local 1
    request1 = await server.request(1)
    store.toggle()  # False, local 2
    outcome = store.push(True, server_revision=1, local_revision=1, device_id=1)
    assert outcome is PushOutcome.SELF_ECHO
    assert store.state.liked is False  # not applied
    assert store.server_revision(KEY) == 1
    request1.respond(True, 1)
    (await server.request(2)).respond(False, 2)  # the follow-up still happens
    await settle(store)
    assert server.log == [(True, 1), (False, 2)]


async def test_a_self_echo_of_the_latest_local_revision_is_applied(store: DocStore) -> None:
    store.emit(Doc(liked=False, revision=-1))
    outcome = store.push(True, server_revision=3, local_revision=0, device_id=1)
    assert outcome is PushOutcome.APPLIED
    assert store.state == Doc(liked=True, revision=3)


async def test_a_push_is_recorded_even_when_apply_returns_none(store: DocStore) -> None:
    outcome = store.server_push(
        key=KEY,
        push_metadata=PushMetadata(server_revision=4, local_revision=1, device_id=2),
        apply_server_push_to_state=lambda s, key, rev: None,
        get_server_revision_from_state=lambda key: -1,
    )
    assert outcome is PushOutcome.APPLIED
    assert store.server_revision(KEY) == 4
    assert store.state == Doc()


async def test_a_push_never_consumes_a_local_revision(store: DocStore) -> None:
    store.push(True, server_revision=1)
    store.push(False, server_revision=2)
    assert store.local_revision(KEY) == 0


async def test_a_raising_push_apply_changes_nothing(store: DocStore) -> None:
    def broken(state: Doc, key: Any, rev: int) -> Doc:
        raise ValueError("bad push")

    with pytest.raises(ValueError, match="bad push"):
        store.server_push(
            key=KEY,
            push_metadata=PushMetadata(server_revision=4, local_revision=1, device_id=2),
            apply_server_push_to_state=broken,
            get_server_revision_from_state=lambda key: -1,
        )
    assert store.server_revision(KEY) == -1
    assert store.push(True, server_revision=4) is PushOutcome.APPLIED


async def test_push_refuses_bad_metadata_and_unhashable_keys(store: DocStore) -> None:
    with pytest.raises(TypeError, match="PushMetadata"):
        store.server_push(
            key=KEY,
            push_metadata=(1, 1, 1),  # type: ignore[arg-type]
            apply_server_push_to_state=lambda s, k, r: s,
            get_server_revision_from_state=lambda key: -1,
        )
    with pytest.raises(TypeError, match="hashable"):
        store.server_push(
            key={},
            push_metadata=PushMetadata(server_revision=1, local_revision=1, device_id=2),
            apply_server_push_to_state=lambda s, k, r: s,
            get_server_revision_from_state=lambda key: -1,
        )


async def test_a_state_revision_that_is_not_an_int_is_a_type_error(store: DocStore) -> None:
    with pytest.raises(TypeError, match="get_server_revision_from_state"):
        store.server_push(
            key=KEY,
            push_metadata=PushMetadata(server_revision=1, local_revision=1, device_id=2),
            apply_server_push_to_state=lambda s, k, r: s,
            get_server_revision_from_state=lambda key: "3",  # type: ignore[arg-type,return-value]
        )


async def test_push_after_close_is_refused(server: FakeServer) -> None:
    store = DocStore(server)
    await store.close()
    with pytest.raises(StoreClosedError):
        store.push(True, server_revision=1)


async def test_push_from_another_thread_is_refused_and_changes_nothing(store: DocStore) -> None:
    caught: list[BaseException] = []

    def from_thread() -> None:
        try:
            store.push(True, server_revision=1)
        except BaseException as error:
            caught.append(error)

    thread = threading.Thread(target=from_thread)
    thread.start()
    thread.join()
    assert len(caught) == 1
    assert isinstance(caught[0], WrongThreadError)
    assert isinstance(caught[0], RuntimeError)
    assert store.state == Doc()
    assert store.server_revision(KEY) == -1


async def test_push_threadsafe_hands_the_push_to_the_loop(store: DocStore) -> None:
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[PushOutcome] = loop.create_future()

    def from_thread() -> None:
        future = store.server_push_threadsafe(
            key=KEY,
            push_metadata=PushMetadata(server_revision=3, local_revision=1, device_id=2),
            apply_server_push_to_state=lambda s, k, r: attrs.evolve(s, liked=True, revision=r),
            get_server_revision_from_state=lambda key: store.state.revision,
        )
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(outcome.set_result, done.result())
        )

    thread = threading.Thread(target=from_thread)
    thread.start()
    assert await outcome is PushOutcome.APPLIED
    thread.join()
    assert store.state == Doc(liked=True, revision=3)


def test_push_threadsafe_needs_a_bound_loop() -> None:
    store = DocStore(FakeServer())
    with pytest.raises(StateError, match="event loop"):
        store.server_push_threadsafe(
            key=KEY,
            push_metadata=PushMetadata(server_revision=3, local_revision=1, device_id=2),
            apply_server_push_to_state=lambda s, key, rev: s,
            get_server_revision_from_state=lambda key: -1,
        )


# -- PushMetadata and device ids ---------------------------------------------------


@pytest.mark.parametrize("field", ["server_revision", "local_revision", "device_id"])
@pytest.mark.parametrize("bad", ["1", 1.0, None, True])
def test_push_metadata_accepts_only_ints(field: str, bad: Any) -> None:
    values: dict[str, Any] = {"server_revision": 1, "local_revision": 1, "device_id": 1}
    values[field] = bad
    with pytest.raises(TypeError, match=field):
        PushMetadata(**values)


def test_push_metadata_is_frozen() -> None:
    meta = PushMetadata(server_revision=1, local_revision=1, device_id=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        meta.server_revision = 2  # type: ignore[misc]


def test_each_store_gets_a_random_53_bit_device_id_of_its_own() -> None:
    ids = {optisync.Store(0).device_id for _ in range(20)}
    assert len(ids) == 20
    assert all(0 <= device_id < 2**53 for device_id in ids)


def test_default_device_id_still_works_once_per_process_but_is_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="default_device_id"):
        first = optisync.default_device_id()
    with pytest.warns(DeprecationWarning, match="default_device_id"):
        assert optisync.default_device_id() == first
    assert optisync.Store(0).device_id != first


def test_device_id_provider_applies_to_new_stores_and_can_be_reset() -> None:
    optisync.set_device_id_provider(lambda: 4242)
    try:
        assert optisync.Store(0).device_id == 4242
        assert optisync.Store(0, device_id=7).device_id == 7
    finally:
        optisync.set_device_id_provider(None)
    assert optisync.Store(0).device_id != optisync.Store(0).device_id


def test_a_device_id_that_is_not_an_int_is_refused() -> None:
    with pytest.raises(TypeError, match="device_id"):
        optisync.Store(0, device_id="phone")  # type: ignore[arg-type]
    optisync.set_device_id_provider(lambda: "phone")  # type: ignore[arg-type,return-value]
    try:
        with pytest.raises(TypeError, match="provider"):
            optisync.Store(0)
    finally:
        optisync.set_device_id_provider(None)


async def _await(awaitable: Any) -> None:
    await awaitable


# -- sync status notifications ----------------------------------------------------


async def test_sync_status_listeners_hear_lock_revisions_and_release(
    store: DocStore, server: FakeServer
) -> None:
    seen: list[tuple[bool, int, int]] = []
    unsubscribe = store.subscribe_sync_status(
        lambda key: seen.append(
            (store.is_syncing(key), store.local_revision(key), store.server_revision(key))
        )
    )
    done = store.set_liked(True)
    request = await server.request(1)
    store.set_liked(True)  # equal state: no emit, but the local revision moves
    request.respond(True, 4)
    (await server.request(2)).respond(True, 5)
    await done
    assert seen == [
        (True, 1, -1),  # lock taken
        (True, 2, -1),  # coalesced tap
        (True, 2, 4),  # revision learnt from response 1
        (True, 2, 5),  # revision learnt from response 2
        (False, 2, 5),  # lock released
    ]
    unsubscribe()
    store.push(False, server_revision=9)
    assert len(seen) == 5


async def test_sync_status_listeners_hear_pushes_and_self_echoes(store: DocStore) -> None:
    keys: list[Any] = []
    store.subscribe_sync_status(keys.append)
    store.push(True, server_revision=3)  # applied
    store.push(True, server_revision=3)  # stale, nothing new: silent
    store.emit(Doc(liked=True, revision=8))
    store.push(True, server_revision=4)  # stale, but seeds 8 from the state
    assert keys == [KEY, KEY]


async def test_a_raising_sync_status_listener_goes_to_the_error_hook(
    store: DocStore, server: FakeServer
) -> None:
    error = ValueError("status bug")

    def broken(key: Any) -> None:
        raise error

    store.subscribe_sync_status(broken)
    done = store.toggle()
    (await server.request(1)).respond(True, 1)
    await done
    assert not store.is_syncing(KEY)
    assert store.errors == [error, error, error]  # lock, revision, release


def test_a_store_made_outside_a_loop_accepts_pushes_on_the_loop_of_another_thread() -> None:
    store = DocStore(FakeServer())
    outcomes: list[PushOutcome] = []

    async def on_the_loop() -> None:
        outcomes.append(store.push(True, server_revision=1))

    thread = threading.Thread(target=asyncio.run, args=(on_the_loop(),))
    thread.start()
    thread.join()
    assert outcomes == [PushOutcome.APPLIED]
    with pytest.raises(WrongThreadError):
        store.push(False, server_revision=2)  # this thread is no longer the store's


@pytest.mark.parametrize("locked", [False, True], ids=["free key", "locked key"])
async def test_a_tap_vetoed_by_on_change_does_not_count(server: FakeServer, locked: bool) -> None:
    class Vetoing(DocStore):
        veto = False

        def on_change(self, current: Doc, next: Doc) -> None:  # noqa: A002
            if self.veto:
                raise ValueError("veto")

    async with Vetoing(server) as store:
        if locked:
            store.toggle()
            request = await server.request(1)
            store.push(False, server_revision=5)  # the latest change is now a push
        store.veto = True
        with pytest.raises(ValueError, match="veto"):
            store.toggle()
        store.veto = False
        assert store.local_revision(KEY) == (1 if locked else 0)
        assert store.is_syncing(KEY) is locked
        if locked:
            request.respond(True, 4)
            await settle(store)
            assert len(server.requests) == 1  # the vetoed tap caused no follow-up
            assert store.state.liked is False


async def test_a_cancelled_error_raised_by_send_itself_is_a_failed_request(
    store: DocStore,
) -> None:
    async def send(*args: Any) -> None:
        await asyncio.sleep(0)
        raise asyncio.CancelledError  # e.g. the HTTP client's own task was cancelled

    done = store.toggle(send_value_to_server=send)
    with pytest.raises(optisync.RequestCancelledError) as caught:
        await done
    assert isinstance(caught.value.__cause__, asyncio.CancelledError)
    assert store.finished == [caught.value]
    assert not store.is_syncing(KEY)
    assert not store.is_closed
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


# -- local_revision_base: a device that keeps its id across restarts ----------------


async def test_local_revisions_start_after_the_base_and_are_what_is_sent(
    server: FakeServer,
) -> None:
    async with DocStore(server, local_revision_base=1000) as store:
        assert store.local_revision(KEY) == 1000
        done = store.toggle()
        (await server.request(1)).respond(True, server_revision=1)
        await done
        assert server.log == [(True, 1001)]
        assert store.local_revision(KEY) == 1001


async def test_an_echo_of_an_earlier_run_is_applied_unless_this_run_tapped_since(
    server: FakeServer,
) -> None:
    async with DocStore(server, device_id=1, local_revision_base=1000) as store:
        # Its own write from the run before (local revision below the base), on a key
        # this run never changed: the server's word, applied.
        assert store.push(True, server_revision=3, local_revision=7, device_id=1) is (
            PushOutcome.APPLIED
        )
        assert store.state.liked is True
        done = store.toggle()  # this run's tap: liked=False, local revision 1001
        # An older write of the earlier run comes back: the newer tap stays on screen.
        assert store.push(True, server_revision=4, local_revision=9, device_id=1) is (
            PushOutcome.SELF_ECHO
        )
        assert store.state.liked is False
        (await server.request(1)).respond(False, server_revision=5)
        await done
        assert server.log == [(False, 1001)]
        assert store.state.liked is False


@pytest.mark.parametrize(
    ("base", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("0", TypeError)]
)
def test_a_bad_local_revision_base_is_refused(base: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="local_revision_base"):
        optisync.Store(0, local_revision_base=base)


async def test_an_echo_newer_than_the_push_that_replaced_the_taps_is_applied(
    store: DocStore, server: FakeServer
) -> None:
    # Request 1 (liked=True) is in flight; the user taps again; another device's push
    # (rev 3) replaces the taps on screen; then request 1's own echo arrives with
    # rev 4: it was committed after that push, so it is the server's newest word.
    # Taking it for a self-echo kept the push's value on screen: without a response
    # applier nothing fixed that, and the device stayed wrong for good.
    done = store.toggle(apply_server_response_to_state=None)  # liked=True, local 1
    request = await server.request(1)
    store.toggle()  # liked=False, local 2: coalesced
    assert store.push(False, server_revision=3, device_id=2) is PushOutcome.APPLIED
    echo = store.push(True, server_revision=4, local_revision=1, device_id=store.device_id)
    assert echo is PushOutcome.APPLIED
    assert store.state.liked is True
    request.respond(True, server_revision=4)
    await done
    assert server.log == [(True, 1)]  # the push came after the taps: no follow-up
    assert (store.state.liked, store.server_revision(KEY)) == (True, 4)


async def test_an_echo_older_than_a_tap_still_on_screen_is_a_self_echo(
    store: DocStore, server: FakeServer
) -> None:
    done = store.toggle()  # liked=True, local 1
    request = await server.request(1)
    store.toggle()  # liked=False, local 2
    echo = store.push(True, server_revision=4, local_revision=1, device_id=store.device_id)
    assert echo is PushOutcome.SELF_ECHO
    assert store.state.liked is False
    request.respond(True, server_revision=4)
    (await server.request(2)).respond(False, server_revision=5)
    await done
    assert store.state.liked is False
