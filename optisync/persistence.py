"""Persistence: a store's state, server revisions, device id and outbox, saved and restored.

:class:`Persistence` watches a store and saves, in one transaction per save:

* the state, encoded by a :class:`Codec` (:class:`AttrsCodec` for attrs
  classes, with cattrs; :class:`JsonCodec` for JSON-shaped states);
* the server revision of every key of its declared fields
  (:mod:`optisync.fields`), so that stale pushes are recognised after a restart;
* the outbox: the keys whose latest change the server has not acknowledged,
  sent again after a restart;
* the device id, made once when the storage is new, and the local revision
  base of this run: each :meth:`Persistence.open` raises it (durably, before
  the store exists) by :data:`LOCAL_REVISIONS_PER_RUN`, so that the echo of a
  request sent before a restart is never taken for the echo of one sent after.

The default back end is :class:`SqliteSnapshotStorage`: stdlib ``sqlite3`` in WAL
mode, run on one worker thread so the event loop never waits for the disk,
one transaction per save, so a crash at any point leaves the last committed
snapshot readable. Other back ends implement the :class:`SnapshotStorage` protocol.

Example:
    >>> import asyncio, os, tempfile
    >>> from optisync import Store
    >>> from optisync.persistence import JsonCodec, open_sqlite
    >>> path = os.path.join(tempfile.mkdtemp(), "app.sqlite3")
    >>> async def run(tap: bool) -> None:
    ...     saved = await open_sqlite(path, JsonCodec(), initial={"taps": 0})
    ...     async with Store(saved.state, device_id=saved.device_id) as store:
    ...         saved.attach(store)
    ...         if tap:
    ...             store.emit({"taps": store.state["taps"] + 1})
    ...         print(store.state)
    ...     await saved.close()
    >>> asyncio.run(run(tap=True))
    {'taps': 1}
    >>> asyncio.run(run(tap=False))  # restarted: restored from the file
    {'taps': 1}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import sqlite3
from collections.abc import Callable, Hashable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol, TypeVar

import attrs

from optisync.errors import (
    AlreadyAttachedError,
    ArgumentTypeError,
    ClosedError,
    InvalidArgumentError,
    StateError,
)
from optisync.fields import BoundField, StoreFields, store_fields
from optisync.revisions import random_device_id, random_device_secret
from optisync.store import adopt_local_revision_base
from optisync.transport import ProvesDevice, Resumable, Transport

if TYPE_CHECKING:
    import cattrs

    from optisync.store import Store

__all__ = [
    "AttrsCodec",
    "LOCAL_REVISIONS_PER_RUN",
    "Codec",
    "JsonCodec",
    "Persistence",
    "Snapshot",
    "SqliteSnapshotStorage",
    "SnapshotStorage",
    "open_sqlite",
]

S = TypeVar("S")
T = TypeVar("T")

logger = logging.getLogger("optisync")

LOCAL_REVISIONS_PER_RUN: Final = 2**32
"""How far each :meth:`Persistence.open` raises the local revision base.

A run may make this many changes to one key before its local revisions
reach the next run's; revisions stay below 2**53 (exact in JavaScript)
for two million runs of one storage.

Example:
    >>> from optisync.persistence import LOCAL_REVISIONS_PER_RUN
    >>> LOCAL_REVISIONS_PER_RUN
    4294967296
