"""The client transport keeps a Store in sync with a real server on loopback."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.live.network import Link
from optisync import PushOutcome, StateError, Store
from optisync.client import ClientConnectionError, RequestRefusedError, SyncClient, Traced
from optisync.server import Change, Grant, SqliteStorage, SyncServer
from optisync.wire import Committed, Get, Hello, Push, Ready, Set, Value, Welcome

State = dict[str, Any]


def apply_value(state: State, key: str, value: Any, revision: int) -> State:
    return {**state, key: value}


class GatedStorage(SqliteStorage):
    """Holds every commit until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()

    async def commit(
        self,
        key: str,
        value: bytes,
        *,
        local_revision: int,
        device_id: int,
        deduplicate: bool = False,
    ) -> Change:
        self.waiting.set()
        await self.gate.wait()
        return await super().commit(
            key, value, local_revision=local_revision, device_id=device_id, deduplicate=deduplicate
        )


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[SyncServer, str]]:
    sync_server = SyncServer(GatedStorage(tmp_path / "server.sqlite3"))
    sync_server.storage.gate.set()  # type: ignore[attr-defined]
    async with sync_server.run(port=0) as url:
        yield sync_server, url


@pytest.fixture
async def proxy(server: tuple[SyncServer, str]) -> AsyncIterator[Link]:
    """A TCP link to the server (the live demo's) that a test can cut, as a network would."""
    async with Link(lambda: int(server[1].rsplit(":", 1)[1])) as running:
        yield running


def toggle(store: Store[State], client: SyncClient[State], key: str = "like") -> Any:
    return store.optimistic_sync_with_push(
        key=key,
        value_to_apply=lambda: not store.state.get(key, False),
        apply_optimistic_value_to_state=lambda state, value: {**state, key: value},
        get_value_from_state=lambda state: state.get(key),
        send_value_to_server=client.sender(key),
        get_server_revision_from_state=lambda key: -1,
    )


class Status:
    """The online/offline changes of a client, with an event per count."""

    def __init__(self, client: SyncClient[Any]) -> None:
        self.changes: list[bool] = []
        self._reached: dict[int, asyncio.Event] = {}
        client.subscribe_status(self._record)

    def _record(self, online: bool) -> None:
        self.changes.append(online)
        for count, event in self._reached.items():
            if len(self.changes) >= count:
                event.set()

    async def wait_for(self, count: int) -> None:
        if len(self.changes) < count:
            await self._reached.setdefault(count, asyncio.Event()).wait()


async def test_two_stores_converge_through_the_server(url_of: Callable[[], str]) -> None:
    url = url_of()
    one, two = Store[State]({}, device_id=1), Store[State]({}, device_id=2)
    async with (
        SyncClient(one, url, apply_value=apply_value) as c1,
        SyncClient(two, url, apply_value=apply_value) as c2,
    ):
        await c1.wait_online()
        await c2.wait_online()
        await asyncio.gather(toggle(one, c1), toggle(two, c2), toggle(one, c1, "color"))
        value, revision = await c1.get("like")
        while c1.cursor < 3 or c2.cursor < 3:
            await c2.get("like")  # a round trip: the pushes before it have arrived
            await c1.get("like")
        assert one.state == two.state
        assert one.state["like"] == value
        assert one.server_revision("like") == two.server_revision("like") == revision


@pytest.fixture
def url_of(server: tuple[SyncServer, str]) -> Callable[[], str]:
    return lambda: server[1]


async def test_a_request_while_offline_fails_with_a_connection_error(
    url_of: Callable[[], str],
) -> None:
    store = Store[State]({}, device_id=1)
    client = SyncClient(store, url_of(), apply_value=apply_value)
    send = client.sender("like")
    with pytest.raises(ClientConnectionError):
        await send(True, 1, 1, lambda revision: None)


