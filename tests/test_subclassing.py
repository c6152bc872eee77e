"""A Store subclass may use any ``_name``: the store's machinery is out of its namespace."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import attrs
import pytest
from fakes import KEY, Doc, DocStore, FakeServer, own_tasks

from optisync import PushOutcome, Store, StoreClosedError

# Every private name Store and its instances used before the engine split.
# Each one, defined by a subclass, used to break the store.
OLD_PRIVATE_NAMES = [
    "_bind_loop",
    "_channels",
    "_check_thread",
    "_closed",
    "_coalesce",
    "_cycle_done",
    "_delivering",
    "_device_id",
    "_emit_tap",
    "_finish",
    "_free_never_started",
    "_key_state",
    "_keys",
    "_listeners",
    "_loop",
    "_loop_thread",
    "_next_listener",
    "_notify",
    "_on_cycle_done",
    "_pending",
    "_report",
    "_run_cycle",
    "_snapshot",
    "_state",
    "_status_changed",
    "_status_listeners",
    "_tasks",
    "_take_lock_and_apply",
    "_start_cycle",
    "_send",
    "_rev",
]


def _unrelated_method(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> str:
        # An app's helper with a meaning of its own; it must never be called by the store.
        self.called.append(name)
        return f"app helper {name}"

    return method


def _subclass_with_methods() -> type[DocStore]:
    namespace: dict[str, Any] = {name: _unrelated_method(name) for name in OLD_PRIVATE_NAMES}
    return type("AppStoreWithMethods", (DocStore,), namespace)


class AppStoreWithAttributes(DocStore):
    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.called: list[str] = []
        for name in OLD_PRIVATE_NAMES:
            # Values an app might keep under these names, none of the store's types.
            setattr(self, name, {"app": name} if name.endswith("s") else [name])


def _make(kind: str, server: FakeServer) -> DocStore:
    if kind == "attributes":
        return AppStoreWithAttributes(server)
    store = _subclass_with_methods()(server)
    store.called = []  # type: ignore[attr-defined]
    return store


@pytest.mark.parametrize("kind", ["attributes", "methods"])
async def test_a_subclass_defining_every_old_private_name_runs_both_seed_flows(
    kind: str, server: FakeServer
) -> None:
    store = _make(kind, server)
    states = store.stream()
    seen: list[Doc] = []
    store.subscribe(seen.append)

    # Flow 1: three taps during a request send two requests.
    first = store.toggle()
    request1 = await server.request(1)
    store.toggle()
    store.toggle()
    request1.respond(True, server_revision=1)
    (await server.request(2)).respond(True, server_revision=2)
    await first
    assert server.log == [(True, 1), (True, 3)]
    assert store.server_revision(KEY) == 2

    # Flow 2: a push during a request prevents the follow-up.
    second = store.toggle()  # False, local revision 4
    request3 = await server.request(3)
    store.toggle()  # True, local revision 5
    assert store.push(False, server_revision=4) is PushOutcome.APPLIED
    request3.respond(False, server_revision=3)
    await second
    assert len(server.requests) == 3
    assert store.state == Doc(liked=False, revision=4)

    await store.close()
    assert store.is_closed
    assert [doc.liked for doc in seen] == [True, False, True, False, True, False]
    assert [doc async for doc in states] == seen
    assert store.finished == [None, None]
    assert store.errors == []
    assert store.called == []  # type: ignore[attr-defined]
    assert own_tasks() == set()


def test_the_store_keeps_no_single_underscore_name_of_its_own() -> None:
    store = Store(0)

    def own(name: str) -> bool:  # mangled or a dunder: out of any subclass's way
        return name.startswith("_Store__") or (name.startswith("__") and name.endswith("__"))

    instance_names = [name for name in vars(store) if not own(name)]
    class_names = [name for name in vars(Store) if name.startswith("_") and not own(name)]
    assert instance_names == []
    assert class_names == []


def test_a_subclass_may_define_names_the_store_mangles() -> None:
    @attrs.frozen
    class Note:
        text: str = ""

    class Notes(Store[Note]):
        def __init__(self) -> None:
            super().__init__(Note())
            self.__state = "the app's own"  # mangled to _Notes__state: no clash either

        def app_state(self) -> str:
            return self.__state

    notes = Notes()
    notes.emit(Note("hello"))
    assert notes.state == Note("hello")
    assert notes.app_state() == "the app's own"


class StoreWithASubscription(DocStore):
    """Extends close, as a Cubit does, to stop a listener task of its own."""

    def __init__(self, server: FakeServer) -> None:
        super().__init__(server)
        self.pushes: asyncio.Queue[bool] = asyncio.Queue()
        self.listening = asyncio.create_task(self._listen())
        self.close_timeouts: list[float | None] = []

    async def _listen(self) -> None:
        while True:
            self.emit(Doc(liked=await self.pushes.get()))

    async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        self.close_timeouts.append(timeout)
        self.listening.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.listening
        await super().close(timeout=timeout)


async def test_a_subclass_may_extend_close_and_async_with_runs_it(server: FakeServer) -> None:
    async with StoreWithASubscription(server) as store:
        states = store.stream()
        in_flight = store.toggle()
        await server.request(1)  # never answered: close cancels it
    assert store.close_timeouts == [None]
    assert store.listening.cancelled()
    assert store.is_closed
    assert not store.is_syncing(KEY)
    assert [doc.liked async for doc in states] == [True]
    with pytest.raises(StoreClosedError):
        await in_flight
    assert own_tasks() == set()


async def test_an_extended_close_passes_the_timeout_on(server: FakeServer) -> None:
    store = StoreWithASubscription(server)
    await store.close(timeout=0.5)
    assert store.close_timeouts == [0.5]
    assert store.is_closed
    assert own_tasks() == set()
