"""One declared store, unchanged, over both transports: the simulator's DeviceLink and
the library's SyncClient on a real server. Same taps, same pushes, same end state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from optisync import Store, testing
from optisync.client import SyncClient
from optisync.fields import SyncedMapWithPush, serve
from optisync.server import SqliteStorage, SyncServer
from optisync.transport import Transport


@attrs.frozen
class Todos:
    done: dict[str, bool] = attrs.field(factory=dict)


class TodoStore(Store[Todos]):
    done = SyncedMapWithPush[Todos, str, bool](
        lambda todos, item: todos.done.get(item, False),
        lambda todos, item, done: attrs.evolve(todos, done={**todos.done, item: done}),
    )


Pair = tuple[tuple[TodoStore, Transport], tuple[TodoStore, Transport]]


@asynccontextmanager
async def on_the_simulator(tmp_path: Path) -> AsyncIterator[Pair]:
    network = testing.SimulatedNetwork(testing.SimulatedServer(), seed=1)
    phone, laptop = TodoStore(Todos(), device_id=1), TodoStore(Todos(), device_id=2)
    phone_link, laptop_link = network.device(1), network.device(2)
    serve(phone, phone_link)
    serve(laptop, laptop_link)
    async with phone, laptop:
        yield (phone, phone_link), (laptop, laptop_link)


@asynccontextmanager
async def on_the_server(tmp_path: Path) -> AsyncIterator[Pair]:
    async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3")).run(port=0) as url:
        phone, laptop = TodoStore(Todos(), device_id=1), TodoStore(Todos(), device_id=2)
        phone_client, laptop_client = SyncClient(phone, url), SyncClient(laptop, url)
        async with phone, laptop, phone_client, laptop_client:
            await phone_client.wait_online(timeout=10)
            await laptop_client.wait_online(timeout=10)
            yield (phone, phone_client), (laptop, laptop_client)


Wiring = Callable[[Path], AbstractAsyncContextManager[Pair]]


Outcome = tuple[Todos, Todos, int]


async def scenario(wiring: Wiring, tmp_path: Path) -> Outcome:
    async with wiring(tmp_path) as ((phone, phone_link), (laptop, laptop_link)):
        first = phone.done.set("milk", True)  # request 1
        phone.done.set("milk", False)  # coalesced: the follow-up
        phone.done.set("milk", True)
        await first
        await laptop_link.caught_up()
        await laptop.done.set("eggs", True)
        await phone_link.caught_up()
        return phone.state, laptop.state, phone.done.server_revision("eggs")


@pytest.mark.parametrize(
    ("wiring", "run"),
    [(on_the_simulator, testing.run), (on_the_server, asyncio.run)],  # virtual time, real time
    ids=["simulator", "server"],
)
def test_the_same_store_syncs_the_same_over_either_transport(
    wiring: Wiring, run: Callable[[Coroutine[Any, Any, Outcome]], Outcome], tmp_path: Path
) -> None:
    phone, laptop, eggs_revision = run(scenario(wiring, tmp_path))
    assert phone == laptop == Todos({"milk": True, "eggs": True})
    assert eggs_revision == 3  # milk: request 1 and one follow-up; then eggs
