"""Declared fields served by a transport (``optisync.fields.serve``) over the DeviceLink.

The field has no ``@sender`` and no push handler: the link sends it and delivers
its pushes. Plus the wire-key codec those fields rely on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from optisync import InvalidArgumentError, PushMetadata, Store, testing
from optisync.fields import OnRefused, SyncedMapWithPush, SyncedValueWithPush, serve, store_fields
from optisync.testing import DeviceLink, NetworkFaults, SimulatedNetwork, SimulatedServer
from optisync.transport import Ack, PushListener, SyncRequest, store_key, wire_key

Likes = dict[str, bool]


def liked_of(state: Likes, post: str) -> bool:
    return state.get(post, False)


def with_liked(state: Likes, post: str, liked: bool) -> Likes:
    return {**state, post: liked}


class Phone(Store[Likes]):
    liked = SyncedMapWithPush[Likes, str, bool](liked_of, with_liked)


class KeepingPhone(Store[Likes]):
    liked = SyncedMapWithPush[Likes, str, bool](liked_of, with_liked, on_refused="keep")


class AnyItems(Store[dict[Hashable, bool]]):
    liked = SyncedMapWithPush[dict[Hashable, bool], Hashable, bool](
        lambda state, item: state.get(item, False), lambda state, item, v: {**state, item: v}
    )


def world(faults: NetworkFaults | None = None) -> SimulatedNetwork:
    return SimulatedNetwork(SimulatedServer(), faults=faults, seed=3)


async def write_from(link: DeviceLink, post: str, liked: bool, local_revision: int = 1) -> int:
    """Another device likes ``post``: the server's revision of the write."""
    request = SyncRequest(("liked", post), local_revision, link.device_id)
    ack = await link.send(wire_key(("liked", post)), liked, request)
    return ack.server_revision


