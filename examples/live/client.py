"""A device of the live demo: one declared field, opened with :func:`optisync.device.open_device`.

The library does the work: the field ``values`` of :class:`LiveStore` is sent
and fed with pushes by :class:`optisync.client.SyncClient`, and a refused
write reloads its item (the field's ``on_refused="reload"``); the
:class:`~optisync.outbox.Outbox` keeps a change made offline and sends it
once the server is back; :mod:`optisync.persistence` saves the state, the
revisions, the unsent changes and the replay position, and the storage file
is locked while it is open.

:class:`LiveDevice` adds what the demo and its tests read: item-level
helpers, a way to wait for a condition, and the outcome of each push for the
timeline.

Example:
    >>> import asyncio, tempfile
    >>> from pathlib import Path
    >>> from examples.live.client import LiveDevice
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> folder = Path(tempfile.mkdtemp())
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         async with (
    ...             LiveDevice.open(url, folder / "phone.sqlite3") as phone,
    ...             LiveDevice.open(url, folder / "laptop.sqlite3") as laptop,
    ...         ):
    ...             await phone.toggle("like")
    ...             await laptop.wait_until(lambda: laptop.value("like") is True)
    ...             print(phone.values, laptop.revision("like"))
    >>> asyncio.run(main())
    {'like': True} 1
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from optisync import PushMetadata, PushOutcome, Store, StoreClosedError
from optisync.client import Traced
from optisync.device import Device, open_device
from optisync.fields import SyncedMapWithPush
from optisync.persistence import AttrsCodec
from optisync.transport import store_key, wire_key

__all__ = ["LiveDevice", "LiveState", "LiveStore", "NotABooleanError", "item_of", "wire_of"]

K = TypeVar("K")


@attrs.frozen
class LiveState:
    """A device's state: each item's value (a JSON value).

    Example:
        >>> from examples.live.client import LiveState
        >>> LiveState({"like": True}).values["like"]
        True
    """

    values: Mapping[str, Any] = attrs.field(factory=dict)


class LiveStore(Store[LiveState]):
    """The store of a device: one field, ``values``, synced with the server that pushes.

    Args:
        state: the restored state.
        device_id: the restored device id.
        on_error: gets the errors of syncs nobody awaits, and failed reloads.

    Example:
        >>> from examples.live.client import LiveState, LiveStore
        >>> LiveStore(LiveState({"color": "red"}), device_id=1).values["color"]
        'red'
    """

    values = SyncedMapWithPush[LiveState, str, Any](
        lambda state, item: state.values.get(item),
        lambda state, item, value: LiveState({**state.values, item: value}),
    )

    def __init__(
        self,
        state: LiveState,
        *,
        device_id: int,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> None:
        super().__init__(state, device_id=device_id)
        self.report_error = on_error
        #: What the newest push of each key did; the client's trace does not tell
        #: it when the client serves declared fields (read by the timeline).
        self.push_outcomes: dict[Hashable, PushOutcome] = {}

    def on_error(self, error: BaseException) -> None:
        """Hand ``error`` to ``on_error`` (the store logs it without one)."""
        if self.report_error is None:
            super().on_error(error)
        else:
            self.report_error(error)

    def server_push(
        self,
        *,
        key: K,
        push_metadata: PushMetadata,
        apply_server_push_to_state: Callable[[LiveState, K, int], LiveState | None],
        get_server_revision_from_state: Callable[[K], int],
    ) -> PushOutcome:
        """Apply a push as :class:`~optisync.Store` does, and remember its outcome."""
        outcome = super().server_push(
            key=key,
            push_metadata=push_metadata,
            apply_server_push_to_state=apply_server_push_to_state,
            get_server_revision_from_state=get_server_revision_from_state,
        )
        self.push_outcomes[key] = outcome
        return outcome


def wire_of(item: str) -> str:
    """The key the server keeps ``item`` under (what the database shows).

    Example:
        >>> from examples.live.client import wire_of
        >>> wire_of("like"), wire_of("a b")
        ('values/like', 'values/a%20b')
    """
    return wire_key(LiveStore.values.key(item))


def item_of(wire: str) -> str | None:
    """The item a server key holds (None: a key of no item of ``values``).

    Example:
        >>> from examples.live.client import item_of
        >>> item_of("values/a%20b"), item_of("theme")
        ('a b', None)
    """
    found, item = LiveStore.values.item_of(store_key(wire))
    return item if found and isinstance(item, str) else None


class NotABooleanError(TypeError):
    """:meth:`LiveDevice.toggle` of an item that holds something other than a boolean.

    Example:
        >>> from examples.live.client import NotABooleanError
        >>> str(NotABooleanError("color is not a boolean: set it instead"))
        'color is not a boolean: set it instead'
    """


class LiveDevice:
    """One device: its :class:`LiveStore` and the parts :func:`~optisync.device.open_device` made.

    Open one with :meth:`open` (``async with``).

    Attributes:
        store: the store.
        client: its :class:`~optisync.client.SyncClient`.
        outbox: its :class:`~optisync.outbox.Outbox`.
    """

    def __init__(self, device: Device[LiveStore]) -> None:
        self.device = device
        self.store = device.store
        self.client = device.client
        self.outbox = device.outbox
        self._waiters: set[asyncio.Future[None]] = set()
        self.store.subscribe(lambda state: self.wake())
        self.store.subscribe_sync_status(lambda key: self.wake())
        self.client.subscribe_status(lambda online: self.wake())

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        url: str,
        storage: Path,
        *,
        trace: Callable[[Traced], object] | None = None,
        on_error: Callable[[BaseException], object] | None = None,
    ) -> AsyncIterator[LiveDevice]:
        """Open the device saved in ``storage`` (made if missing), connected to ``url``.

        Raises:
            optisync.device.StorageInUseError: another device has ``storage`` open.
        """
        store_class = functools.partial(LiveStore, on_error=on_error)
        opened: list[LiveDevice] = []

        def traced(event: Traced) -> None:
            if trace is not None:
                trace(event)
            for device in opened:
                device.wake()  # a condition may read what the message told

        initial = LiveState()
        codec = AttrsCodec(LiveState)
        async with open_device(store_class, url, storage, codec, initial, trace=traced) as parts:
            opened.append(cls(parts))
            try:
                yield opened[0]
            finally:
                opened[0].wake()

    # -- what the app reads ---------------------------------------------------------

    @property
    def state(self) -> LiveState:
        """The store's state."""
        return self.store.state

    @property
    def values(self) -> Mapping[str, Any]:
        """Every item's value, as the device shows it."""
        return self.store.state.values

    def value(self, item: str) -> Any:
        """The value shown for ``item`` (None: it has none)."""
        return self.values.get(item)

    def revision(self, item: str) -> int:
        """The newest server revision the device knows for ``item`` (-1: none)."""
        return self.store.values.server_revision(item)

    @property
    def device_id(self) -> int:
        """The device id, kept by the storage file."""
        return self.store.device_id

    @property
    def online(self) -> bool:
        """Connected and caught up (the replay done)."""
        return self.client.online

    @property
    def unconfirmed_items(self) -> frozenset[str]:
        """Items whose latest change the server has not acknowledged yet (in the outbox)."""
        pending = self.outbox.pending_keys()
        return frozenset(item for key, item in self.store.values.items() if key in pending)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds; checked after every change, message and drop."""
        while not condition():
            if self.store.is_closed:
                raise StoreClosedError("the device closed while waiting")
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    # -- what the app does -----------------------------------------------------------

    def set_value(self, item: str, value: Any) -> Awaitable[None]:
        """Show ``value`` for ``item`` at once and sync it (a tap while one is in flight
        is coalesced; offline, the outbox keeps it)."""
        return self.store.values.set(item, value)

    def toggle(self, item: str) -> Awaitable[None]:
        """Flip a boolean item (absent counts as False): the like button.

        Raises:
            NotABooleanError: the item holds something else.
        """
        value = self.value(item)
        if value is not None and not isinstance(value, bool):
            raise NotABooleanError(f"{item} is not a boolean: set it instead")
        return self.set_value(item, not value)

    def wake(self) -> None:
        """Make every :meth:`wait_until` check its condition again (done on every change)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