"""

_MAX_SAFE_INT: Final = 2**53 - 1


def _next_base(base: int) -> int:
    following = base + LOCAL_REVISIONS_PER_RUN
    if following + LOCAL_REVISIONS_PER_RUN > _MAX_SAFE_INT:
        raise StateError(
            "this storage was opened more than two million times: its local revisions "
            "would pass 2**53; start a new storage (a new device)"
        )
    return following


# -- codecs ---------------------------------------------------------------------


class Codec(Protocol[S]):
    """Turns a state into bytes and back. Any object with these two methods is one.

    Example:
        >>> from optisync.persistence import Codec, JsonCodec
        >>> codec: Codec[dict[str, int]] = JsonCodec()
        >>> codec.decode(codec.encode({"n": 1}))
        {'n': 1}
    """

    def encode(self, state: S) -> bytes:
        """The state as bytes.

        Example:
            >>> from optisync.persistence import JsonCodec
            >>> JsonCodec().encode([1, 2])
            b'[1, 2]'
        """
        ...

    def decode(self, data: bytes) -> S:
        """The state back from :meth:`encode`'s bytes.

        Example:
            >>> from optisync.persistence import JsonCodec
            >>> JsonCodec().decode(b'[1, 2]')
            [1, 2]
        """
        ...


class JsonCodec:
    """A codec for states made of JSON types (dicts with string keys, lists, numbers...).

    Example:
        >>> from optisync.persistence import JsonCodec
        >>> JsonCodec().decode(JsonCodec().encode({"liked": True}))
        {'liked': True}
    """

    def encode(self, state: Any) -> bytes:
        """Encode with :func:`json.dumps`.

        Example:
            >>> from optisync.persistence import JsonCodec
            >>> JsonCodec().encode({"a": 1})
            b'{"a": 1}'
        """
        return json.dumps(state).encode()

    def decode(self, data: bytes) -> Any:
        """Decode with :func:`json.loads`.

        Example:
            >>> from optisync.persistence import JsonCodec
            >>> JsonCodec().decode(b'{"a": 1}')
            {'a': 1}
        """
        return json.loads(data)


class AttrsCodec(Generic[S]):
    """A codec for attrs (and dataclass) states, with cattrs's JSON converter.

    Needs the ``persistence`` extra (``pip install optisync[persistence]``).

    Args:
        state_type: the class of the state, e.g. ``ItemState``.
        converter: a cattrs converter of your own; by default
            ``cattrs.preconf.json.make_converter()``.

    Example:
        >>> import attrs
        >>> from optisync.persistence import AttrsCodec
        >>> @attrs.frozen
        ... class Likes:
        ...     liked: dict[str, bool] = attrs.field(factory=dict)
        >>> codec = AttrsCodec(Likes)
        >>> codec.encode(Likes({"post": True}))
        b'{"liked": {"post": true}}'
        >>> codec.decode(b'{"liked": {"post": true}}')
        Likes(liked={'post': True})
    """

    def __init__(
        self, state_type: type[S], converter: cattrs.preconf.json.JsonConverter | None = None
    ):
        try:
            from cattrs.preconf.json import make_converter
        except ImportError as error:  # pragma: no cover - depends on the install
            raise ImportError(
                "AttrsCodec needs cattrs: pip install 'optisync[persistence]'"
            ) from error
        self.state_type = state_type
        self.converter = make_converter() if converter is None else converter

    def encode(self, state: S) -> bytes:
        """Unstructure with cattrs, then JSON.

        Example:
            >>> from optisync.persistence import AttrsCodec
            >>> AttrsCodec(int).encode(3)
            b'3'
        """
        return self.converter.dumps(state).encode()

    def decode(self, data: bytes) -> S:
        """JSON, then structure with cattrs into ``state_type``.

        Example:
            >>> from optisync.persistence import AttrsCodec
            >>> AttrsCodec(int).decode(b'3')
            3
        """
        return self.converter.loads(data, self.state_type)


# -- storage ----------------------------------------------------------------------


@attrs.frozen
class Snapshot:
    """Everything one save writes, all or nothing.

    Attributes:
        device_id: the device id, made once.
        state: the encoded state.
        server_revisions: encoded key -> newest server revision known.
        outbox: the encoded keys whose latest change is not acknowledged.
        local_revision_base: the :attr:`Store.local_revision_base
            <optisync.Store.local_revision_base>` of the run that saved it.
        cursor: the replay position of the store's transport (a
            :class:`~optisync.transport.Resumable`, such as ``SyncClient``):
            the newest server revision the saved state covers.
        generation: the server generation that cursor belongs to.
        digest: the transport's digest of the entry at that cursor, by which
            the server recognises a database restored from a backup.
        device_secret: the secret that proves the device id to the server,
            made with it (``""`` in a snapshot from before secrets: one is
            made when it is opened).

    Example:
        >>> from optisync.persistence import Snapshot
        >>> Snapshot(7, b"{}", {'["liked","post"]': 3}, frozenset()).device_id
        7
    """

    device_id: int
    state: bytes
    server_revisions: Mapping[str, int]
    outbox: frozenset[str]
    local_revision_base: int = 0
    cursor: int = 0
    generation: str = ""
    digest: str = ""
    device_secret: str = ""


class SnapshotStorage(Protocol):
    """Where snapshots go. :class:`SqliteSnapshotStorage` is the tested default.

    Any object with these three coroutines is one. A back end must make each
    :meth:`save` atomic: after a crash, :meth:`load` returns the last
    snapshot whose save completed, whole, with every field of it (a back end
    that dropped ``local_revision_base`` would bring back the restart bug it
    prevents).

    Example:
        A back end that keeps the last snapshot in memory (what optisync's
        reliability suite restarts its devices from):

        >>> import asyncio
        >>> from optisync.persistence import JsonCodec, Persistence, Snapshot, SnapshotStorage
        >>> class MemoryStorage:
        ...     snapshot: Snapshot | None = None
        ...     async def load(self) -> Snapshot | None:
        ...         return self.snapshot
        ...     async def save(self, snapshot: Snapshot) -> None:
        ...         self.snapshot = snapshot
        ...     async def close(self) -> None:
        ...         pass
        >>> async def main() -> None:
        ...     storage: SnapshotStorage = MemoryStorage()
        ...     await Persistence.open(storage, JsonCodec(), initial=[], new_device_id=lambda: 4)
        ...     print((await storage.load()).device_id)
        >>> asyncio.run(main())
        4
    """

    async def load(self) -> Snapshot | None:
        """The last saved snapshot, or ``None`` if nothing was ever saved.

        Example:
            Called once, by :meth:`Persistence.open`::

                snapshot = await storage.load()
        """
        ...

    async def save(self, snapshot: Snapshot) -> None:
        """Replace the saved snapshot, atomically (all of it, or nothing).

        Example:
            Called by the saver of :class:`Persistence`, one at a time::

                await storage.save(snapshot)
        """
        ...

    async def close(self) -> None:
        """Release the back end. Closing twice must be harmless.

        Example:
            Called by :meth:`Persistence.close`::

                await storage.close()
        """
        ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS optisync_snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    device_id INTEGER NOT NULL,
    state BLOB NOT NULL,
    local_revision_base INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0,
    generation TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL DEFAULT '',
    device_secret TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS optisync_revisions (key TEXT PRIMARY KEY, revision INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS optisync_outbox (key TEXT PRIMARY KEY);
"""


