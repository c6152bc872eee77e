"""A device of the live demo: a :class:`~optisync.Store` on the library's client and persistence.

:class:`LiveDevice` is three library parts and a little glue:

* a ``Store[LiveState]``: each item's value and the server revision it came with;
* :class:`optisync.client.SyncClient`: connects, reconnects, says hello with the
  cursor, feeds the replay and every push to ``server_push``, sends each change;
* :mod:`optisync.persistence`: the state (cursor included) and the device id in
  an SQLite file, saved in one transaction per change.

The glue: a failed request reloads its item from the server (at once, or as
soon as the device is online again) unless the user changed it since; and a
storage file is locked while a device has it open.

Example:
    >>> import asyncio
    >>> from examples.live.client import LiveDevice
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         phone, laptop = await LiveDevice.open(url), await LiveDevice.open(url)
    ...         async with phone, laptop:
    ...             await phone.wait_online()
    ...             await laptop.wait_online()
    ...             await phone.toggle("like")
    ...             await laptop.wait_until(lambda: laptop.state.value("like") is True)
    ...             print(phone.state.values, laptop.state.revisions)
    >>> asyncio.run(main())
    {'like': True} {'like': 1}
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs

from optisync import Store, StoreClosedError
from optisync.client import ClientConnectionError, RequestRefusedError, SyncClient, Traced
from optisync.persistence import AttrsCodec, Persistence, open_sqlite
from optisync.wire import Push

__all__ = ["LiveDevice", "LiveState", "StorageInUseError"]


@attrs.frozen
class LiveState:
    """A device's state: item values, their server revisions, and the replay cursor.

    ``reload`` lists the items whose value the server may not have when the
    device closed; they are reloaded after a restart.

    Example:
        >>> from examples.live.client import LiveState
        >>> state = LiveState().with_value("like", True)
        >>> state.value("like"), state.revisions
        (True, {})
        >>> state.with_server_value("like", False, 3).revisions
        {'like': 3}
    """

    values: Mapping[str, Any] = attrs.field(factory=dict)
    revisions: Mapping[str, int] = attrs.field(factory=dict)
    cursor: int = 0
    generation: str = ""
    reload: tuple[str, ...] = ()

    def value(self, item: str, default: Any = None) -> Any:
        """The value of ``item`` (``default`` if it has none).

        Example:
            >>> from examples.live.client import LiveState
            >>> LiveState({"like": True}).value("like"), LiveState().value("like", False)
            (True, False)
        """
        return self.values.get(item, default)

    def with_value(self, item: str, value: Any) -> LiveState:
        """This state with ``item`` set to ``value`` (an optimistic change).

        Example:
            >>> from examples.live.client import LiveState
            >>> LiveState().with_value("color", "red").values
            {'color': 'red'}
        """
        return attrs.evolve(self, values={**self.values, item: value})

    def with_server_value(self, item: str, value: Any, revision: int) -> LiveState:
        """This state with the server's ``value`` of ``item`` at ``revision`` (-1: no value).

        Example:
            >>> from examples.live.client import LiveState
            >>> LiveState().with_server_value("color", "red", 4).values
            {'color': 'red'}
            >>> LiveState({"color": "red"}).with_server_value("color", None, -1).values
            {}
        """
        values = {**self.values, item: value}
        if revision == -1:
            del values[item]
        return attrs.evolve(self, values=values, revisions={**self.revisions, item: revision})


class StorageInUseError(RuntimeError):
    """Another device (in this process or another) has the storage file open.

    Example:
        >>> from examples.live.client import StorageInUseError
        >>> str(StorageInUseError("phone.sqlite3 is in use"))
        'phone.sqlite3 is in use'
    """


def _lock(path: Path) -> int:
    """Lock ``PATH.lock`` without waiting; the lock lasts until the descriptor closes.

    Two devices on one file would share a device id: each would take the
    other's changes for echoes of its own, and the server refuses the second
    connection anyway. The lock says so before anything starts.
    """
    descriptor = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    if sys.platform == "win32":  # no flock(); the server's device-id check remains
        return descriptor
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StorageInUseError(
            f"{path} is in use by another device: give each one its own file"
        ) from None
    return descriptor


class _LiveStore(Store[LiveState]):
    def __init__(
        self, state: LiveState, device_id: int, on_error: Callable[[BaseException], object]
    ):
        super().__init__(state, device_id=device_id)
        self._report = on_error

    def on_error(self, error: BaseException) -> None:
        self._report(error)


def _apply_value(state: LiveState, item: str, value: Any, revision: int) -> LiveState:
    return state.with_server_value(item, value, revision)


class LiveDevice:
    """One device: its store, its :class:`~optisync.client.SyncClient`, its saved file.

    Make one with :meth:`open`; ``async with`` starts it and closes it.

    Args:
        url: the server (``ws://host:port``).
        saved: what :mod:`optisync.persistence` restored.
        lock: the descriptor of the storage file's lock, released at close.
        trace: gets every protocol message sent and received (a timeline).
        on_error: gets the errors of taps nobody awaits, and failed reloads.
    """

    def __init__(
        self,
        url: str,
        saved: Persistence[LiveState],
        *,
        lock: int | None = None,
        trace: Callable[[Traced], object] | None = None,
        on_error: Callable[[BaseException], object] = lambda error: None,
    ) -> None:
        self.url = url
        self._saved = saved
        self._lock = lock
        self._trace = trace
        self._on_error = on_error
        self.store = _LiveStore(saved.state, saved.device_id, on_error)
        saved.attach(self.store)
        self.client = SyncClient(
            self.store,
            url,
            apply_value=_apply_value,
            get_server_revision_from_state=self._revision,
            cursor=saved.state.cursor,
            generation=saved.state.generation,
            trace=self._traced,
        )
        # Items to reload, with the local revision they had when their sync failed.
        # (A restored item was not tapped in this run: its mark is the store's base.)
        self._reload: dict[str, int] = {
            item: self.store.local_revision(item) for item in saved.state.reload
        }
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: set[asyncio.Future[None]] = set()
        self.store.subscribe(lambda state: self._pulse())
        self.store.subscribe_sync_status(lambda key: self._pulse())
        self.client.subscribe_status(self._status_changed)

    @classmethod
    async def open(
        cls,
        url: str,
        storage: Path | None = None,
        *,
        initial: LiveState | None = None,
        trace: Callable[[Traced], object] | None = None,
        on_error: Callable[[BaseException], object] = lambda error: None,
    ) -> Self:
        """Restore a device from ``storage`` (None: kept in memory only) and build it.

        ``initial`` is the state of a new storage file.

        Raises:
            StorageInUseError: another device has ``storage`` open.

        Example:
            >>> import asyncio
            >>> from examples.live.client import LiveDevice
            >>> async def main() -> None:
            ...     device = await LiveDevice.open("ws://127.0.0.1:9")
            ...     print(device.online, device.state.values)
            ...     await device.close()
            >>> asyncio.run(main())
            False {}
        """
        lock = None if storage is None else _lock(storage)
        try:
            saved = await open_sqlite(
                ":memory:" if storage is None else storage,
                AttrsCodec(LiveState),
                initial=initial or LiveState(),
            )
        except BaseException:
            if lock is not None:
                os.close(lock)
            raise
        return cls(url, saved, lock=lock, trace=trace, on_error=on_error)

    # -- life cycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (``async with`` does it)."""
        self.client.start()

    async def close(self) -> None:
        """Disconnect, save (with the items to reload after a restart), release the file."""
        await self.client.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self.store.is_closed:
            self.store.emit(attrs.evolve(self.state, reload=tuple(sorted(self._reload))))
            await self.store.close()
        await self._saved.close()
        self._pulse()
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # releases the flock

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what the app reads ---------------------------------------------------------

    @property
    def state(self) -> LiveState:
        """The store's state."""
        return self.store.state

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
        """Items showing a value the server may not have: syncing, or due for a reload."""
        syncing = {item for item in self.state.values if self.store.is_syncing(item)}
        return frozenset(syncing | self._reload.keys())

    async def wait_online(self) -> None:
        """Wait until the device is connected and caught up."""
        await self.client.wait_online()

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
        """Show ``value`` for ``item`` at once and sync it (``optimistic_sync_with_push``).

        The call that starts a request returns an awaitable that raises its
        error; a call made while a request is in flight is coalesced.
        """
        send = self.client.sender(item)

        async def send_value(
            value: Any, local_revision: int, device_id: int, inform: Callable[[int], None]
        ) -> tuple[Any, int]:
            learnt = -1

            def learn(revision: int) -> None:
                nonlocal learnt
                learnt = revision
                inform(revision)

            stored = await send(value, local_revision, device_id, learn)
            return stored, learnt

        async def on_finish(error: BaseException | None) -> None:
            if error is not None:
                self._schedule_reload(item)

        return self.store.optimistic_sync_with_push(
            key=item,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, value: state.with_value(item, value),
            get_value_from_state=lambda state: state.value(item),
            send_value_to_server=send_value,
            get_server_revision_from_state=self._revision,
            apply_server_response_to_state=lambda state, ack: state.with_server_value(item, *ack),
            on_finish=on_finish,
        )

    def toggle(self, item: str) -> Awaitable[None]:
        """Flip a boolean item (absent counts as False): the like button."""
        return self.set_value(item, not self.state.value(item))

    # -- the glue ----------------------------------------------------------------------

    def _revision(self, item: Any) -> int:
        revision: int = self.state.revisions.get(item, -1)
        return revision

    def _traced(self, event: Traced) -> None:
        message = event.message
        if event.direction == "received" and isinstance(message, Push):
            self._remember(message)
        if self._trace is not None:
            self._trace(event)
        self._pulse()

    def _remember(self, push: Push) -> None:
        # The cursor goes into the state, so it is saved with the values it covers;
        # so does a revision learnt from a self-echo, which no value carries.
        # A replay from an older cursor (a rewound one) never moves the saved one back.
        state, key = self.state, push.key
        revision = max(self._revision(key), self.store.server_revision(key))
        cursor, generation = max(state.cursor, self.client.cursor), self.client.generation
        if (state.cursor, state.generation, self._revision(key)) != (cursor, generation, revision):
            revisions = {**state.revisions, key: revision}
            self.store.emit(
                attrs.evolve(state, cursor=cursor, generation=generation, revisions=revisions)
            )

    def _status_changed(self, online: bool) -> None:
        if online:
            for item in self._reload:
                self._start_reload(item)
        self._pulse()

    def _schedule_reload(self, item: str) -> None:
        self._reload[item] = self.store.local_revision(item)
        if self.client.online:
            self._start_reload(item)
        self._pulse()

    def _start_reload(self, item: str) -> None:
        task = asyncio.get_running_loop().create_task(self._reload_item(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_item(self, item: str) -> None:
        marked = self._reload.get(item)
        if marked is None:
            return  # reloaded already
        try:
            value, revision = await self.client.get(item)
        except ClientConnectionError:
            return  # asked again once online
        except RequestRefusedError as error:
            self._reload.pop(item, None)
            self._on_error(error)
            return
        if self._reload.get(item) != marked:
            return  # another failure since: its own reload applies
        del self._reload[item]
        tapped_since = self.store.is_syncing(item) or self.store.local_revision(item) != marked
        known = max(self._revision(item), self.store.server_revision(item))
        if not tapped_since and revision >= known and not self.store.is_closed:
            self.store.emit(self.state.with_server_value(item, value, revision))
        self._pulse()

    def _pulse(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
