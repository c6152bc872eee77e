"""Store(eager_start=True): the first request starts inside the call (Python 3.12+)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from fakes import KEY, DocStore, FakeServer, own_tasks

from optisync import Store

needs_eager_tasks = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="eager tasks need Python 3.12+ (CI runs 3.13 too)"
)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="3.11 only: eager tasks are missing")
def test_eager_start_is_refused_before_python_3_12() -> None:
    with pytest.raises(ValueError, match=r"Python 3\.12"):
        Store(0, eager_start=True)


def EagerDocStore(server: FakeServer) -> DocStore:
    return DocStore(server, eager_start=True)


@needs_eager_tasks
async def test_the_first_request_is_sent_inside_the_call_and_taps_still_coalesce(
    server: FakeServer,
) -> None:
    async with EagerDocStore(server) as store:
        first = store.toggle()
        assert server.log == [(True, 1)]  # sent before the call returned
        store.toggle()
        store.toggle()
        server.requests[0].respond(True, server_revision=1)
        (await server.request(2)).respond(True, server_revision=2)
        await first
        assert server.log == [(True, 1), (True, 3)]
        assert not store.is_syncing(KEY)
        assert store.finished == [None]


@needs_eager_tasks
async def test_close_right_after_an_eager_tap_still_leaves_no_task(server: FakeServer) -> None:
    store = EagerDocStore(server)
    store.toggle()
    assert len(server.requests) == 1  # already sent: the difference eager start makes
    await store.close()
    assert not store.is_syncing(KEY)
    assert own_tasks() == set()


@needs_eager_tasks
async def test_an_eager_send_that_fails_at_once_reaches_the_awaiting_caller_only(
    server: FakeServer,
) -> None:
    async def refused(*args: object) -> None:
        raise ConnectionError("refused at once")

    async with EagerDocStore(server) as store:
        with pytest.raises(ConnectionError):
            await store.toggle(send_value_to_server=refused)
        for _ in range(3):  # the turn in which an unawaited error would be reported
            await asyncio.sleep(0)
        assert store.errors == []
        store.toggle(send_value_to_server=refused)  # nobody awaits this one
        for _ in range(3):
            await asyncio.sleep(0)
        assert [type(error) for error in store.errors] == [ConnectionError]