class SqliteSnapshotStorage:
    """Snapshots in an SQLite file, written on one worker thread.

    WAL journal, one ``BEGIN IMMEDIATE`` ... ``COMMIT`` per save: a process
    killed at any point leaves the last committed snapshot readable. The
    connection lives on its own thread, so the event loop never waits for the
    disk; saves run one at a time, in order.

    Args:
        path: the file (created if missing), or ``":memory:"``.
        worker_thread: ``False`` runs each save on the event loop's thread,
            blocking it while it writes (for a program with no threads to
            spare); by default a worker thread writes.

    Example:
        >>> import asyncio
        >>> from optisync.persistence import Snapshot, SqliteSnapshotStorage
        >>> async def main() -> None:
        ...     storage = SqliteSnapshotStorage(":memory:")
        ...     await storage.save(Snapshot(5, b'"hi"', {}, frozenset()))
        ...     print((await storage.load()).state)
        ...     await storage.close()
        >>> asyncio.run(main())
        b'"hi"'
    """

    def __init__(self, path: str | Path, *, worker_thread: bool = True) -> None:
        self.path = path
        self._executor = (
            concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="optisync-sqlite"
            )
            if worker_thread
            else None
        )
        self._connection: sqlite3.Connection | None = None
        self._closed = False

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise ClosedError(f"the storage {self.path!s} is closed")
        if self._executor is None:
            return self._on_worker(job)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._on_worker, job)

    def _on_worker(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.executescript(_SCHEMA)
                _add_missing_columns(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return job(self._connection)

    async def load(self) -> Snapshot | None:
        """Read the last committed snapshot (``None`` for a new file).

        Example:
            >>> import asyncio
            >>> from optisync.persistence import SqliteSnapshotStorage
            >>> async def main() -> None:
            ...     storage = SqliteSnapshotStorage(":memory:")
            ...     print(await storage.load())
            ...     await storage.close()
            >>> asyncio.run(main())
            None
        """
        return await self._run(_load)

    async def save(self, snapshot: Snapshot) -> None:
        """Write ``snapshot`` in one transaction.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import Snapshot, SqliteSnapshotStorage
            >>> async def main() -> None:
            ...     storage = SqliteSnapshotStorage(":memory:")
            ...     await storage.save(Snapshot(5, b"1", {}, frozenset({'["liked","a"]'})))
            ...     print((await storage.load()).outbox)
            ...     await storage.close()
            >>> asyncio.run(main())
            frozenset({'["liked","a"]'})
        """
        await self._run(lambda connection: _save(connection, snapshot))

    async def close(self) -> None:
        """Close the file and stop the worker thread. Closing twice is harmless.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import SqliteSnapshotStorage
            >>> async def main() -> None:
            ...     storage = SqliteSnapshotStorage(":memory:")
            ...     await storage.close()
            ...     print(storage.is_closed)
            >>> asyncio.run(main())
            True
        """
        if self._closed:
            return
        await self._run(self._close_connection)
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called.

        Example:
            >>> from optisync.persistence import SqliteSnapshotStorage
            >>> SqliteSnapshotStorage(":memory:").is_closed
            False
        """
        return self._closed

    def _close_connection(self, connection: sqlite3.Connection) -> None:
        connection.close()
        self._connection = None


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    """Bring a file written by an older optisync up to the current schema."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(optisync_snapshot)")}
    added = {  # each column a file from before it existed lacks
        "local_revision_base": "INTEGER NOT NULL DEFAULT 0",
        "cursor": "INTEGER NOT NULL DEFAULT 0",
        "generation": "TEXT NOT NULL DEFAULT ''",
        "digest": "TEXT NOT NULL DEFAULT ''",
        "device_secret": "TEXT NOT NULL DEFAULT ''",
    }
    for name, declaration in added.items():
        if name not in columns:
            connection.execute(f"ALTER TABLE optisync_snapshot ADD COLUMN {name} {declaration}")


