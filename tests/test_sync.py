"""optimistic_sync: the variant without push, where values decide the follow-ups."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fakes import KEY, Doc, DocStore, FakeServer, own_tasks, settle

from optisync import FollowUpLimitError, StoreClosedError


async def test_taps_that_end_on_the_value_sent_need_no_follow_up(
    store: DocStore, server: FakeServer
) -> None:
    done = store.sync_liked(True)
    request = await server.request(1)
    store.sync_liked(False)
    store.sync_liked(True)
    request.respond(True)
    await done
    assert server.log == [(True, 0)]
    assert store.finished == [None]


async def test_taps_that_end_on_another_value_send_one_follow_up(
    store: DocStore, server: FakeServer
) -> None:
    done = store.sync_liked(True)
    request1 = await server.request(1)
    store.sync_liked(False)
    request1.respond(True)
    (await server.request(2)).respond(False)
    await done
    assert [value for value, _ in server.log] == [True, False]
    assert store.state.liked is False


async def test_the_optimistic_value_is_applied_before_the_call_returns(
    store: DocStore, server: FakeServer
) -> None:
    store.sync_liked(True)
    assert store.state.liked is True
    store.sync_liked(False)
    assert store.state.liked is False
    assert store.local_revision(KEY) == 2
    (await server.request(1)).respond(True)
    (await server.request(2)).respond(False)
    await settle(store)


async def test_a_coalesced_call_returns_a_complete_awaitable(
    store: DocStore, server: FakeServer
) -> None:
    store.sync_liked(True)
    await store.sync_liked(False)
    assert store.is_syncing(KEY)
    (await server.request(1)).respond(True)
    (await server.request(2)).respond(False)
    await settle(store)


async def test_the_response_is_applied_when_stable(store: DocStore, server: FakeServer) -> None:
    done = store.sync_liked(True)
    (await server.request(1)).respond(False)  # the server refused the like
    await done
    assert store.state.liked is False


async def test_a_none_response_is_not_applied(store: DocStore, server: FakeServer) -> None:
    done = store.sync_liked(True)
    (await server.request(1)).respond(None)
    await done
    assert store.state.liked is True


async def test_a_custom_rule_decides_the_follow_up_with_the_request_count(
    store: DocStore, server: FakeServer
) -> None:
    calls: list[tuple[Any, Any, int]] = []

    def always_twice(state_value: bool, sent_value: bool, count: int) -> bool:
        calls.append((state_value, sent_value, count))
        return count < 2

    done = store.sync_liked(True, if_should_send_another_request=always_twice)
    (await server.request(1)).respond(True)
    (await server.request(2)).respond(True)
    await done
    assert calls == [(True, True, 1), (True, True, 2)]
    assert len(server.requests) == 2


async def test_the_follow_up_limit_raises_unlocks_and_runs_on_finish_once(
    store: DocStore, server: FakeServer
) -> None:
    done = store.sync_liked(True, max_follow_up_requests=1)
    for number in (1, 2):
        request = await server.request(number)
        store.sync_liked(not request.value)
        request.respond(request.value)
    with pytest.raises(FollowUpLimitError, match="Too many follow-up requests") as caught:
        await done
    assert len(server.requests) == 2
    assert not store.is_syncing(KEY)
    assert store.finished == [caught.value]


async def test_a_failed_request_reaches_on_finish_and_the_caller(
    store: DocStore, server: FakeServer
) -> None:
    done = store.sync_liked(True, on_finish=lambda error: Doc(liked=False, revision=0))
    error = TimeoutError("slow server")
    (await server.request(1)).fail(error)
    with pytest.raises(TimeoutError) as caught:
        await done
    assert caught.value is error
    assert store.state == Doc(liked=False, revision=0)
    assert not store.is_syncing(KEY)


async def test_on_finish_raising_is_what_the_caller_gets_and_runs_once(
    store: DocStore, server: FakeServer
) -> None:
    calls: list[BaseException | None] = []

    def on_finish(error: BaseException | None) -> None:
        calls.append(error)
        raise LookupError("reload failed")

    done = store.sync_liked(True, on_finish=on_finish)
    (await server.request(1)).fail(TimeoutError())
    with pytest.raises(LookupError):
        await done
    assert len(calls) == 1
    assert isinstance(calls[0], TimeoutError)


async def test_cancelling_the_caller_does_not_cancel_the_sync(
    store: DocStore, server: FakeServer
) -> None:
    caller = asyncio.create_task(_await(store.sync_liked(True)))
    request = await server.request(1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    request.respond(True)
    await settle(store)
    assert store.finished == [None]


async def test_close_cancels_frees_the_key_and_leaves_no_task(server: FakeServer) -> None:
    store = DocStore(server)
    done = store.sync_liked(True)
    await server.request(1)
    await store.close()
    assert not store.is_syncing(KEY)
    assert own_tasks() == set()
    with pytest.raises(StoreClosedError):
        await done


async def test_an_unhashable_key_is_refused_before_anything_changes(store: DocStore) -> None:
    with pytest.raises(TypeError, match="hashable"):
        store.sync_liked(True, key={"a": 1})
    assert store.state == Doc()


async def _await(awaitable: Any) -> None:
    await awaitable