async def test_a_request_in_flight_at_a_drop_fails_with_a_connection_error(
    server: tuple[SyncServer, str], proxy: Link
) -> None:
    storage: GatedStorage = server[0].storage  # type: ignore[assignment]
    storage.gate.clear()
    store = Store[State]({}, device_id=1)
    async with SyncClient(store, proxy.url, apply_value=apply_value) as client:
        await client.wait_online()
        request = asyncio.create_task(client.sender("like")(True, 1, 1, lambda revision: None))
        await storage.waiting.wait()
        proxy.down()  # every connection through it dropped
        proxy.up()
        with pytest.raises(ConnectionError):
            await request
        storage.gate.set()


async def test_a_refused_write_raises_request_refused(tmp_path: Path) -> None:
    async def read_only(hello: Hello) -> Grant:
        return Grant("reader", can_write=lambda key: False)

    sync_server = SyncServer(SqliteStorage(tmp_path / "s.sqlite3"), authenticate=read_only)
    async with sync_server.run(port=0) as url:
        store = Store[State]({}, device_id=1)
        async with SyncClient(store, url, apply_value=apply_value) as client:
            await client.wait_online()
            with pytest.raises(RequestRefusedError) as refused:
                await client.sender("like")(True, 1, 1, lambda revision: None)
    assert refused.value.code == "forbidden"


async def test_a_write_too_large_to_read_fails_instead_of_waiting_for_ever(
    url_of: Callable[[], str],
) -> None:
    # The server cannot read the request id of a message over its limit: its
    # error carries none, and answers the oldest request (replies come in order).
    store = Store[State]({}, device_id=1)
    async with SyncClient(store, url_of(), apply_value=apply_value) as client:
        await client.wait_online()
        huge = client.sender("big")("x" * 70_000, 1, 1, lambda revision: None)
        with pytest.raises(RequestRefusedError) as refused:
            await asyncio.gather(huge, client.sender("small")(1, 1, 1, lambda revision: None))
        assert refused.value.code == "too_large"
        assert await client.get("small") == (1, 1)
        assert await client.get("big") == (None, -1)


async def test_after_a_drop_the_client_reconnects_and_replays_what_it_missed(
    url_of: Callable[[], str], proxy: Link
) -> None:
    watcher, writer = Store[State]({}, device_id=1), Store[State]({}, device_id=2)
    async with (
        SyncClient(watcher, proxy.url, apply_value=apply_value) as watching,
        SyncClient(writer, url_of(), apply_value=apply_value) as writing,
    ):
        status = Status(watching)
        await watching.wait_online()
        await writing.wait_online()
        proxy.down()  # every connection through it dropped
        proxy.up()
        await status.wait_for(2)  # offline
        liked = asyncio.Event()
        watcher.subscribe(lambda state: liked.set() if state.get("like") else None)
        await toggle(writer, writing)
        await status.wait_for(3)  # online again
        # In its replay, or pushed right after it: its reads do not wait for the
        # commit, which may land while the replay is under way.
        await asyncio.wait_for(liked.wait(), 10)
        assert status.changes == [True, False, True]
        assert watcher.state == {"like": True}
        assert watching.cursor == 1


async def test_a_client_started_at_a_cursor_replays_only_what_came_after(
    url_of: Callable[[], str],
) -> None:
    writer = Store[State]({}, device_id=2)
    async with SyncClient(writer, url_of(), apply_value=apply_value) as writing:
        await writing.wait_online()
        for key in "abc":
            await toggle(writer, writing, key)
        generation = writing.generation
    applied: list[str] = []

    def record(state: State, key: str, value: Any, revision: int) -> State:
        applied.append(key)
        return apply_value(state, key, value, revision)

    later = Store[State]({}, device_id=3)
    client = SyncClient(later, url_of(), apply_value=record, cursor=2, generation=generation)
    async with client:
        await client.wait_online()
    assert applied == ["c"]
    assert client.cursor == 3


async def test_a_cursor_from_another_database_resets_and_replays_everything(
    url_of: Callable[[], str],
) -> None:
    writer = Store[State]({}, device_id=2)
    async with SyncClient(writer, url_of(), apply_value=apply_value) as writing:
        await writing.wait_online()
        await toggle(writer, writing)
    resets: list[str] = []
    store = Store[State]({}, device_id=3)
    client = SyncClient(
        store,
        url_of(),
        apply_value=apply_value,
        cursor=40,
        generation="0" * 32,
        on_reset=lambda: resets.append("reload"),
    )
    async with client:
        await client.wait_online()
    assert resets == ["reload"]
    assert (client.cursor, client.generation) == (1, writing.generation)
    assert store.state == {"like": True}