class RefusingLink:
    """A Transport over a DeviceLink whose server refuses every write (not a ConnectionError)."""

    def __init__(self, link: DeviceLink) -> None:
        self.link = link
        self.refused: list[str] = []

    @property
    def device_id(self) -> int:
        return self.link.device_id

    async def send(self, key: str, value: Any, request: SyncRequest) -> Ack[Any]:
        self.refused.append(key)
        raise PermissionError(f"the server refuses {key}")

    async def get(self, key: str) -> tuple[Any, int]:
        return await self.link.get(key)

    def subscribe_pushes(self, listener: PushListener) -> Callable[[], None]:
        return self.link.subscribe_pushes(listener)

    @property
    def online(self) -> bool:
        return self.link.online

    def subscribe_status(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        return self.link.subscribe_status(listener)

    async def caught_up(self) -> None:
        await self.link.caught_up()


# -- sending and receiving -----------------------------------------------------------


def test_a_set_with_no_sender_is_sent_through_the_link_and_its_revision_learnt() -> None:
    async def main() -> None:
        network = world(NetworkFaults(request_latency=(0.1, 0.1)))
        async with Phone({}, device_id=1) as phone:
            serve(phone, network.device(1))
            await phone.liked.set("post", True)
            [commit] = network.server.log
            assert (commit.key, commit.value, commit.device_id) == ("liked/post", True, 1)
            assert phone.liked.server_revision("post") == commit.server_revision == 1
            assert phone.server_revision(("liked", "post")) == 1
        network.close()

    testing.run(main())


def test_a_push_from_another_device_reaches_the_field() -> None:
    async def main() -> None:
        network = world(NetworkFaults(push_latency=(0.2, 0.5)))
        async with Phone({}, device_id=1) as phone:
            serve(phone, network.device(1))
            revision = await write_from(network.device(2), "post", True)
            assert phone.state == {}
            await network.settle()
            assert phone.state == {"post": True}
            assert phone.liked.server_revision("post") == revision
        network.close()

    testing.run(main())


def test_the_echo_of_an_older_tap_is_recognised_and_does_not_bring_that_tap_back() -> None:
    # The phone likes, then unlikes while the like is on its way. The like's push
    # (device 1's own, older than the unlike) arrives before any answer: a self-echo,
    # whose revision is kept and whose value is not shown.
    async def main() -> None:
        faults = NetworkFaults(request_latency=(1.0, 1.0), push_latency=(0.5, 0.5))
        network = world(faults)
        async with Phone({}, device_id=1) as phone:
            link = network.device(1)
            serve(phone, link)
            loop = asyncio.get_running_loop()
            seen: list[tuple[bool, PushMetadata, Likes, int, float]] = []

            def after_serve(key: str, value: Any, meta: PushMetadata) -> None:
                revision = phone.liked.server_revision("post")
                seen.append((value, meta, phone.state, revision, loop.time()))

            link.subscribe_pushes(after_serve)
            shown: list[Likes] = []
            phone.subscribe(shown.append)
            liked = phone.liked.set("post", True)
            phone.liked.set("post", False)
            await liked
            await network.settle()
            value, meta, state, revision, time = seen[0]
            assert time < 2.0  # before the like's answer: only the echo told the revision
            assert (value, meta.device_id, meta.local_revision) == (True, 1, 1)
            assert state == {"post": False}  # not applied
            assert revision == meta.server_revision == 1  # but its revision is known
            assert shown == [{"post": True}, {"post": False}]
            assert phone.state == {"post": False}
            assert network.server.value("liked/post") is False
        network.close()

    testing.run(main())


# -- refused writes ----------------------------------------------------------------


def refused_scenario(store_class: type[Phone | KeepingPhone]) -> tuple[Likes, list[str]]:
    """Another device likes the post; this phone's unlike is refused: its state, what was sent."""

    async def main() -> tuple[Likes, list[str]]:
        network = world()
        async with store_class({}, device_id=1) as phone:
            link = RefusingLink(network.device(1))
            serve(phone, link)
            await write_from(network.device(2), "post", True)
            await network.settle()
            assert phone.state == {"post": True}
            with pytest.raises(PermissionError):
                await phone.liked.set("post", False)
            await network.settle()
            state = phone.state
        network.close()
        return state, link.refused

    return testing.run(main())


def test_a_refused_write_reloads_the_key_from_the_server_by_default() -> None:
    state, refused = refused_scenario(Phone)
    assert refused == ["liked/post"]
    assert state == {"post": True}  # what the server holds, not the refused tap


def test_a_refused_write_is_kept_on_screen_with_on_refused_keep() -> None:
    on_refused: OnRefused = "keep"
    assert KeepingPhone.liked.on_refused == on_refused
    state, refused = refused_scenario(KeepingPhone)
    assert refused == ["liked/post"]
    assert state == {"post": False}


def test_a_write_that_fails_offline_without_an_outbox_is_reloaded_once_online() -> None:
    async def main() -> None:
        network = world()
        async with Phone({}, device_id=1) as phone:
            link = network.device(1)
            serve(phone, link)
            await write_from(network.device(2), "post", True)
            await network.settle()
            link.disconnect()
            with pytest.raises(ConnectionError, match="offline"):
                await phone.liked.set("post", False)
            await network.settle()
            assert phone.state == {"post": False}  # nothing to reload from while offline
            assert network.server.value("liked/post") is True
            link.connect(lambda commit: None)
            await network.settle()
            assert phone.state == {"post": True}
            assert phone.liked.server_revision("post") == 1
        network.close()

    testing.run(main())


# -- what serve and set refuse --------------------------------------------------------


def test_an_item_that_is_not_str_or_int_is_refused_at_set() -> None:
    async def main() -> None:
        network = world()
        async with AnyItems({}, device_id=1) as store:
            serve(store, network.device(1))
            with pytest.raises(InvalidArgumentError, match="item ids must be str or int"):
                store.liked.set(1.5, True)
            with pytest.raises(InvalidArgumentError):
                store.liked.set(True, True)  # a bool would equal the item 1
            assert store.state == {}
            await network.settle()
            assert network.server.revision == 0
        network.close()

    testing.run(main())


def test_serve_refuses_a_transport_of_another_device() -> None:
    network = world()
    phone = Phone({}, device_id=1)
    with pytest.raises(InvalidArgumentError, match="device id 2 is not the store's 1"):
        serve(phone, network.device(2))
    assert store_fields(phone).transport is None
    network.close()


# -- a restart on the same link -------------------------------------------------------


def test_a_restarted_store_served_on_the_same_link_gets_what_it_missed_from_the_replay() -> None:
    async def main() -> None:
        network = world()
        link, other = network.device(1), network.device(2)
        old = Phone({}, device_id=1)
        stop = serve(old, link)
        stop()  # the old store stops listening; it closes
        await old.close()
        await write_from(other, "post", True)  # reaches the link, not a store
        await network.settle()
        async with Phone(old.state, device_id=1) as new:
            serve(new, link)
            assert new.state == {}
            link.connect(lambda commit: None, since=0)  # the replay from the saved position
            await network.settle()
            assert new.state == {"post": True}
            assert not link.is_closed
        network.close()

    testing.run(main())


# -- the wire-key codec --------------------------------------------------------------

names = st.text(min_size=1)
items = st.text() | st.integers()
keys: st.SearchStrategy[Hashable] = names | st.tuples(names, items)


@given(key=keys)
@example(key=("liked", "a/b"))
@example(key=("liked", "100%"))
@example(key=("liked", "#1"))
@example(key=("liked", 1))
@example(key=("liked", -1))
@example(key=("liked", ""))
@example(key=("lïkéd", "日本/ß"))
@example(key="a/b")
@example(key="#7")
def test_store_key_inverts_wire_key(key: Hashable) -> None:
    wire = wire_key(key)
    assert isinstance(wire, str)
    back = store_key(wire)
    assert back == key
    assert type(back) is type(key)
    if isinstance(key, tuple):
        assert isinstance(back, tuple)
        assert type(back[1]) is type(key[1])  # "1" and 1 stay apart


@given(first=keys, second=keys)
@example(first=("liked", "1"), second=("liked", 1))
@example(first=("liked", "#1"), second=("liked", 1))
@example(first="liked/post", second=("liked", "post"))
@example(first=("a/b", "c"), second=("a", "b/c"))
@example(first="liked", second=("liked", ""))
def test_distinct_keys_have_distinct_wire_keys(first: Hashable, second: Hashable) -> None:
    same_key = first == second and type(first) is type(second)
    if isinstance(first, tuple) and isinstance(second, tuple) and same_key:
        same_key = type(first[1]) is type(second[1])
    assert (wire_key(first) == wire_key(second)) == same_key


async def test_a_served_store_takes_a_replaced_servers_replay_after_its_reset(
    tmp_path: Path,
) -> None:
    """The server's database was replaced (new, or restored from a backup): the client's
    position names another generation, the server says reset, and the fields forget the
    old revisions so that the new database's replay is applied, not taken as stale."""
    from optisync.client import SyncClient
    from optisync.server import SqliteStorage, SyncServer

    class Theme(Store[str]):
        theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)

    old = SyncServer(SqliteStorage(tmp_path / "old.sqlite3"))
    async with old.run(port=0) as url, SyncClient(Store[int](0, device_id=9), url) as writer:
        await writer.wait_online(timeout=10)
        for local_revision in (1, 2, 3):
            await writer.send("theme", "old", SyncRequest("theme", local_revision, 9))
        old_generation = writer.generation
    async with SyncServer(SqliteStorage(tmp_path / "new.sqlite3")).run(port=0) as url:
        async with SyncClient(Store[int](0, device_id=9), url) as writer:
            await writer.wait_online(timeout=10)
            await writer.send("theme", "new", SyncRequest("theme", 1, 9))
        resets: list[str] = []
        async with Theme("old", device_id=1) as store:
            store.theme.restore(None, 3)  # what the old database said
            client = SyncClient(store, url)
            client.resume(3, old_generation)
            client.subscribe_reset(lambda: resets.append("reset"))
            async with client:
                await client.wait_online(timeout=10)
                await client.caught_up()
            assert resets == ["reset"]
            assert store.state == "new"
            assert store.theme.server_revision() == 1
