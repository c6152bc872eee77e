"""Partial sync on the raw protocol: prefixes in the hello, subscribe, grants."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from optisync.server import Change, Grant, Limits, SqliteStorage, Storage, SyncServer
from optisync.server.security import Authenticator
from optisync.wire import Hello
from tests.server.conftest import Connect, RawDevice


class PlainStorage(SqliteStorage):
    """A storage whose latest_after cannot narrow to prefixes (one written earlier)."""

    async def latest_after(self, revision: int, limit: int) -> list[Change]:  # type: ignore[override]
        return await super().latest_after(revision, limit)


@pytest.fixture(params=["narrowing", "plain", "postgres"])
def storage(request: pytest.FixtureRequest, database: Path) -> Storage:
    """Every test here on SQLite narrowing the replay itself, on a storage that cannot
    (the server filters), and on PostgreSQL (when the test server is there)."""
    if request.param == "postgres":
        from optisync.server.postgres import PostgresStorage

        return PostgresStorage(request.getfixturevalue("postgres_dsn"))
    return (SqliteStorage if request.param == "narrowing" else PlainStorage)(database)


@pytest.fixture
async def server(
    storage: Storage, limits: Limits, authenticate: Authenticator
) -> AsyncIterator[tuple[SyncServer, str]]:
    sync_server = SyncServer(storage, limits=limits, authenticate=authenticate)
    async with sync_server.run(port=0) as url:
        yield sync_server, url


async def subscribe(device: RawDevice, prefixes: list[str], request_id: int = 100) -> list[Any]:
    """Send a subscribe; the pushes that came before its answer, and the answer."""
    await device.send({"type": "subscribe", "request_id": request_id, "prefixes": prefixes})
    pushes = []
    while (message := await device.receive())["type"] == "push":
        pushes.append(message)
    assert message == {
        "type": "subscribed",
        "request_id": request_id,
        "server_revision": message["server_revision"],
    }
    return [*pushes, message]


def keys(pushes: Iterable[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(p["key"], p["server_revision"]) for p in pushes if p["type"] == "push"]


async def probe(device: RawDevice) -> list[tuple[str, int]]:
    """Every push queued for the device before now (a get's answer comes after them)."""
    device.pushes.clear()
    await device.get("shared/probe")
    return keys(device.pushes)


_writers = itertools.count(1000)


async def write(connect_device: Connect, *changes: tuple[str, object]) -> None:
    """Write ``changes`` from a new device (it receives nothing)."""
    writer = await connect_device(next(_writers), prefixes=[])
    for n, (key, value) in enumerate(changes, start=1):
        await writer.set(key, value, local_revision=n)


async def test_a_hello_with_prefixes_replays_and_pushes_only_their_keys(
    connect_device: Connect,
) -> None:
    await write(connect_device, ("a/1", 1), ("b/1", 2), ("ab", 3))
    device = await connect_device(1, prefixes=["a/"])
    everything = await connect_device(2)
    nothing = await connect_device(3, prefixes=[])
    assert keys(device.replayed) == [("a/1", 1)]
    assert keys(everything.replayed) == [("a/1", 1), ("b/1", 2), ("ab", 3)]
    assert nothing.replayed == []
    await write(connect_device, ("b/2", 4), ("a/2", 5))
    assert await probe(device) == [("a/2", 5)]
    assert await probe(nothing) == []


async def test_a_subscribe_brings_the_new_prefixes_keys_from_revision_zero(
    connect_device: Connect,
) -> None:
    await write(connect_device, ("a/1", 1), ("b/1", 2), ("b/1", 3), ("c/1", 4))
    device = await connect_device(1, prefixes=["a/"])
    assert keys(device.replayed) == [("a/1", 1)]
    answer = await subscribe(device, ["a/", "b/"])
    assert keys(answer) == [("b/1", 3)]  # once, at its newest; a/ is not sent again
    assert answer[-1]["server_revision"] >= 3
    await write(connect_device, ("b/2", 5), ("c/2", 6))
    assert [key for key, _ in await probe(device)] == ["b/2"]


async def test_a_subscribe_that_removes_a_prefix_stops_its_pushes(connect_device: Connect) -> None:
    device = await connect_device(1, prefixes=["a/", "b/"])
    await write(connect_device, ("a/1", 1), ("b/1", 2))
    assert [key for key, _ in await probe(device)] == ["a/1", "b/1"]
    assert keys(await subscribe(device, ["b/"])) == []
    await write(connect_device, ("a/2", 1), ("b/2", 2))
    assert [key for key, _ in await probe(device)] == ["b/2"]


async def test_a_prefix_added_after_live_pushes_of_other_keys_brings_its_history(
    connect_device: Connect,
) -> None:
    # The device's cursor moved past b/1 (pushes of a/ keys after it): b/1 is
    # history all the same, sent by the subscribe.
    device = await connect_device(1, prefixes=["a/"])
    await write(connect_device, ("b/1", 1), ("a/1", 2))
    assert [key for key, _ in await probe(device)] == ["a/1"]
    assert [key for key, _ in keys(await subscribe(device, ["a/", "b/"]))] == ["b/1"]


async def test_subscribing_to_every_key_with_an_empty_prefix(connect_device: Connect) -> None:
    await write(connect_device, ("a/1", 1), ("b/1", 2))
    device = await connect_device(1, prefixes=[])
    assert [key for key, _ in keys(await subscribe(device, [""]))] == ["a/1", "b/1"]


async def test_too_many_or_bad_prefixes_are_refused_with_their_code(
    connect_device: Connect,
) -> None:
    device = await connect_device(1, prefixes=["a/"])
    many = [f"p{n}/" for n in range(65)]
    await device.send({"type": "subscribe", "request_id": 5, "prefixes": many})
    error = await device.receive()
    assert (error["type"], error["code"], error["request_id"]) == ("error", "too_many_prefixes", 5)
    await device.send({"type": "subscribe", "request_id": 6, "prefixes": ["x" * 201]})
    assert (await device.receive())["code"] == "bad_prefix"
    await device.send({"type": "subscribe", "request_id": 7, "prefixes": ["a\n"]})
    assert (await device.receive())["code"] == "bad_prefix"


async def test_a_hello_with_too_many_prefixes_is_refused(url: str) -> None:
    async with connect(url) as connection:
        device = RawDevice(connection, 1)
        many = [f"p{n}/" for n in range(65)]
        await device.send({"type": "hello", "device_id": 1, "since": 0, "prefixes": many})
        assert (await device.receive())["code"] == "too_many_prefixes"


# -- grants: the prefixes never widen what a device may read -----------------------


async def only_mine(hello: Hello) -> Grant:
    mine = f"user/{hello.device_id}/"
    return Grant(str(hello.device_id), can_read=lambda key: key.startswith((mine, "shared/")))


@pytest.mark.parametrize("authenticate", [only_mine])
async def test_a_prefix_outside_the_grant_brings_nothing(connect_device: Connect) -> None:
    await write(connect_device, ("user/2/secret", 1), ("user/1/note", 2), ("shared/x", 3))
    device = await connect_device(1, prefixes=["user/2/"])
    assert device.replayed == []
    assert keys(await subscribe(device, ["user/", "shared/"])) == [
        ("user/1/note", 2),
        ("shared/x", 3),
    ]
    await write(connect_device, ("user/2/secret", 4), ("user/1/note", 5))
    assert [key for key, _ in await probe(device)] == ["user/1/note"]


# -- a commit racing the catch-up: delivered once -----------------------------------


class GatedStorage(SqliteStorage):
    """Holds one call of ``latest_after`` (by number) before or after its read."""

    def __init__(self, path: Path, call: int, where: str) -> None:
        super().__init__(path)
        self.calls = 0
        self.call, self.where = call, where
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def latest_after(
        self, revision: int, limit: int, *, prefixes: Iterable[str] | None = None
    ) -> list[Change]:
        self.calls += 1
        gated = self.calls == self.call
        if gated and self.where == "before":
            self.held.set()
            await self.release.wait()
        page = await super().latest_after(revision, limit, prefixes=prefixes)
        if gated and self.where == "after":
            self.held.set()
            await self.release.wait()
        return page


@pytest.fixture
async def gated(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[GatedStorage, str]]:
    storage = GatedStorage(tmp_path / "gated.sqlite3", *request.param)
    async with SyncServer(storage).run(port=0) as url:
        yield storage, url


async def raw_device(url: str, device_id: int, **hello: Any) -> RawDevice:
    device = RawDevice(await connect(url), device_id)
    await device.send({"type": "hello", "device_id": device_id, "since": 0, **hello})
    assert (await device.receive())["type"] == "welcome"
    while (message := await device.receive())["type"] == "push":
        device.replayed.append(message)
    assert message["type"] == "ready"
    return device


# Calls of latest_after: 1 the writer's hello replay, 2 the reader's, 3 the
# catch-up's history, 4 and on its replay of the new scope from the cursor.
@pytest.mark.parametrize(
    "gated",
    [(3, "before"), (3, "after"), (4, "before"), (4, "after")],
    indirect=True,
    ids=["history-before-read", "history-after-read", "replay-before-read", "replay-after-read"],
)
async def test_a_commit_racing_the_catch_up_is_delivered_exactly_once(
    gated: tuple[GatedStorage, str],
) -> None:
    storage, url = gated
    writer = await raw_device(url, 9, prefixes=[])
    await writer.set("b/old", 0, local_revision=1)
    reader = await raw_device(url, 1, prefixes=["a/"])
    await writer.set("a/1", 1, local_revision=2)
    await reader.send({"type": "subscribe", "request_id": 1, "prefixes": ["a/", "b/"]})
    await storage.held.wait()
    # Commits land while the catch-up is held: one in the new prefix, one in the old.
    await writer.set("b/new", 2, local_revision=3)
    await writer.set("a/2", 3, local_revision=4)
    await writer.set("b/old", 4, local_revision=5)
    storage.release.set()
    received = [message async for message in _until_subscribed(reader)]
    after = await probe(reader)
    await writer.connection.close()
    await reader.connection.close()
    pushes = keys(received) + after
    assert pushes.count(("b/new", 3)) == 1
    assert pushes.count(("a/2", 4)) == 1
    assert pushes.count(("b/old", 5)) == 1
    assert ("b/old", 1) not in pushes or pushes.index(("b/old", 1)) < pushes.index(("b/old", 5))
    assert len(pushes) == len(set(pushes))
    live = [revision for _, revision in pushes if revision > 2]
    assert live == sorted(live)  # pushes past the cursor arrive in revision order


async def _until_subscribed(device: RawDevice) -> AsyncIterator[dict[str, Any]]:
    while (message := await device.receive())["type"] != "subscribed":
        assert message["type"] == "push", message
        yield message


# -- any subscription change, with commits racing any read of its catch-up ---------


class ArmedStorage(SqliteStorage):
    """Holds the ``latest_after`` call numbered ``armed`` (before or after its read)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.calls, self.armed, self.before = 0, 0, True
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def latest_after(
        self, revision: int, limit: int, *, prefixes: Iterable[str] | None = None
    ) -> list[Change]:
        self.calls += 1
        gated = self.calls == self.armed
        if gated and self.before:
            self.held.set()
            await self.release.wait()
        page = await super().latest_after(revision, limit, prefixes=prefixes)
        if gated and not self.before:
            self.held.set()
            await self.release.wait()
        return page


KEYS = ["a/1", "a/2", "b/1", "b/2", "c/1"]
PREFIX_SETS = st.lists(st.sampled_from(["a/", "b/", "c/", "a/1"]), max_size=3, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(  # a prefix that covers one the device had: its keys are not sent again
    before=["a/1", "a/2"], first=["a/1"], then=["a/"], held_call=1, held_before_read=True, racing=[]
)
@given(
    before=st.lists(st.sampled_from(KEYS), max_size=6),
    first=PREFIX_SETS,
    then=PREFIX_SETS,
    held_call=st.integers(1, 3),
    held_before_read=st.booleans(),
    racing=st.lists(st.sampled_from(KEYS), max_size=4),
)
def test_a_subscribe_delivers_its_scope_once_whatever_commits_race_it(
    before: list[str],
    first: list[str],
    then: list[str],
    held_call: int,
    held_before_read: bool,
    racing: list[str],
) -> None:
    asyncio.run(
        _subscribe_with_racing_commits(before, first, then, held_call, held_before_read, racing)
    )


async def _subscribe_with_racing_commits(
    before: list[str],
    first: list[str],
    then: list[str],
    held_call: int,
    held_before_read: bool,
    racing: list[str],
) -> None:
    storage = ArmedStorage()
    async with SyncServer(storage, limits=Limits(replay_page=2)).run(port=0) as url:
        writer = await raw_device(url, 9, prefixes=[])
        revision = 0
        for key in before:
            revision += 1
            await writer.set(key, revision, local_revision=revision)
        reader = await raw_device(url, 1, prefixes=first)
        pushes = keys(reader.replayed)
        storage.armed, storage.before = storage.calls + held_call, held_before_read
        await reader.send({"type": "subscribe", "request_id": 1, "prefixes": then})
        collect = asyncio.create_task(_collect_until_subscribed(reader))
        held = asyncio.create_task(storage.held.wait())
        await asyncio.wait({collect, held}, return_when=asyncio.FIRST_COMPLETED)
        for key in racing:  # during the catch-up if it was held, else after it
            revision += 1
            await writer.set(key, revision, local_revision=revision)
        storage.release.set()
        answered = await collect
        held.cancel()
        after = await probe(reader)
        await writer.connection.close()
        await reader.connection.close()
        newest: dict[str, int] = {}
        for change in await storage.latest_after(0, 100):
            newest[change.key] = change.server_revision
    received = pushes + keys(answered) + after
    assert len(received) == len(set(received)), received  # nothing twice
    in_scope = [key for key in KEYS if key.startswith(tuple(then))]
    seen: dict[str, int] = {}
    for key, at in received:
        seen[key] = max(at, seen.get(key, 0))
    for key in in_scope:
        assert seen.get(key, 0) == newest.get(key, 0), (key, received)  # nothing missed
    for key, _ in keys(answered):
        assert key.startswith(tuple(then)) or key.startswith(tuple(first)), key
    for key, _ in after:
        assert key.startswith(tuple(then)), key  # past the answer: the new scope only


async def _collect_until_subscribed(device: RawDevice) -> list[dict[str, Any]]:
    return [message async for message in _until_subscribed(device)]
