"""Where a server keeps its log of changes: the :class:`Storage` interface and SQLite.

A storage commits a change and its revision in one transaction, hands back
the revision only once the commit is durable, and reads one key or a page of
the log. Its blocking calls run in one worker thread, never on the event loop.

Example:
    >>> import asyncio
    >>> from optisync.server import SqliteStorage
    >>> async def main() -> None:
    ...     async with SqliteStorage(":memory:") as storage:
    ...         first = await storage.commit("like", b"true", local_revision=1, device_id=7)
    ...         second = await storage.commit("like", b"false", local_revision=2, device_id=7)
    ...         print(first.server_revision, second.server_revision)
    ...         print((await storage.read("like")).value)
    >>> asyncio.run(main())
    1 2
    b'false'
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import sqlite3
import uuid
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, Self, TypeVar

import attrs

from optisync.errors import AlreadyOpenError, InvalidArgumentError, NotOpenError, OptisyncError

__all__ = ["Change", "CompactingStorage", "SqliteStorage", "Storage", "StorageUnavailableError"]

_T = TypeVar("_T")
logger = logging.getLogger("optisync.server.storage")


TOMBSTONE: Final = b""
"""The stored value of a delete: no canonical JSON text is empty (see :attr:`Change.deleted`)."""


@attrs.frozen
class Change:
    """One committed write. ``value`` is its canonical JSON, as UTF-8 bytes.

    A delete is committed like a set, with the empty value ``b""`` (no JSON
    text is empty): a tombstone, :attr:`deleted`. A storage keeps and pages it
    like any change (it is a key's newest change until the key is set again),
    so that a replay tells an offline device the key is gone.

    Example:
        >>> from optisync.server import Change
        >>> Change(server_revision=3, key="like", value=b"true", local_revision=1, device_id=7)
        Change(server_revision=3, key='like', value=b'true', local_revision=1, device_id=7)
    """

    server_revision: int
    key: str
    value: bytes
    local_revision: int
    device_id: int

    @property
    def deleted(self) -> bool:
        """Whether this change is a delete (a tombstone): its value is ``b""``.

        Example:
            >>> from optisync.server import Change
            >>> Change(4, "todo/milk", b"", 2, 7).deleted, Change(3, "like", b"true", 1, 7).deleted
            (True, False)
        """
        return self.value == TOMBSTONE


class StorageUnavailableError(OptisyncError, ConnectionError):
    """The database could not be reached, or the connection was lost during the call.

    A commit that raises it was not acknowledged: the server answers
    ``unavailable`` and the device retries. (Lost during the COMMIT itself, the
    write may still have been committed: it then reaches every device, the
    writer included, as a push like any other change, and a retry of a
    deduplicated write gets that commit's ack instead of committing again.)

    Example:
        >>> import optisync
        >>> from optisync.server import StorageUnavailableError
        >>> issubclass(StorageUnavailableError, optisync.OptisyncError)
        True
        >>> issubclass(StorageUnavailableError, ConnectionError)
        True
    """


class Storage(Protocol):
    """What a :class:`~optisync.server.SyncServer` needs from its database.

    ``on_commit`` is set by the server before :meth:`open`. The storage calls
    it on the event loop with every committed change, in revision order, its
    own commits and (for a database shared by several server processes) those
    of the other processes, before :meth:`commit` returns.

    Example:
        >>> from optisync.server import SqliteStorage, Storage
        >>> storage: Storage = SqliteStorage(":memory:")
    """

    on_commit: Callable[[Change], None] | None

    @property
    def generation(self) -> str:
        """An id of this database, new for every new database (valid after :meth:`open`)."""
        ...

    async def open(self) -> None:
        """Connect and create the tables if missing."""
        ...

    async def close(self) -> None:
        """Disconnect; closing twice is harmless."""
        ...

    async def commit(
        self,
        key: str,
        value: bytes,
        *,
        local_revision: int,
        device_id: int,
        deduplicate: bool = False,
    ) -> Change:
        """Store ``value`` for ``key`` at the next revision; return once durable.

        ``value`` ``b""`` is a delete: stored and paged like any value, as the
        key's tombstone (:attr:`Change.deleted`).

        With ``deduplicate``, the storage remembers, in the same transaction,
        the newest ``(local_revision, revision)`` committed per ``(device_id,
        key)``. A write whose ``local_revision`` is at or below the remembered
        one is a retry (equal) or a stale retry (below): nothing is committed,
        ``on_commit`` is not called, and the remembered commit is returned, with
        the value it committed. The check and the write are one transaction, so
        two copies of one write racing on two processes commit it once.
        """
        ...

    async def read(self, key: str) -> Change | None:
        """The newest change of ``key``, or None if it was never written."""
        ...

    async def changes_after(self, revision: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes with a revision above ``revision``, oldest first."""
        ...

    async def latest_after(self, revision: int, limit: int) -> list[Change]:
        """Up to ``limit`` keys' newest changes, those above ``revision``, oldest first.

        What a replay needs under last-write-wins: each key changed since
        ``revision`` once, at its newest value. The last one of a page is the
        next page's ``revision``; the last one of all is the head.

        A storage may also take a keyword argument ``prefixes`` (a sequence
        of strings, or None for every key): then it returns only keys that
        start with one of them, and the server asks it for a subscribed
        device's replay (the SQLite and PostgreSQL storages do, on an
        index). A storage without it still serves subscriptions: the server
        filters its pages itself.
        """
        ...

    async def head(self) -> int:
        """The newest revision (0 before the first write)."""
        ...

    async def claim_device(self, device_id: int, secret_digest: bytes | None) -> bool:
        """Whether a hello may use ``device_id``: the identity check, durable.

        ``secret_digest`` is the SHA-256 of the secret the hello carries. The
        first digest given for a device id is kept for good (in one
        transaction: of two processes racing, one digest wins); later calls
        are True only with the same digest (compared in constant time). None
        (an older client, no secret) is True only while no digest is kept.
        """
        ...


class CompactingStorage(Storage, Protocol):
    """A :class:`Storage` that can drop old tombstones: what keeps deletes from growing forever.

    Both storages that ship (SQLite, PostgreSQL) are one. A delete is kept as
    a tombstone so that a device offline during it learns it in its replay;
    :meth:`compact` drops the tombstones at or below a revision (their key
    rows, change-log rows and dedupe entries) and records that revision, the
    *horizon*, durably. A device whose ``since`` is at or below the horizon
    may have missed a dropped tombstone: the server answers its hello with a
    reset (``Welcome.reset`` and ``compacted``), it replays from 0, and drops
    the keys that replay does not mention. A server whose storage lacks
    these methods never compacts and never resets for it.

    Example:
        >>> from optisync.server import CompactingStorage, SqliteStorage
        >>> storage: CompactingStorage = SqliteStorage(":memory:")
    """

    async def horizon(self) -> int:
        """The revision through which tombstones were dropped (0: never compacted)."""
        ...

    async def compact(self, through_revision: int) -> int:
        """Drop the tombstones at or below ``through_revision``; return how many were dropped.

        The horizon becomes ``through_revision`` (at most the head; it never
        goes back), in the same transaction. A write retried from before the
        horizon of a key whose tombstone was dropped is no longer recognised
        as a retry: it commits again (at a new revision, last write wins).
        """
        ...


# Run at every open: a database made by an older version gains the tables it
# lacks (optisync_device_keys came with deduplication; its writes before that
# are not remembered, so only writes after the upgrade are deduplicated).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS optisync_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS optisync_changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    local_revision INTEGER NOT NULL,
    device_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS optisync_keys (
    key TEXT PRIMARY KEY,
    revision INTEGER NOT NULL REFERENCES optisync_changes (revision)
);
CREATE TABLE IF NOT EXISTS optisync_device_keys (
    device_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    local_revision INTEGER NOT NULL,
    revision INTEGER NOT NULL REFERENCES optisync_changes (revision),
    PRIMARY KEY (device_id, key)
);
CREATE INDEX IF NOT EXISTS optisync_keys_by_revision ON optisync_keys (revision);
CREATE TABLE IF NOT EXISTS optisync_devices (
    device_id INTEGER PRIMARY KEY,
    secret_digest BLOB NOT NULL
);
"""
_COLUMNS = "c.revision, c.key, c.value, c.local_revision, c.device_id"
_LATEST_AFTER = (
    f"SELECT {_COLUMNS} FROM optisync_keys AS k "
    "JOIN optisync_changes AS c ON c.revision = k.revision "
    "WHERE k.revision > ? ORDER BY k.revision LIMIT ?"
)
_LATEST_IN_RANGES = (
    f"SELECT {_COLUMNS} FROM optisync_keys AS k "
    "JOIN optisync_changes AS c ON c.revision = k.revision "
    "WHERE k.revision > ? AND ({ranges}) ORDER BY k.revision LIMIT ?"
)
# The highest code point: a prefix ending in it has no successor at that position.
_LAST_CHAR = 0x10FFFF


def key_ranges(prefixes: Iterable[str]) -> list[tuple[str, str | None]]:
    """The ``[low, high)`` ranges of keys starting with one of ``prefixes`` (high None: no end).

    In code point order (SQLite's BINARY collation, PostgreSQL's ``"C"``), a
    key starts with ``p`` exactly when ``p <= key < successor(p)``: a range
    an index on the key answers. Prefixes another one covers are dropped;
    ``""`` covers every key.

    Example:
        >>> from optisync.server.storage import key_ranges
        >>> key_ranges(["user/ada/", "shared/", "user/ada/notes/"])
        [('shared/', 'shared0'), ('user/ada/', 'user/ada0')]
        >>> key_ranges([""])
        [('', None)]
    """
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return [(prefix, _successor(prefix)) for prefix in kept]


def _successor(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix``; None: none."""
    stripped = prefix.rstrip(chr(_LAST_CHAR))
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:  # surrogates are no characters of UTF-8 text
        following = 0xE000
    return stripped[:-1] + chr(following)


def ranges_condition(
    column: str, ranges: list[tuple[str, str | None]], placeholder: str
) -> tuple[str, list[str]]:
    """The SQL condition ``column`` lies in one of ``ranges``, and its parameters.

    Example:
        >>> from optisync.server.storage import ranges_condition
        >>> ranges_condition("k.key", [("a/", "a0"), ("z", None)], "?")
        ('k.key >= ? AND k.key < ? OR k.key >= ?', ['a/', 'a0', 'z'])
    """
    terms: list[str] = []
    parameters: list[str] = []
    for low, high in ranges:
        if high is None:
            terms.append(f"{column} >= {placeholder}")
            parameters.append(low)
        else:
            terms.append(f"{column} >= {placeholder} AND {column} < {placeholder}")
            parameters += [low, high]
    return " OR ".join(terms), parameters


class OpenedByAsyncWith:
    """``async with storage:`` opens it and closes it (for any storage's ``open``/``close``)."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _change(row: tuple[int, str, bytes, int, int]) -> Change:
    return Change(row[0], row[1], bytes(row[2]), row[3], row[4])


class SqliteStorage(OpenedByAsyncWith):
    """A :class:`Storage` in one SQLite file: WAL, ``synchronous=FULL``, a writer and a reader.

    Commits run in the storage's writer thread and reads (replays, gets,
    identity checks) in its reader thread, each with a connection of its own,
    so the event loop never waits on the disk and a read never waits behind a
    commit (WAL lets it read the last committed state meanwhile; a
    ``:memory:`` database, which one connection alone sees, reads in the
    writer thread). ``synchronous=FULL`` makes a commit durable (fsynced) before
    :meth:`commit` returns, so a server that acks after it never loses an
    acked write to a crash or a power cut.

    Args:
        path: the database file, created if missing; ``":memory:"`` for a
            database that lives as long as this object (tests).
        max_batch: group commit: the writes that arrive while a transaction
            commits wait and go together, up to this many, in the next one
            (one fsync for all). Each keeps its own revision, and its
            :meth:`commit` returns once that transaction is durable. No
            write waits for company: a write alone commits at once.

    Example:
        >>> import asyncio
        >>> from optisync.server import SqliteStorage
        >>> async def main() -> None:
        ...     async with SqliteStorage(":memory:") as storage:
        ...         print(await storage.head(), await storage.read("nothing"))
        >>> asyncio.run(main())
        0 None
    """

    on_commit: Callable[[Change], None] | None = None

    def __init__(self, path: str | Path, *, max_batch: int = 256) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgumentError(f"max_batch must be an int of 1 or more, got {max_batch!r}")
        self._path = str(path)
        self._executor: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None
        # Reads on a thread and connection of their own (not for ":memory:").
        self._reader: ThreadPoolExecutor | None = None
        self._reading: sqlite3.Connection | None = None
        self._generation = ""
        self._group = GroupCommit(self._commit_batch, max_batch)

    @property
    def generation(self) -> str:
        """A random id written when the database file was created.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         print(len(storage.generation))
            >>> asyncio.run(main())
            32
        """
        return self._generation

    async def _run(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``call`` on the writer's thread and connection."""
        if self._executor is None or self._connection is None:
            raise NotOpenError("the storage is not open: await open() first")
        connection = self._connection
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, connection)

    async def _read(self, call: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read on the reader's thread and connection: it never waits behind commits.

        WAL lets it read the last committed state while a commit is written. A
        ``:memory:`` database has one connection only: its reads take the
        writer's thread.
        """
        if self._reader is None or self._reading is None:
            return await self._run(call)
        reading = self._reading
        return await asyncio.get_running_loop().run_in_executor(self._reader, call, reading)

    async def open(self) -> None:
        """Open (or create) the database file and its tables.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     storage = SqliteStorage(":memory:")
            ...     await storage.open()
            ...     await storage.close()
            >>> asyncio.run(main())
        """
        if self._executor is not None:
            raise AlreadyOpenError("the storage is already open: open it once, close it once")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optisync-sqlite")
        loop = asyncio.get_running_loop()
        self._connection = await loop.run_in_executor(self._executor, self._connect)
        self._generation = await self._run(_read_or_create_generation)
        if self._path != ":memory:":
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optisync-read")
            self._reading = await loop.run_in_executor(self._reader, self._connect_reader)

    def _connect_reader(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA query_only=ON")
        return connection

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: BEGIN/COMMIT are ours; the thread is the only user.
        connection = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            if self._path != ":memory:":
                connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    async def close(self) -> None:
        """Close the file and stop the thread. Closing twice is harmless.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     storage = SqliteStorage(":memory:")
            ...     await storage.open()
            ...     await storage.close(); await storage.close()
            >>> asyncio.run(main())
        """
        await self._group.drain()  # the writes already handed over are committed first
        reader, self._reader = self._reader, None
        reading, self._reading = self._reading, None
        if reader is not None and reading is not None:
            await asyncio.get_running_loop().run_in_executor(reader, reading.close)
            reader.shutdown(wait=True)
        executor, self._executor = self._executor, None
        connection, self._connection = self._connection, None
        if executor is None or connection is None:
            return
        await asyncio.get_running_loop().run_in_executor(executor, connection.close)
        executor.shutdown(wait=True)

    async def commit(
        self,
        key: str,
        value: bytes,
        *,
        local_revision: int,
        device_id: int,
        deduplicate: bool = False,
    ) -> Change:
        """Store ``value`` for ``key`` at the next revision, in one durable transaction.

        With ``deduplicate``, a write this device already committed for this
        key (same or lower ``local_revision``) returns that commit instead
        (see :meth:`Storage.commit <optisync.server.Storage.commit>`).

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         change = await storage.commit("k", b"1", local_revision=1, device_id=2)
            ...         print(change.server_revision)
            ...         again = {"local_revision": 1, "device_id": 2, "deduplicate": True}
            ...         first = await storage.commit("k", b"1", **again)
            ...         retry = await storage.commit("k", b"1", **again)
            ...         print(first.server_revision, retry.server_revision)
            >>> asyncio.run(main())
            1
            2 2
        """
        if self._executor is None:
            raise NotOpenError("the storage is not open: await open() first")
        return await self._group.commit(key, value, local_revision, device_id, deduplicate)

    async def _commit_batch(self, batch: list[_Write]) -> list[Change]:
        results = await self._run(functools.partial(_write_batch, batch=batch))
        # Pushes go out in revision order, before any of the batch's acks.
        for change, new in results:
            if new and self.on_commit is not None:
                try:
                    self.on_commit(change)
                except Exception:
                    logger.exception("on_commit failed for revision %d", change.server_revision)
        return [change for change, _ in results]

    async def read(self, key: str) -> Change | None:
        """The newest change of ``key``, or None.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         print(await storage.read("never"))
            >>> asyncio.run(main())
            None
        """

        def select(connection: sqlite3.Connection) -> Change | None:
            row = connection.execute(
                f"SELECT {_COLUMNS} FROM optisync_keys AS k "
                "JOIN optisync_changes AS c ON c.revision = k.revision WHERE k.key = ?",
                (key,),
            ).fetchone()
            return None if row is None else _change(row)

        return await self._read(select)

    async def changes_after(self, revision: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes above ``revision``, oldest first: one page of a replay.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         for n in range(3):
            ...             await storage.commit("k", b"%d" % n, local_revision=n, device_id=1)
            ...         page = await storage.changes_after(1, limit=1)
            ...         print([c.server_revision for c in page])
            >>> asyncio.run(main())
            [2]
        """

        def select(connection: sqlite3.Connection) -> list[Change]:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM optisync_changes AS c "
                "WHERE c.revision > ? ORDER BY c.revision LIMIT ?",
                (revision, limit),
            ).fetchall()
            return [_change(row) for row in rows]

        return await self._read(select)

    async def latest_after(
        self, revision: int, limit: int, *, prefixes: Iterable[str] | None = None
    ) -> list[Change]:
        """Up to ``limit`` keys' newest changes above ``revision``, oldest first.

        With ``prefixes``, only keys that start with one of them (a range on
        the key's index per prefix; ``[]``: none).

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         for n, key in enumerate("abab"):
            ...             await storage.commit(key, b"%d" % n, local_revision=n, device_id=1)
            ...         page = await storage.latest_after(0, limit=10)
            ...         print([(c.key, c.server_revision) for c in page])
            >>> asyncio.run(main())
            [('a', 3), ('b', 4)]
        """
        parameters: list[object]
        if prefixes is None:
            statement, parameters = _LATEST_AFTER, [revision, limit]
        else:
            ranges = key_ranges(prefixes)
            if not ranges:
                return []
            condition, bounds = ranges_condition("k.key", ranges, "?")
            statement = _LATEST_IN_RANGES.format(ranges=condition)
            parameters = [revision, *bounds, limit]

        def select(connection: sqlite3.Connection) -> list[Change]:
            rows = connection.execute(statement, parameters).fetchall()
            return [_change(row) for row in rows]

        return await self._read(select)

    async def head(self) -> int:
        """The newest revision, 0 before the first write.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         print(await storage.head())
            >>> asyncio.run(main())
            0
        """

        def select(connection: sqlite3.Connection) -> int:
            row = connection.execute("SELECT max(revision) FROM optisync_changes").fetchone()
            # A compaction may have dropped the newest rows (tombstones): the
            # horizon, at most the head when it was recorded, still counts.
            return max(0 if row[0] is None else int(row[0]), _horizon(connection))

        return await self._read(select)

    async def horizon(self) -> int:
        """The revision through which tombstones were dropped (0: never compacted).

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         print(await storage.horizon())
            >>> asyncio.run(main())
            0
        """
        return await self._read(_horizon)

    async def compact(self, through_revision: int) -> int:
        """Drop the tombstones at or below ``through_revision``; return how many.

        See :meth:`CompactingStorage.compact <optisync.server.CompactingStorage.compact>`.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         await storage.commit("a", b"1", local_revision=1, device_id=7)
            ...         await storage.commit("a", b"", local_revision=2, device_id=7)  # deleted
            ...         print(await storage.compact(2), await storage.read("a"))
            ...         print(await storage.horizon(), await storage.head())
            >>> asyncio.run(main())
            1 None
            2 2
        """
        if not isinstance(through_revision, int) or through_revision < 0:
            raise InvalidArgumentError(
                f"through_revision must be an int of 0 or more, got {through_revision!r}"
            )
        await self._group.drain()
        return await self._run(functools.partial(_compact, through=through_revision))

    async def claim_device(self, device_id: int, secret_digest: bytes | None) -> bool:
        """Bind ``device_id`` to ``secret_digest`` at its first claim; check it later.

        See :meth:`Storage.claim_device <optisync.server.Storage.claim_device>`.

        Example:
            >>> import asyncio, hashlib
            >>> from optisync.server import SqliteStorage
            >>> mine, theirs = hashlib.sha256(b"mine").digest(), hashlib.sha256(b"x").digest()
            >>> async def main() -> None:
            ...     async with SqliteStorage(":memory:") as storage:
            ...         print(await storage.claim_device(7, None))  # nobody holds 7 yet
            ...         print(await storage.claim_device(7, mine))  # 7 is mine from now on
            ...         print(await storage.claim_device(7, mine))
            ...         print(await storage.claim_device(7, theirs))
            ...         print(await storage.claim_device(7, None))
            >>> asyncio.run(main())
            True
            True
            True
            False
            False
        """

        def claim(connection: sqlite3.Connection) -> bool:
            connection.execute("BEGIN IMMEDIATE")  # the check and the insert, one writer at a time
            try:
                kept = _kept_digest(connection, device_id=device_id)
                if kept is None and secret_digest is not None:
                    connection.execute(
                        "INSERT INTO optisync_devices (device_id, secret_digest) VALUES (?, ?)",
                        (device_id, secret_digest),
                    )
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return device_proven(kept, secret_digest)

        # A binding never changes: once read, it is final, and a hello (however
        # many reconnect) costs a read on the reader's thread, not the writer's.
        kept = await self._read(functools.partial(_kept_digest, device_id=device_id))
        if kept is not None or secret_digest is None:
            return device_proven(kept, secret_digest)
        return await self._run(claim)