def _load(connection: sqlite3.Connection) -> Snapshot | None:
    connection.execute("BEGIN")  # one read transaction: the three tables of one commit
    try:
        row = connection.execute(
            "SELECT device_id, state, local_revision_base, cursor, generation, digest,"
            " device_secret FROM optisync_snapshot"
        ).fetchone()
        if row is None:
            return None
        revisions = dict(connection.execute("SELECT key, revision FROM optisync_revisions"))
        outbox = frozenset(key for (key,) in connection.execute("SELECT key FROM optisync_outbox"))
    finally:
        connection.execute("COMMIT")
    return Snapshot(
        int(row[0]),
        bytes(row[1]),
        revisions,
        outbox,
        int(row[2]),
        int(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
    )


def _save(connection: sqlite3.Connection, snapshot: Snapshot) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "INSERT OR REPLACE INTO optisync_snapshot"
            " (id, device_id, state, local_revision_base, cursor, generation, digest,"
            " device_secret) VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            (
                snapshot.device_id,
                snapshot.state,
                snapshot.local_revision_base,
                snapshot.cursor,
                snapshot.generation,
                snapshot.digest,
                snapshot.device_secret,
            ),
        )
        connection.execute("DELETE FROM optisync_revisions")  # a reset forgets old ones
        connection.executemany(
            "INSERT INTO optisync_revisions (key, revision) VALUES (?, ?)",
            snapshot.server_revisions.items(),
        )
        connection.execute("DELETE FROM optisync_outbox")
        connection.executemany(
            "INSERT INTO optisync_outbox (key) VALUES (?)", [(key,) for key in snapshot.outbox]
        )
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


# -- keys ---------------------------------------------------------------------------

_JSON_SCALARS = (str, int, float, bool, type(None))


def _encode_key(name: str, item: object, single: bool) -> str:
    if single:
        return json.dumps([name])
    if not isinstance(item, _JSON_SCALARS):
        raise ArgumentTypeError(
            f"cannot persist the key of item {item!r} of field {name!r}: item ids must be "
            f"str, int, float, bool or None, got {type(item).__name__}"
        )
    return json.dumps([name, item])


