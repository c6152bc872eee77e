"""Deleting items of a declared field: optimistic, coalesced with sets, pushed, replayed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optisync import DELETED, PushMetadata, PushOutcome, StateError, Store, testing
from optisync.client import SyncClient
from optisync.device import open_device
from optisync.fields import SyncedMap, SyncedMapWithPush, SyncedValueWithPush, serve
from optisync.outbox import Backoff, Outbox
from optisync.persistence import AttrsCodec
from optisync.server import SqliteStorage, SyncServer
from optisync.transport import Ack, SyncRequest, store_key, wire_key


@attrs.frozen
class Todos:
    done: dict[str, bool] = attrs.field(factory=dict)


def _without(todos: Todos, item: str) -> Todos:
    return attrs.evolve(todos, done={k: v for k, v in todos.done.items() if k != item})


def _done() -> SyncedMapWithPush[Todos, str, bool]:
    return SyncedMapWithPush[Todos, str, bool](
        lambda todos, item: todos.done[item],
        lambda todos, item, done: attrs.evolve(todos, done={**todos.done, item: done}),
        remove=_without,
        contains=lambda todos, item: item in todos.done,
    )


class TodoStore(Store[Todos]):
    """Served by a transport: no sender."""

    done = _done()


class GatedTodos(Store[Todos]):
    """Its sender records each request and waits for the test to answer it."""

    done = _done()

    def __init__(self, state: Todos) -> None:
        super().__init__(state, device_id=1)
        self.sent: list[tuple[Any, int]] = []
        self.answers: asyncio.Queue[int] = asyncio.Queue()
        self.waiting = asyncio.Event()

    @done.sender
    async def send_done(self, item: str, done: Any, request: SyncRequest) -> int:
        self.sent.append((done, request.local_revision))
        self.waiting.set()
        revision = await self.answers.get()
        self.waiting.clear()
        return revision

    async def answer(self, revision: int) -> None:
        await self.waiting.wait()
        self.answers.put_nowait(revision)


MILK = Todos({"milk": True, "eggs": False})


# -- on one store ---------------------------------------------------------------------------


async def test_a_delete_removes_the_item_at_once_and_sends_deleted() -> None:
    async with GatedTodos(MILK) as store:
        synced = store.done.delete("milk")
        assert store.state == Todos({"eggs": False})
        assert store.done["milk"] is DELETED
        assert store.done.is_pending("milk")
        await store.answer(7)
        await synced
        assert store.sent == [(DELETED, 1)]
        assert store.state == Todos({"eggs": False})
        assert store.done.server_revision("milk") == 7


async def test_del_item_deletes_like_delete() -> None:
    async with GatedTodos(MILK) as store:
        del store.done["milk"]
        assert store.state == Todos({"eggs": False})
        await store.answer(1)
        await store.close()
        assert store.sent == [(DELETED, 1)]


async def test_set_delete_set_in_flight_ends_as_the_last_tap() -> None:
    async with GatedTodos(MILK) as store:
        first = store.done.set("milk", False)  # request 1
        store.done.delete("milk")  # coalesced
        store.done.set("milk", True)  # coalesced: the follow-up sends this one
        assert store.state == MILK
        await store.answer(1)
        await store.answer(2)
        await first
        assert store.sent == [(False, 1), (True, 3)]
        assert store.state == MILK


async def test_set_then_delete_in_flight_sends_the_delete_as_the_follow_up() -> None:
    async with GatedTodos(MILK) as store:
        first = store.done.set("milk", False)
        store.done.delete("milk")
        await store.answer(1)
        await store.answer(2)
        await first
        assert store.sent == [(False, 1), (DELETED, 2)]
        assert store.state == Todos({"eggs": False})


async def test_a_pushed_delete_removes_the_item_and_an_older_set_does_not_bring_it_back() -> None:
    store = TodoStore(MILK, device_id=1)
    tombstone = PushMetadata(server_revision=5, local_revision=0, device_id=0)
    assert store.done.push("milk", DELETED, tombstone) is PushOutcome.APPLIED
    assert store.state == Todos({"eggs": False})
    older = PushMetadata(server_revision=4, local_revision=0, device_id=0)
    assert store.done.push("milk", True, older) is PushOutcome.STALE
    assert store.state == Todos({"eggs": False})
    newer = PushMetadata(server_revision=6, local_revision=0, device_id=0)
    assert store.done.push("milk", False, newer) is PushOutcome.APPLIED
    assert store.state == Todos({"eggs": False, "milk": False})


def test_a_field_without_remove_cannot_delete() -> None:
    class Plain(Store[dict[str, bool]]):
        done = SyncedMap[dict[str, bool], str, bool](
            lambda s, t: s.get(t, False), lambda s, t, d: {**s, t: d}
        )

    with pytest.raises(StateError, match="remove="):
        Plain({"milk": True}).done.delete("milk")


def test_a_pushed_delete_drops_the_key_of_a_dict_state_without_remove() -> None:
    class Plain(Store[dict[str, bool]]):
        done = SyncedMapWithPush[dict[str, bool], str, bool](
            lambda s, t: s.get(t, False), lambda s, t, d: {**s, t: d}
        )

    store = Plain({"milk": True, "eggs": False}, device_id=1)
    store.done.push("milk", DELETED, PushMetadata(3, 0, 0))
    assert store.state == {"eggs": False}


def test_a_pushed_delete_a_field_cannot_apply_is_reported_and_skipped() -> None:
    errors: list[BaseException] = []

    class Theme(Store[str]):
        theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)

        def on_error(self, error: BaseException) -> None:
            errors.append(error)

    store = Theme("dark", device_id=1)
    assert store.theme.push(DELETED, PushMetadata(3, 0, 0)) is PushOutcome.STALE
    assert store.state == "dark"
    assert [type(error) for error in errors] == [StateError]


# -- two devices, one offline during the delete ------------------------------------------


def test_the_offline_device_loses_the_item_on_the_simulator() -> None:
    async def main() -> tuple[Todos, Todos, Any]:
        network = testing.SimulatedNetwork(testing.SimulatedServer(), seed=3)
        phone, laptop = TodoStore(Todos(), device_id=1), TodoStore(Todos(), device_id=2)
        phone_link, laptop_link = network.device(1), network.device(2)
        serve(phone, phone_link)
        serve(laptop, laptop_link)
        async with phone, laptop:
            await phone.done.set("milk", True)
            await phone.done.set("eggs", True)
            await network.settle()
            assert laptop.state == Todos({"milk": True, "eggs": True})
            laptop_link.disconnect()
            await phone.done.delete("milk")
            await network.settle()
            assert laptop.state == Todos({"milk": True, "eggs": True})  # offline: not yet
            laptop_link.connect(lambda commit: None)  # back: the replay has the tombstone
            await network.settle()
            value = await laptop_link.get(wire_key(("done", "milk")))
            return phone.state, laptop.state, value

    phone, laptop, (value, revision) = testing.run(main())
    assert phone == laptop == Todos({"eggs": True})
    assert (value, revision) == (DELETED, 3)


async def test_the_offline_device_loses_the_item_on_a_real_server(tmp_path: Path) -> None:
    async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3")).run(port=0) as url:
        phone = TodoStore(Todos(), device_id=1)
        async with phone, SyncClient(phone, url) as phone_client:
            await phone_client.wait_online(timeout=10)
            await phone.done.set("milk", True)
            await phone.done.set("eggs", True)
            laptop = TodoStore(Todos(), device_id=2)
            async with laptop, SyncClient(laptop, url) as laptop_client:
                await laptop_client.caught_up()
                seen = laptop.state
                position = (laptop_client.cursor, laptop_client.generation, laptop_client.digest)
            assert seen == Todos({"milk": True, "eggs": True})
            # The laptop is off; the phone deletes milk; the acked delete reads back as deleted.
            await phone.done.delete("milk")
            assert await phone_client.get(wire_key(("done", "milk"))) == (DELETED, 3)
            # The laptop comes back from where it was: its replay carries the tombstone.
            back = TodoStore(seen, device_id=2)
            client = SyncClient(back, url)
            client.resume(*position)
            async with back, client:
                await client.caught_up()
                assert back.state == phone.state == Todos({"eggs": True})


async def test_a_compaction_reset_drops_the_items_the_replay_leaves_out(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "server.sqlite3")
    async with SyncServer(storage).run(port=0) as url:
        phone = TodoStore(Todos(), device_id=1)
        async with phone, SyncClient(phone, url) as phone_client:
            await phone_client.wait_online(timeout=10)
            await phone.done.set("milk", True)
            await phone.done.set("eggs", True)
            laptop = TodoStore(Todos(), device_id=2)
            async with laptop, SyncClient(laptop, url) as laptop_client:
                await laptop_client.caught_up()
                position = (laptop_client.cursor, laptop_client.generation, laptop_client.digest)
                laptop.done.restore("milk", 1)  # what persistence would restore
            seen = laptop.state
            await phone.done.delete("milk")
            await phone.done.set("tea", True)
            assert await storage.compact(await storage.head()) == 1
            back = TodoStore(seen, device_id=2)
            back.done.restore("milk", 1)
            back.done.restore("eggs", 2)
            client = SyncClient(back, url)
            client.resume(*position)
            async with back, client:
                await client.caught_up()
                assert client.reset_by_compaction
                # milk is not written back (it was deleted): it is dropped here.
                assert back.state == phone.state == Todos({"eggs": True, "tea": True})
            assert await phone_client.get(wire_key(("done", "milk"))) == (None, -1)


# -- a pending delete survives a restart ---------------------------------------------------


async def test_a_delete_made_offline_is_saved_and_sent_after_a_restart(tmp_path: Path) -> None:
    database, phone_file = tmp_path / "server.sqlite3", tmp_path / "phone.sqlite3"
    backoff = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
    codec = AttrsCodec(Todos)
    first_server = contextlib.AsyncExitStack()
    url = await first_server.enter_async_context(SyncServer(SqliteStorage(database)).run(port=0))
    try:
        async with open_device(TodoStore, url, phone_file, codec, Todos(), backoff=backoff) as one:
            await one.client.wait_online(timeout=10)
            await one.store.done.set("milk", True)
            offline = asyncio.Event()
            one.client.subscribe_status(lambda online: None if online else offline.set())
            await first_server.aclose()  # the server goes away
            await offline.wait()
            one.store.done.delete("milk")  # made offline: kept by the outbox
            assert one.store.state == Todos()
            assert one.store.done.is_pending("milk")
    finally:
        await first_server.aclose()
    port = int(url.rsplit(":", 1)[1])
    async with (
        SyncServer(SqliteStorage(database)).run(port=port),
        open_device(TodoStore, url, phone_file, codec, Todos(), backoff=backoff) as again,
    ):
        assert again.persistence.restored_outbox == frozenset({'["done", "milk"]'})
        assert again.store.state == Todos()
        await again.outbox.synced()
        assert await again.client.get(wire_key(("done", "milk"))) == (DELETED, 2)
        assert again.store.state == Todos()


async def test_a_client_sends_deleted_as_a_delete_and_hears_it_pushed(tmp_path: Path) -> None:
    async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3")).run(port=0) as url:
        heard: list[tuple[str, Any, PushMetadata]] = []
        store = Store({}, device_id=1)
        async with store, SyncClient(store, url) as client:
            client.subscribe_pushes(lambda key, value, meta: heard.append((key, value, meta)))
            await client.wait_online(timeout=10)
            assert await client.send("k", 1, SyncRequest("k", 1, 1)) == Ack(1, 1)
            assert await client.send("k", DELETED, SyncRequest("k", 2, 1)) == Ack(2, DELETED)
            # A retry of the delete (same local revision) gets the same ack, commits nothing.
            assert await client.send("k", DELETED, SyncRequest("k", 2, 1)) == Ack(2, DELETED)
            await client.caught_up()
            assert await client.get("k") == (DELETED, 2)
            assert heard == [("k", 1, PushMetadata(1, 1, 1)), ("k", DELETED, PushMetadata(2, 2, 1))]


# -- any interleaving of sets and deletes converges ------------------------------------------

ITEMS = ("milk", "eggs")
Op = tuple[str, int, str, bool]  # (kind, device, item, done): kind is set, delete, drop or wait


@st.composite
def interleavings(draw: st.DrawFn) -> tuple[testing.NetworkFaults, int, list[Op]]:
    latency = st.sampled_from([(0.0, 0.0), (0.0, 0.01), (0.001, 0.05)])
    faults = testing.NetworkFaults(
        request_latency=draw(latency),
        push_latency=draw(latency),
        duplicate_push=draw(st.sampled_from([0.0, 0.2])),
        drop_push=draw(st.sampled_from([0.0, 0.1])),
        reconnect_delay=(0.0, 0.05),
        fail_before_commit=draw(st.sampled_from([0.0, 0.2])),
        fail_after_commit=draw(st.sampled_from([0.0, 0.2])),
    )
    op = st.tuples(
        st.sampled_from(["set", "set", "delete", "delete", "drop", "wait"]),
        st.integers(1, 3),
        st.sampled_from(ITEMS),
        st.booleans(),
    )
    return faults, draw(st.integers(0, 2**16)), draw(st.lists(op, min_size=1, max_size=30))


async def _play(faults: testing.NetworkFaults, seed: int, ops: list[Op]) -> None:
    network = testing.SimulatedNetwork(testing.SimulatedServer(), faults=faults, seed=seed)
    stores = {n: TodoStore(Todos(), device_id=n) for n in (1, 2, 3)}
    links = {n: network.device(n) for n in stores}
    for n, store in stores.items():
        # The outbox: a write made offline waits for the link instead of failing.
        Outbox(store, backoff=Backoff(initial=0.01, maximum=0.05, jitter=0.0))
        serve(store, links[n])
    async with stores[1], stores[2], stores[3]:
        for kind, device, item, done in ops:
            store = stores[device]
            if kind == "set":
                store.done.set(item, done)
            elif kind == "delete" and item in store.state.done:
                store.done.delete(item)
            elif kind == "drop":
                links[device].drop()
            else:
                await asyncio.sleep(0.01)
        await network.settle()
        latest = {str(commit.key): commit.value for commit in network.server.log}
        items = {wire: store_key(wire) for wire in latest}
        expected = Todos(
            {item[1]: value for wire, value in latest.items() if value is not DELETED
             for item in [items[wire]] if isinstance(item, tuple)}
        )  # fmt: skip
        assert expected.done or not latest or DELETED in latest.values()
        assert [store.state for store in stores.values()] == [expected] * 3


@settings(
    max_examples=int(os.environ.get("OPTISYNC_DELETE_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(interleavings())
def test_any_interleaving_of_sets_and_deletes_converges_to_the_server(
    case: tuple[testing.NetworkFaults, int, list[Op]],
) -> None:
    testing.run(_play(*case))


def test_a_field_without_push_deletes_through_a_transport_too() -> None:
    class Flags(Store[dict[str, bool]]):
        on = SyncedMap[dict[str, bool], str, bool](
            lambda s, f: s[f],
            lambda s, f, v: {**s, f: v},
            remove=lambda s, f: {k: v for k, v in s.items() if k != f},
        )

    async def main() -> tuple[dict[str, bool], Any]:
        network = testing.SimulatedNetwork(testing.SimulatedServer())
        link = network.device(1)
        async with Flags({"dark": True, "big": False}, device_id=1) as flags:
            serve(flags, link)
            await flags.on.delete("dark")
            return flags.state, await link.get(wire_key(("on", "dark")))

    state, answer = testing.run(main())
    assert (state, answer) == ({"big": False}, (DELETED, 1))