@attrs.frozen
class _Write:
    key: str
    value: bytes
    local_revision: int
    device_id: int
    deduplicate: bool
    future: asyncio.Future[Change]


class GroupCommit:
    """Group commit for a storage: the writes that arrive while a batch commits go in the next.

    Internal, shared by the storages. ``commit_batch(batch)`` commits a batch
    in one transaction, hands its new changes to the server in revision order,
    and returns each write's change. A write's caller gets its change once
    its batch is durable; a write handed over is committed even if its caller
    is cancelled (its future is cancelled, the result dropped).
    """

    def __init__(
        self, commit_batch: Callable[[list[_Write]], Awaitable[list[Change]]], max_batch: int
    ) -> None:
        self._commit_batch = commit_batch
        self._max_batch = max_batch
        self._waiting: list[_Write] = []
        self._committer: asyncio.Task[None] | None = None

    async def commit(
        self, key: str, value: bytes, local_revision: int, device_id: int, deduplicate: bool
    ) -> Change:
        future: asyncio.Future[Change] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Write(key, value, local_revision, device_id, deduplicate, future))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_waiting())
        return await future

    async def drain(self) -> None:
        """Wait until every write handed over is committed (or failed)."""
        if self._committer is not None:
            await asyncio.shield(self._committer)

    async def _commit_waiting(self) -> None:
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                changes = await self._commit_batch(batch)
            except BaseException as error:
                for write in batch:
                    if not write.future.done():
                        write.future.set_exception(_as_failure(error))
                if isinstance(error, asyncio.CancelledError):
                    for write in self._waiting:
                        write.future.cancel()
                    self._waiting.clear()
                    raise
                continue
            for write, change in zip(batch, changes, strict=True):
                if not write.future.done():
                    write.future.set_result(change)