async def test_the_cursor_and_generation_are_settable_before_start_only() -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9", apply_value=apply_value)
    client.cursor = 5
    client.generation = "g"
    assert (client.cursor, client.generation) == (5, "g")
    client.start()
    with pytest.raises(StateError):
        client.cursor = 6
    await client.close()
    assert client.cursor == 5


async def test_the_trace_sees_each_message_sent_and_received_in_order(
    url_of: Callable[[], str],
) -> None:
    traced: list[Traced] = []
    store = Store[State]({}, device_id=1)
    async with SyncClient(store, url_of(), apply_value=apply_value, trace=traced.append) as client:
        await client.wait_online()
        await toggle(store, client)
        await client.get("like")  # a round trip: the push and the ack came before its value
    kinds = [(event.direction, type(event.message)) for event in traced]
    assert kinds == [
        ("sent", Hello),
        ("received", Welcome),
        ("received", Ready),
        ("sent", Set),
        ("received", Push),
        ("received", Committed),
        ("sent", Get),
        ("received", Value),
    ]
    push = traced[4]
    assert isinstance(push.message, Push)
    assert (push.message.key, push.message.server_revision, push.message.device_id) == (
        "like",
        1,
        1,
    )
    assert push.outcome is PushOutcome.APPLIED
    assert [event.outcome for event in traced if event is not push] == [None] * 7


async def test_the_trace_of_a_push_comes_after_the_client_handled_it(
    url_of: Callable[[], str],
) -> None:
    seen: list[tuple[int, State]] = []
    watcher, writer = Store[State]({}, device_id=1), Store[State]({}, device_id=2)

    def trace(event: Traced) -> None:
        if isinstance(event.message, Push):
            seen.append((watching.cursor, watcher.state))

    watching = SyncClient(watcher, url_of(), apply_value=apply_value, trace=trace)
    async with watching, SyncClient(writer, url_of(), apply_value=apply_value) as writing:
        await watching.wait_online()
        await writing.wait_online()
        await toggle(writer, writing)
        while watching.cursor < 1:
            await watching.get("like")  # a round trip: the push has arrived
    assert seen == [(1, {"like": True})]


async def test_a_trace_that_raises_is_logged_and_the_client_goes_on(
    url_of: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: Traced) -> None:
        raise RuntimeError("a broken tracer")

    store = Store[State]({}, device_id=1)
    with caplog.at_level(logging.ERROR, logger="optisync.client"):
        async with SyncClient(store, url_of(), apply_value=apply_value, trace=broken) as client:
            await client.wait_online()
            await toggle(store, client)
    assert store.state == {"like": True}
    assert store.server_revision("like") == 1
    assert "the trace callback failed" in caplog.text


@settings(max_examples=15, deadline=None)
@given(taps=st.lists(st.tuples(st.sampled_from([1, 2]), st.sampled_from("ab")), max_size=12))
async def test_devices_tapping_in_any_interleaving_converge_to_the_server(
    taps: list[tuple[int, str]],
) -> None:
    sync_server = SyncServer(SqliteStorage(":memory:"))
    async with sync_server.run(port=0) as url:
        stores = {n: Store[State]({}, device_id=n) for n in (1, 2)}
        clients = {n: SyncClient(stores[n], url, apply_value=apply_value) for n in (1, 2)}
        async with clients[1], clients[2]:
            await asyncio.gather(*(client.wait_online() for client in clients.values()))
            await asyncio.gather(*(toggle(stores[n], clients[n], key) for n, key in taps))
            head = await sync_server.storage.head()
            for client in clients.values():
                while client.cursor < head:
                    await client.get("a")  # a round trip: earlier pushes have arrived
            for key in "ab":
                value, _ = await clients[1].get(key)
                assert stores[1].state.get(key) == stores[2].state.get(key) == value
