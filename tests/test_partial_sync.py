"""Partial sync through the library: SyncClient's prefixes, scoped fields, the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.live.network import Link
from optisync import ClosedError, InvalidArgumentError, Store, testing
from optisync.client import SyncClient, Traced
from optisync.device import open_device
from optisync.fields import SyncedMapWithPush, SyncedValueWithPush, serve, store_fields
from optisync.persistence import JsonCodec
from optisync.server import Grant, SqliteStorage, SyncServer
from optisync.transport import SubscribesByPrefix, SyncRequest
from optisync.wire import Hello, Subscribe


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), authenticate=by_user).run(
        port=0
    ) as running:
        yield running


async def by_user(hello: Hello) -> Grant:
    """The token names the user: one reads and writes its own keys and the shared ones."""
    user = hello.token or "nobody"
    allowed = (f"user/{user}/", "shared/")
    return Grant(
        user,
        can_read=lambda key: key.startswith(allowed),
        can_write=lambda key: key.startswith(allowed),
    )


class Received:
    """The keys a client received, with an event per key."""

    def __init__(self, client: SyncClient[Any]) -> None:
        self.keys: list[str] = []
        self._seen: dict[str, asyncio.Event] = {}
        client.subscribe_pushes(self._record)

    def _record(self, key: str, value: Any, metadata: Any) -> None:
        self.keys.append(key)
        self._seen.setdefault(key, asyncio.Event()).set()

    async def wait_for(self, key: str) -> None:
        await self._seen.setdefault(key, asyncio.Event()).wait()


async def write(url: str, device_id: int, *changes: tuple[str, object], user: str = "ada") -> None:
    async with SyncClient(Store({}, device_id=device_id), url, token=user, prefixes=[]) as writer:
        await writer.wait_online()
        for n, (key, value) in enumerate(changes, start=1):
            await writer.send(key, value, SyncRequest(key, n, device_id))


# -- SyncClient ---------------------------------------------------------------------


async def test_a_client_with_prefixes_receives_only_their_keys(url: str) -> None:
    await write(url, 9, ("user/ada/a", 1), ("shared/s", 2), ("user/ada/b", 3))
    async with SyncClient(Store({}, device_id=1), url, token="ada", prefixes=["shared/"]) as client:
        received = Received(client)
        await client.caught_up()
        assert received.keys == ["shared/s"]


async def test_subscribe_brings_the_history_then_live_pushes_of_the_new_prefix(url: str) -> None:
    await write(url, 9, ("user/ada/a", 1), ("shared/s", 2))
    async with SyncClient(Store({}, device_id=1), url, token="ada", prefixes=["shared/"]) as client:
        received = Received(client)
        await client.caught_up()
        await client.subscribe(["shared/", "user/ada/"])
        assert received.keys == ["shared/s", "user/ada/a"]  # here before subscribe returned
        assert client.prefixes == ("shared/", "user/ada/")
        await write(url, 8, ("user/ada/c", 3), ("shared/t", 4))
        await client.caught_up()
        assert received.keys == ["shared/s", "user/ada/a", "user/ada/c", "shared/t"]
        await client.subscribe(["user/ada/"])  # shared/ no more
        await write(url, 7, ("shared/u", 5), ("user/ada/d", 6))
        await client.caught_up()
        assert received.keys[-1] == "user/ada/d"
        assert "shared/u" not in received.keys


async def test_a_prefix_the_grant_does_not_allow_brings_nothing(url: str) -> None:
    await write(url, 9, ("user/bob/secret", 1), user="bob")
    async with SyncClient(Store({}, device_id=1), url, token="ada", prefixes=[]) as client:
        received = Received(client)
        await client.wait_online()
        await client.subscribe(["user/bob/", "user/"])
        await write(url, 8, ("user/bob/more", 2), user="bob")
        await client.caught_up()
        assert received.keys == []


async def test_the_subscription_survives_a_reconnect(tmp_path: Path) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"))
    async with server.run(port=0) as url, Link(lambda: int(url.rsplit(":", 1)[1])) as proxy:
        hellos: list[Hello] = []

        def trace(traced: Traced) -> None:
            if isinstance(traced.message, Hello):
                hellos.append(traced.message)

        client = SyncClient(Store({}, device_id=1), proxy.url, prefixes=["a/"], trace=trace)
        async with client:
            received = Received(client)
            await client.wait_online()
            await client.subscribe(["b/"])
            proxy.down()  # the connection drops; the client reconnects
            proxy.up()
            await write_plain(url, ("a/x", 1), ("b/y", 2))
            await received.wait_for("b/y")
            await client.caught_up()
        assert [hello.prefixes for hello in hellos][:2] == [["a/"], ["b/"]]
        assert received.keys == ["b/y"]


async def write_plain(url: str, *changes: tuple[str, object]) -> None:
    async with SyncClient(Store({}, device_id=99), url, prefixes=[]) as writer:
        await writer.wait_online()
        for n, (key, value) in enumerate(changes, start=1):
            await writer.send(key, value, SyncRequest(key, n, 99))


async def test_a_subscribe_sent_while_offline_is_sent_once_online(tmp_path: Path) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"))
    async with server.run(port=0) as url, Link(lambda: int(url.rsplit(":", 1)[1])) as proxy:
        await write_plain(url, ("b/old", 1))
        sent: list[Any] = []
        client = SyncClient(
            Store({}, device_id=1),
            proxy.url,
            prefixes=["a/"],
            trace=lambda t: sent.append(t.message),
        )
        async with client:
            received = Received(client)
            await client.wait_online()
            proxy.down()
            client.use_prefixes(["a/", "b/"])  # offline: sent after the reconnect
            proxy.up()
            await received.wait_for("b/old")
        assert any(isinstance(m, Subscribe) and m.prefixes == ["a/", "b/"] for m in sent)


def test_prefixes_a_server_would_refuse_are_refused_by_the_client() -> None:
    store = Store(0, device_id=1)
    with pytest.raises(InvalidArgumentError, match="at most 64"):
        SyncClient(store, "ws://h", prefixes=[f"p{n}/" for n in range(65)])
    with pytest.raises(InvalidArgumentError, match="200 characters"):
        SyncClient(Store(0, device_id=2), "ws://h", prefixes=["x" * 201])


def test_the_clients_bounds_are_the_wires() -> None:
    from optisync import transport, wire

    assert transport.checked_prefixes([f"{n}" for n in range(wire.MAX_PREFIXES)]) is not None
    with pytest.raises(InvalidArgumentError):
        transport.checked_prefixes([f"{n}" for n in range(wire.MAX_PREFIXES + 1)])
    assert transport.checked_prefixes(["x" * wire.MAX_KEY_CHARS]) is not None


# -- scoped fields -------------------------------------------------------------------


@attrs.frozen
class Lists:
    mine: dict[str, bool] = attrs.field(factory=dict)
    shared: dict[str, bool] = attrs.field(factory=dict)


class TodoStore(Store[Lists]):
    mine = SyncedMapWithPush[Lists, str, bool](
        lambda state, item: state.mine.get(item, False),
        lambda state, item, done: attrs.evolve(state, mine={**state.mine, item: done}),
        scope=lambda store: f"user/{store.user}/",
    )
    shared = SyncedMapWithPush[Lists, str, bool](
        lambda state, item: state.shared.get(item, False),
        lambda state, item, done: attrs.evolve(state, shared={**state.shared, item: done}),
        scope="shared/",
    )

    def __init__(self, user: str, device_id: int) -> None:
        super().__init__(Lists(), device_id=device_id)
        self.user = user


class Everything(Store[Lists]):
    """A store with an unscoped field: it keeps receiving every key."""

    shared = SyncedMapWithPush[Lists, str, bool](
        lambda state, item: state.shared.get(item, False),
        lambda state, item, done: attrs.evolve(state, shared={**state.shared, item: done}),
        scope="shared/",
    )
    theme = SyncedValueWithPush[Lists, bool](lambda state: False, lambda state, value: state)


def test_a_scoped_wire_key_maps_back_to_its_field_and_item() -> None:
    store = TodoStore("ada", device_id=1)
    fields = store_fields(store)
    assert store.mine.wire_key("buy milk/eggs") == "user/ada/mine/buy%20milk%2Feggs"
    assert store.shared.wire_key("bread") == "shared/shared/bread"
    bound, item = fields.field_of_wire("user/ada/mine/buy%20milk%2Feggs")
    assert (bound is store.mine, item) == (True, "buy milk/eggs")
    assert fields.field_of_wire("user/bob/mine/x") == (None, None)
    assert fields.field_of_wire("mine/x") == (None, None)
    assert fields.scopes == ("user/ada/", "shared/")
    assert store_fields(Everything(Lists(), device_id=2)).scopes is None


def test_a_scope_must_end_with_a_slash() -> None:
    with pytest.raises(InvalidArgumentError, match="ending in '/'"):
        SyncedMapWithPush[Lists, str, bool](lambda s, i: False, lambda s, i, v: s, scope="shared")

    class Bad(Store[Lists]):
        mine = SyncedMapWithPush[Lists, str, bool](
            lambda s, i: False, lambda s, i, v: s, scope=lambda store: "no-slash"
        )

    with pytest.raises(InvalidArgumentError, match="'no-slash' \\(from the scope of 'mine'\\)"):
        _ = Bad(Lists()).mine.scope


async def test_two_users_each_see_their_own_list_and_the_shared_one(url: str) -> None:
    ada, bob = TodoStore("ada", device_id=1), TodoStore("bob", device_id=2)
    async with (
        ada,
        bob,
        SyncClient(ada, url, token="ada") as ada_client,
        SyncClient(bob, url, token="bob") as bob_client,
    ):
        assert ada_client.prefixes == ("user/ada/", "shared/")
        await ada_client.wait_online()
        await bob_client.wait_online()
        await ada.mine.set("ada's secret", True)
        await bob.mine.set("bob's secret", True)
        await ada.shared.set("bread", True)
        await bob.shared.set("milk", True)
        await ada_client.caught_up()
        await bob_client.caught_up()
        assert ada.state == Lists(mine={"ada's secret": True}, shared={"bread": True, "milk": True})
        assert bob.state == Lists(mine={"bob's secret": True}, shared={"bread": True, "milk": True})
    # A third device of ada's, new, replays only her keys.
    async with TodoStore("ada", device_id=3) as laptop, SyncClient(laptop, url, token="ada") as c:
        received = Received(c)
        await c.caught_up()
        assert laptop.state == Lists(
            mine={"ada's secret": True}, shared={"bread": True, "milk": True}
        )
        assert all(key.startswith(("user/ada/", "shared/")) for key in received.keys)


async def test_a_store_with_an_unscoped_field_receives_every_key(url: str) -> None:
    await write(url, 9, ("user/ada/x", 1), ("shared/s", 2))
    async with (
        Everything(Lists(), device_id=1) as store,
        SyncClient(store, url, token="ada") as client,
    ):
        received = Received(client)
        await client.caught_up()
        assert client.prefixes is None
        assert received.keys == ["user/ada/x", "shared/s"]


# -- the simulator honours prefixes too ---------------------------------------------


def test_the_simulators_link_takes_prefixes_like_the_client() -> None:
    async def main() -> tuple[Lists, Lists, list[str]]:
        network = testing.SimulatedNetwork(testing.SimulatedServer(), seed=1)
        ada, bob = TodoStore("ada", device_id=1), TodoStore("bob", device_id=2)
        ada_link, bob_link = network.device(1), network.device(2)
        assert isinstance(ada_link, SubscribesByPrefix)
        heard: list[str] = []
        async with ada, bob:
            serve(ada, ada_link)
            serve(bob, bob_link)
            ada_link.subscribe_pushes(lambda key, value, meta: heard.append(key))
            await ada.mine.set("ada's", True)
            await bob.mine.set("bob's", True)
            await bob.shared.set("milk", True)
            await network.settle()
            return ada.state, bob.state, heard

    ada, bob, heard = testing.run(main())
    assert ada == Lists(mine={"ada's": True}, shared={"milk": True})
    assert bob == Lists(mine={"bob's": True}, shared={"milk": True})
    assert sorted(heard) == ["shared/shared/milk", "user/ada/mine/ada%27s"]


def test_a_prefix_added_on_the_simulator_hands_over_what_the_link_passed() -> None:
    async def main() -> list[tuple[str, object]]:
        network = testing.SimulatedNetwork(testing.SimulatedServer(), seed=1)
        phone, laptop = network.device(1), network.device(2)
        heard: list[tuple[str, object]] = []
        phone.use_prefixes(["a/"])
        phone.subscribe_pushes(lambda key, value, meta: heard.append((key, value)))
        for n, (key, value) in enumerate([("b/x", 1), ("a/y", 2), ("b/x", 3)], start=1):
            await laptop.write(key, value, local_revision=n)
        await network.settle()
        await phone.subscribe(["a/", "b/"])
        await laptop.write("b/z", 4, local_revision=4)
        await network.settle()
        return heard

    assert testing.run(main()) == [("a/y", 2), ("b/x", 3), ("b/z", 4)]


# -- a persisted device --------------------------------------------------------------


class SharedLikes(Store[dict[str, bool]]):
    liked = SyncedMapWithPush[dict[str, bool], str, bool](
        lambda state, post: state.get(post, False),
        lambda state, post, liked: {**state, post: liked},
        scope="shared/",
    )


async def test_an_opened_device_subscribes_to_its_fields_scopes_across_restarts(
    url: str, tmp_path: Path
) -> None:
    path = tmp_path / "phone.db"
    await write(url, 9, ("user/ada/liked/x", True), ("shared/liked/a", True))
    async with open_device(SharedLikes, url, path, JsonCodec(), {}, token="ada") as phone:
        await phone.caught_up()
        assert phone.client.prefixes == ("shared/",)
        assert phone.store.state == {"a": True}
    await write(url, 8, ("user/ada/liked/y", True), ("shared/liked/b", True))
    async with open_device(SharedLikes, url, path, JsonCodec(), {}, token="ada") as phone:
        received = Received(phone.client)
        await phone.caught_up()
        assert phone.store.state == {"a": True, "b": True}
        assert received.keys == ["shared/liked/b"]  # from the saved cursor, in scope only


async def test_a_subscribe_waiting_when_the_client_closes_raises_closed_error(
    tmp_path: Path,
) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"))
    async with server.run(port=0) as url, Link(lambda: int(url.rsplit(":", 1)[1])) as proxy:
        client = SyncClient(Store({}, device_id=1), proxy.url, prefixes=["a/"])
        async with client:
            await client.wait_online()
            proxy.down()  # offline: the subscribe waits for the reconnect
            waiting = asyncio.create_task(client.subscribe(["b/"]))  # runs before or after close
        with pytest.raises(ClosedError):
            await waiting


_items = st.one_of(st.text(min_size=0, max_size=8), st.integers(-(10**6), 10**6))


@given(
    user=st.text(min_size=1, max_size=6).map(lambda u: u.replace("/", "")).filter(bool),
    mine=_items,
    shared=_items,
)
def test_every_scoped_wire_key_maps_back_to_its_field_and_item(
    user: str, mine: str | int, shared: str | int
) -> None:
    store = TodoStore(user, device_id=1)
    fields = store_fields(store)
    assert fields.field_of_wire(store.mine.wire_key(mine)) == (store.mine, mine)  # type: ignore[arg-type]
    assert fields.field_of_wire(store.shared.wire_key(shared)) == (store.shared, shared)  # type: ignore[arg-type]