def _write_batch(
    connection: sqlite3.Connection, *, batch: list[_Write]
) -> list[tuple[Change, bool]]:
    """Commit ``batch`` in one durable transaction: each write's change, and whether it is new.

    IMMEDIATE: the write lock is taken before the checks, so no other writer
    (thread or process) commits the same write in between. A write of the
    batch sees the ones before it, so two copies of one write commit once.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        results: list[tuple[Change, bool]] = []
        for write in batch:
            key, device_id = write.key, write.device_id
            remembered = _remembered(connection, device_id, key) if write.deduplicate else None
            if remembered is not None and write.local_revision <= remembered.local_revision:
                results.append((remembered, False))
                continue
            change = _insert(connection, key, write.value, write.local_revision, device_id)
            if write.deduplicate:
                _remember(connection, change)
            results.append((change, True))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return results


def _as_failure(error: BaseException) -> BaseException:
    """What a waiting commit fails with when its batch failed (a future takes no CancelledError)."""
    if isinstance(error, asyncio.CancelledError):
        return StorageUnavailableError("the storage was stopped before the write was committed")
    return error


def _kept_digest(connection: sqlite3.Connection, *, device_id: int) -> bytes | None:
    row = connection.execute(
        "SELECT secret_digest FROM optisync_devices WHERE device_id = ?", (device_id,)
    ).fetchone()
    return None if row is None else bytes(row[0])


def device_proven(kept: bytes | None, given: bytes | None) -> bool:
    """Whether a hello proves a device id whose kept digest is ``kept`` (None: unclaimed).

    Internal, shared by the storages.
    """
    if kept is None:
        return True  # a first claim, or an older client on an unclaimed id
    return given is not None and hmac.compare_digest(kept, given)


def _insert(
    connection: sqlite3.Connection, key: str, value: bytes, local_revision: int, device_id: int
) -> Change:
    cursor = connection.execute(
        "INSERT INTO optisync_changes (key, value, local_revision, device_id) VALUES (?, ?, ?, ?)",
        (key, value, local_revision, device_id),
    )
    revision = cursor.lastrowid
    assert revision is not None
    connection.execute(
        "INSERT INTO optisync_keys (key, revision) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET revision = excluded.revision",
        (key, revision),
    )
    return Change(revision, key, value, local_revision, device_id)


def _remembered(connection: sqlite3.Connection, device_id: int, key: str) -> Change | None:
    """The newest commit of ``key`` by ``device_id`` among its deduplicated writes."""
    row = connection.execute(
        f"SELECT {_COLUMNS} FROM optisync_device_keys AS d "
        "JOIN optisync_changes AS c ON c.revision = d.revision "
        "WHERE d.device_id = ? AND d.key = ?",
        (device_id, key),
    ).fetchone()
    return None if row is None else _change(row)


def _remember(connection: sqlite3.Connection, change: Change) -> None:
    connection.execute(
        "INSERT INTO optisync_device_keys (device_id, key, local_revision, revision) "
        "VALUES (?, ?, ?, ?) ON CONFLICT (device_id, key) DO UPDATE SET "
        "local_revision = excluded.local_revision, revision = excluded.revision",
        (change.device_id, change.key, change.local_revision, change.server_revision),
    )


def _horizon(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT value FROM optisync_meta WHERE name = 'horizon'").fetchone()
    return 0 if row is None else int(row[0])


# The tombstones at or below a revision: what a compaction drops.
_TOMBSTONES = "SELECT revision FROM optisync_changes WHERE value = X'' AND revision <= ?"


def _compact(connection: sqlite3.Connection, *, through: int) -> int:
    """Drop the tombstones at or below ``through`` and record the horizon, in one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        row = connection.execute("SELECT max(revision) FROM optisync_changes").fetchone()
        head = max(0 if row[0] is None else int(row[0]), _horizon(connection))
        horizon = max(min(through, head), _horizon(connection))
        connection.execute(
            f"DELETE FROM optisync_device_keys WHERE revision IN ({_TOMBSTONES})", (horizon,)
        )
        connection.execute(
            f"DELETE FROM optisync_keys WHERE revision IN ({_TOMBSTONES})", (horizon,)
        )
        dropped = connection.execute(
            "DELETE FROM optisync_changes WHERE value = X'' AND revision <= ?", (horizon,)
        ).rowcount
        connection.execute(
            "INSERT INTO optisync_meta (name, value) VALUES ('horizon', ?) "
            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (str(horizon),),
        )
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    return int(dropped)


def _read_or_create_generation(connection: sqlite3.Connection) -> str:
    connection.execute(
        "INSERT OR IGNORE INTO optisync_meta (name, value) VALUES ('generation', ?)",
        (uuid.uuid4().hex,),
    )
    row = connection.execute("SELECT value FROM optisync_meta WHERE name = 'generation'").fetchone()
    return str(row[0])