def _decode_key(encoded: str) -> tuple[str, Hashable]:
    parts = json.loads(encoded)
    return parts[0], (parts[1] if len(parts) > 1 else None)


# -- the orchestrator ------------------------------------------------------------


class Persistence(Generic[S]):
    """What was restored, and the saver that keeps the storage up to date.

    Make one with :meth:`open` (or :func:`open_sqlite`) before the store:
    build the store from :attr:`state` and :attr:`device_id`, then
    :meth:`attach` it. From then on every change of the state, of a server
    revision, or of what is pending is saved (coalesced: at most one save in
    flight, then one with everything since). :meth:`close` saves what is
    left and closes the storage.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.persistence import JsonCodec, Persistence, SqliteSnapshotStorage
        >>> async def main() -> None:
        ...     storage = SqliteSnapshotStorage(":memory:")
        ...     saved = await Persistence.open(
        ...         storage, JsonCodec(), initial=0, new_device_id=lambda: 5)
        ...     store = Store(saved.state, device_id=saved.device_id)
        ...     saved.attach(store)
        ...     store.emit(1)
        ...     await saved.flush()
        ...     print((await storage.load()).state, saved.device_id)
        ...     await store.close()
        ...     await saved.close()
        >>> asyncio.run(main())
        b'1' 5
    """

    def __init__(
        self, storage: SnapshotStorage, codec: Codec[S], snapshot: Snapshot, state: S
    ) -> None:
        self.storage = storage
        self.codec = codec
        self._restored = snapshot
        self._state = state
        self._store: Store[S] | None = None
        self._dirty = False
        self._saver: asyncio.Task[None] | None = None
        self._unsubscribe: list[Callable[[], None]] = []
        # Encoded keys whose latest change is not acknowledged. Kept up to date
        # as locks are taken and released while the store is open: close()
        # releases locks too, but quitting acknowledges nothing.
        self._outbox: set[str] = set(snapshot.outbox)
        self._fields: StoreFields | None = None
        self._position: Resumable | None = None

    @classmethod
    async def open(
        cls,
        storage: SnapshotStorage,
        codec: Codec[S],
        *,
        initial: S,
        new_device_id: Callable[[], int] | None = None,
    ) -> Persistence[S]:
        """Load what ``storage`` holds; for a new storage, start from ``initial``.

        A new storage gets a device id at once (``new_device_id()``, by default
        a random 53-bit number), a device secret (256 random bits) and a
        first snapshot, so both survive even a crash before the first change.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, Persistence, SqliteSnapshotStorage
            >>> async def main() -> None:
            ...     storage = SqliteSnapshotStorage(":memory:")
            ...     saved = await Persistence.open(storage, JsonCodec(), initial=[])
            ...     print(saved.state, 0 <= saved.device_id < 2**53)
            ...     await saved.close()
            >>> asyncio.run(main())
            [] True
        """
        snapshot = await storage.load()
        if snapshot is not None:
            state = codec.decode(snapshot.state)
            # Saved before any store of this run exists, so before it sends anything.
            snapshot = attrs.evolve(
                snapshot,
                local_revision_base=_next_base(snapshot.local_revision_base),
                # A snapshot from before secrets gets one now, before any hello.
                device_secret=snapshot.device_secret or random_device_secret(),
            )
            await storage.save(snapshot)
            return cls(storage, codec, snapshot, state)
        device_id = random_device_id() if new_device_id is None else new_device_id()
        snapshot = Snapshot(
            device_id,
            codec.encode(initial),
            {},
            frozenset(),
            device_secret=random_device_secret(),
        )
        await storage.save(snapshot)
        return cls(storage, codec, snapshot, initial)

    @property
    def state(self) -> S:
        """The state restored (or ``initial`` for a new storage): give it to the store.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial="hello")
            ...     print(saved.state)
            ...     await saved.close()
            >>> asyncio.run(main())
            hello
        """
        return self._state

    @property
    def device_id(self) -> int:
        """The device id kept by the storage: give it to the store.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0,
            ...                               new_device_id=lambda: 12)
            ...     print(saved.device_id)
            ...     await saved.close()
            >>> asyncio.run(main())
            12
        """
        return self._restored.device_id

    @property
    def device_secret(self) -> str:
        """The secret that proves :attr:`device_id` to the server, kept beside it.

        Made with the device id (or when a file from before secrets is first
        opened) and never changed. A transport that
        :class:`~optisync.transport.ProvesDevice`, such as ``SyncClient``,
        gets it by itself when it serves the attached store. Keep the file
        private: whoever holds the secret and the server's token may write as
        this device.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0)
            ...     print(len(saved.device_secret))
            ...     await saved.close()
            >>> asyncio.run(main())
            43
        """
        return self._restored.device_secret

    @property
    def local_revision_base(self) -> int:
        """This run's local revision base, above every local revision an earlier run sent.

        :meth:`attach` gives it to the store (:attr:`Store.local_revision_base
        <optisync.Store.local_revision_base>`). :meth:`open` raised it by
        :data:`LOCAL_REVISIONS_PER_RUN` and saved it before returning, so even
        a run that crashed before its first save is below it.

        Example:
            >>> import asyncio, os, tempfile
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> path = os.path.join(tempfile.mkdtemp(), "app.sqlite3")
            >>> async def run() -> int:
            ...     saved = await open_sqlite(path, JsonCodec(), initial=0)
            ...     await saved.close()
            ...     return saved.local_revision_base
            >>> [asyncio.run(run()) for _ in range(3)]
            [0, 4294967296, 8589934592]
        """
        return self._restored.local_revision_base

    @property
    def restored_outbox(self) -> frozenset[str]:
        """The encoded keys that were pending when the last snapshot was saved.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0)
            ...     print(saved.restored_outbox)
            ...     await saved.close()
            >>> asyncio.run(main())
            frozenset()
        """
        return self._restored.outbox

    def attach(self, store: Store[S]) -> None:
        """Restore the revisions and the outbox into ``store``, and save its changes from now on.

        Call it once, on the event loop, right after building the store from
        :attr:`state` and :attr:`device_id` (and after making its
        :class:`~optisync.outbox.Outbox`, if any, so that resent keys retry
        while offline). Every key of the restored outbox is sent again, with
        the value the restored state holds for it.

        It also starts the store's local revisions at
        :attr:`local_revision_base` (build the store without one, or with
        that one).

        Raises:
            ValueError: the store's device id is not :attr:`device_id`, or
                its ``local_revision_base`` is another non-zero one.
            RuntimeError: a store is already attached, or the store already
                made a change.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0)
            ...     try:
            ...         saved.attach(Store(0, device_id=saved.device_id + 1))
            ...     except ValueError as error:
            ...         print(error)
            ...     await saved.close()
            >>> asyncio.run(main())
            the store's device id is not the persisted one: build it with device_id=saved.device_id
        """
        if self._store is not None:
            raise AlreadyAttachedError("a store is already attached to this persistence")
        if store.device_id != self.device_id:
            raise InvalidArgumentError(
                "the store's device id is not the persisted one: "
                "build it with device_id=saved.device_id"
            )
        adopt_local_revision_base(store, self.local_revision_base)
        self._store = store
        self._fields = fields = store_fields(store)
        by_name = fields.by_name
        for encoded, revision in self._restored.server_revisions.items():
            name, item = _decode_key(encoded)
            if name in by_name:
                by_name[name].restore(item, revision)
        self._unsubscribe = [
            store.subscribe(self._changed),
            store.subscribe_sync_status(self._status_changed),
        ]
        fields.when_served(self._follow)
        for encoded in sorted(self._restored.outbox):
            name, item = _decode_key(encoded)
            if name not in by_name:
                logger.warning("optisync: dropping the saved change of %s: no such field", encoded)
                continue
            try:
                by_name[name].resend(item)
            except Exception as error:  # say, the item is gone from the restored state
                store.on_error(error)
        self._changed(None)  # the resent keys' new status, and anything dropped

    def _follow(self, transport: Transport) -> None:
        # The device secret goes with the device id, to any transport that sends one.
        if isinstance(transport, ProvesDevice) and self.device_secret:
            transport.use_device_secret(self.device_secret)
        # The transport's replay position is saved with the state it covers,
        # and restored before the transport starts.
        if not isinstance(transport, Resumable):
            return
        restored = self._restored
        saved = (restored.cursor, restored.generation, restored.digest)
        if saved != (transport.cursor, transport.generation, transport.digest):
            transport.resume(*saved)
        self._position = transport
        self._unsubscribe.append(
            transport.subscribe_position(lambda cursor, gen: self._changed(None))
        )

    def _status_changed(self, key: Hashable) -> None:
        store = self._store
        assert store is not None
        assert self._fields is not None
        encoded = _encode_store_key(self._fields, key)
        if encoded is not None and not store.is_closed:
            if store.is_syncing(key):
                self._outbox.add(encoded)
            else:
                self._outbox.discard(encoded)
        self._changed(key)

    def _changed(self, _: object) -> None:
        self._dirty = True
        if self._saver is None or self._saver.done():
            self._saver = asyncio.get_running_loop().create_task(self._save_while_dirty())

    async def _save_while_dirty(self) -> None:
        store = self._store
        assert store is not None
        while self._dirty:
            self._dirty = False
            try:
                await self.storage.save(self._snapshot(store))
            except Exception as error:  # the next change tries again
                self._dirty = False
                store.on_error(error)
                return

    def _snapshot(self, store: Store[S]) -> Snapshot:
        revisions = dict(self._restored.server_revisions)
        for encoded, key, bound in _keys(store_fields(store)):
            revision = bound.known_revision(key)
            if revision >= 0:
                revisions[encoded] = revision
        restored, position = self._restored, self._position
        cursor, generation, digest = restored.cursor, restored.generation, restored.digest
        if position is not None:  # read with the state: the cursor never runs ahead of it
            cursor, generation, digest = position.cursor, position.generation, position.digest
        state = self.codec.encode(store.state)
        return Snapshot(
            self.device_id,
            state,
            revisions,
            frozenset(self._outbox),
            restored.local_revision_base,
            cursor,
            generation,
            digest,
            restored.device_secret,
        )

    async def flush(self) -> None:
        """Wait until everything changed so far is saved.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0)
            ...     store = Store(0, device_id=saved.device_id)
            ...     saved.attach(store)
            ...     store.emit(3)
            ...     await saved.flush()
            ...     print((await saved.storage.load()).state)
            ...     await saved.close()
            >>> asyncio.run(main())
            b'3'
        """
        while self._saver is not None and not self._saver.done():
            await asyncio.shield(self._saver)

    async def close(self) -> None:
        """Save what is left, stop watching the store, and close the storage.

        The store itself is not closed: close it first, so that nothing
        changes after the last save.

        Example:
            >>> import asyncio
            >>> from optisync.persistence import JsonCodec, open_sqlite
            >>> async def main() -> None:
            ...     saved = await open_sqlite(":memory:", JsonCodec(), initial=0)
            ...     await saved.close()
            ...     print(saved.storage.is_closed)
            >>> asyncio.run(main())
            True
        """
        await self.flush()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        await self.storage.close()


