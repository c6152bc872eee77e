"""``optisync.device``: one device of an app, from the parts, in one call.

:func:`open_device` composes what a synced app needs on each device:

* :mod:`optisync.persistence`: the state, the server revisions, the unsent
  changes, the device id and the server's replay position in an SQLite file
  (locked while open, so that two processes never share one device);
* your :class:`~optisync.Store` subclass, built from what was saved;
* an :class:`~optisync.outbox.Outbox`: a change made offline is kept, and
  sent when the server is back;
* :class:`optisync.client.SyncClient`: the connection to ``python -m
  optisync.server``, which sends the store's declared fields and delivers
  the server's pushes to them.

It needs the ``client``, ``persistence`` and ``offline`` extras
(``pip install "optisync[client,persistence,offline]"``).

Example:
    >>> import asyncio, os, tempfile
    >>> from optisync import Store
    >>> from optisync.device import open_device
    >>> from optisync.fields import SyncedMapWithPush
    >>> from optisync.persistence import JsonCodec
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> class Likes(Store[dict[str, bool]]):
    ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
    ...         lambda s, post: s.get(post, False), lambda s, post, v: {**s, post: v})
    >>> folder = tempfile.mkdtemp()
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         phone = open_device(Likes, url, os.path.join(folder, "phone.db"), JsonCodec(), {})
    ...         laptop = open_device(Likes, url, os.path.join(folder, "laptop.db"), JsonCodec(), {})
    ...         async with phone as p, laptop as l:
    ...             await p.store.liked.set("post", True)
    ...             await l.caught_up()
    ...             print(l.store.state)
    >>> asyncio.run(main())
    {'post': True}
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs

from optisync.client import SyncClient, Traced
from optisync.errors import StateError
from optisync.outbox import Backoff, Outbox
from optisync.persistence import Codec, Persistence, open_sqlite
from optisync.store import Store

__all__ = ["Device", "StorageInUseError", "open_device"]

S = TypeVar("S")
StoreT = TypeVar("StoreT", bound=Store[Any])


class StorageInUseError(StateError):
    """The device's storage file is open in another device (in this process or another).

    Two devices writing one file would share a device id, and each would
    take the other's writes for its own.

    Example:
        >>> from optisync.device import StorageInUseError
        >>> isinstance(StorageInUseError("phone.db is in use"), RuntimeError)
        True
    """


@attrs.frozen
class Device(Generic[StoreT]):
    """An open device: its store and the parts that keep it saved and synced.

    Attributes:
        store: your store, built from the saved state.
        client: the connection to the server (:class:`~optisync.client.SyncClient`).
        outbox: the offline policy (:class:`~optisync.outbox.Outbox`).
        persistence: the saver (:class:`~optisync.persistence.Persistence`).

    Example:
        :func:`open_device` yields one::

            async with open_device(TodoStore, url, "phone.db", codec, Todos()) as device:
                device.store.done.set("milk", True)
                print(device.client.online, device.outbox.pending_keys())
    """

    store: StoreT
    client: SyncClient[Any]
    outbox: Outbox
    persistence: Persistence[Any]

    async def caught_up(self) -> None:
        """Wait until every change is acknowledged and the server's head has arrived.

        That is: nothing is left in the outbox, and every change the server
        committed before the call is in the store's state.

        Example:
            See the module's example::

                await device.caught_up()
        """
        await self.client.wait_online()
        await self.outbox.synced()
        await self.client.caught_up()


@contextlib.asynccontextmanager
async def open_device(
    store_class: Callable[..., StoreT],
    url: str,
    path: str | os.PathLike[str],
    codec: Codec[S],
    initial: S,
    *,
    token: str | Callable[[], Awaitable[str]] | None = None,
    backoff: Backoff | None = None,
    trace: Callable[[Traced], object] | None = None,
) -> AsyncIterator[Device[StoreT]]:
    """Open the device saved at ``path`` (or a new one), connected to the server at ``url``.

    ``store_class(state, device_id=...)`` builds the store (your ``Store``
    subclass, whose declared fields need no sender: the client sends them).
    The state, revisions, outbox and replay position are restored from
    ``path``; changes that were not acknowledged before the last run ended
    are sent again. On exit the connection closes, the store closes, and
    everything is saved.

    Args:
        store_class: your store class (or any callable taking the state and
            ``device_id=``).
        url: the server's ``ws://`` or ``wss://`` URL.
        path: the device's SQLite file; made if missing.
        codec: how the state is saved (``AttrsCodec(YourState)``, ``JsonCodec()``).
        initial: the state of a new device.
        token: the server's token, if it needs one: a ``str``, or an async
            function returning a fresh one, called at each connect and before
            the token expires (see :class:`~optisync.client.SyncClient`).
        backoff: the outbox's waits between attempts while the server is unreachable.
        trace: the client's ``trace``: every protocol message sent and received
            (a timeline, a debug log; see :class:`~optisync.client.Traced`).

    Raises:
        StorageInUseError: another open device holds ``path``.

    Example:
        See the module's example; in an app::

            async with open_device(TodoStore, url, "phone.db", AttrsCodec(Todos), Todos()) as d:
                d.store.done.set("milk", True)
    """
    with _locked(Path(path)):
        saved = await open_sqlite(Path(path), codec, initial=initial)
        try:
            store = store_class(saved.state, device_id=saved.device_id)
            async with store:
                outbox = Outbox(store, backoff=backoff)
                client: SyncClient[Any] = SyncClient(store, url, token=token, trace=trace)
                saved.attach(store)  # restores the client's position before it starts
                async with client:
                    yield Device(store, client, outbox, saved)
        finally:
            await saved.close()


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    """Hold an exclusive lock on the storage file itself (no lock file is left behind)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageInUseError(
                f"{path} is in use by another device: give each device its own file"
            ) from None
        yield
    finally:
        os.close(descriptor)  # releases the lock