def _encode_store_key(fields: StoreFields, key: Hashable) -> str | None:
    """The encoded form of a store key of a declared field; None for any other key."""
    bound, item = fields.field_of(key)
    if bound is None:
        return None
    return _encode_key(bound.name, item, bound.field.single)


def _keys(fields: StoreFields) -> Iterator[tuple[str, Hashable, BoundField[Any, Any, Any]]]:
    for name, bound in fields.by_name.items():
        single = bound.field.single
        for key, item in bound.items():
            yield _encode_key(name, item, single), key, bound


async def open_sqlite(
    path: str | Path,
    codec: Codec[S],
    *,
    initial: S,
    new_device_id: Callable[[], int] | None = None,
    worker_thread: bool = True,
) -> Persistence[S]:
    """:meth:`Persistence.open` on a :class:`SqliteSnapshotStorage` at ``path``.

    ``worker_thread`` is the storage's (see :class:`SqliteSnapshotStorage`).

    Example:
        >>> import asyncio
        >>> from optisync.persistence import JsonCodec, open_sqlite
        >>> async def main() -> None:
        ...     saved = await open_sqlite(":memory:", JsonCodec(), initial={"liked": False})
        ...     print(saved.state)
        ...     await saved.close()
        >>> asyncio.run(main())
        {'liked': False}
    """
    storage = SqliteSnapshotStorage(path, worker_thread=worker_thread)
    return await Persistence.open(storage, codec, initial=initial, new_device_id=new_device_id)
