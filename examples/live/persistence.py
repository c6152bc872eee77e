"""What a device keeps across restarts, in its own SQLite file.

Saved atomically (one transaction per save):

* the device id, made once when the file is created;
* each item's value, the newest server revision known for it, and whether
  its value is unconfirmed (a tap the server may not have);
* the replay cursor: the newest revision received in a push, sent in ``hello``.

One device at a time: the file is locked (an OS lock on ``FILE.lock`` beside
it) while a :class:`DeviceStorage` has it open, because two devices sharing a
file would share a device id, and each would take the other's changes for
echoes of its own. Opening a locked file raises :class:`StorageInUseError`.

A revision and the cursor are saved in the same transaction as the values
they describe, so after a restart a replayed change the device already had is
recognised as stale and ignored.

Example:
    >>> import os, tempfile
    >>> from examples.live.persistence import DeviceStorage, SavedItem
    >>> path = os.path.join(tempfile.mkdtemp(), "device.sqlite3")
    >>> with DeviceStorage(path, new_device_id=42) as storage:
    ...     storage.save({"like": SavedItem("true", 5, pending=False)}, cursor=5)
    >>> with DeviceStorage(path) as storage:
    ...     saved = storage.load()
    >>> saved.device_id, saved.items["like"].server_revision, saved.cursor
    (42, 5, 5)
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import attrs

__all__ = ["DeviceStorage", "SavedDevice", "SavedItem", "StorageInUseError"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY,
    value TEXT,
    server_revision INTEGER NOT NULL,
    pending INTEGER NOT NULL
);
"""


@attrs.frozen
class SavedItem:
    """One item as saved: canonical JSON (None: absent), its revision, and if unconfirmed.

    Example:
        >>> from examples.live.persistence import SavedItem
        >>> SavedItem("true", 3, pending=True).pending
        True
    """

    value: str | None
    server_revision: int
    pending: bool


@attrs.frozen
class SavedDevice:
    """Everything :meth:`DeviceStorage.load` restores.

    Example:
        >>> from examples.live.persistence import SavedDevice
        >>> SavedDevice(device_id=1, items={}, cursor=0).cursor
        0
    """

    device_id: int
    items: Mapping[str, SavedItem]
    cursor: int


class StorageInUseError(RuntimeError):
    """The storage file is open in another :class:`DeviceStorage` (this process or another).

    Example:
        >>> import os, tempfile
        >>> from examples.live.persistence import DeviceStorage, StorageInUseError
        >>> path = os.path.join(tempfile.mkdtemp(), "device.sqlite3")
        >>> with DeviceStorage(path):
        ...     try:
        ...         DeviceStorage(path)
        ...     except StorageInUseError:
        ...         print("in use")
        in use
    """


def _lock(database: str | Path) -> int:
    """Lock ``DATABASE.lock``, without waiting; the lock lasts until the descriptor closes."""
    descriptor = os.open(f"{database}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    if sys.platform == "win32":  # no flock(); the example then does not guard its files
        return descriptor
    import fcntl

    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise StorageInUseError(
            f"{database} is in use by another device: give each one its own file"
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


class DeviceStorage:
    """A device's SQLite file. Open it once per run; close it with :meth:`close`.

    Args:
        path: the file (created if missing), or ``":memory:"``.
        new_device_id: the id to record if the file has none yet; by default
            a random 53-bit id (exact in JSON and JavaScript).

    Raises:
        StorageInUseError: another :class:`DeviceStorage` has the file open.

    Example:
        >>> from examples.live.persistence import DeviceStorage
        >>> with DeviceStorage(":memory:", new_device_id=3) as storage:
        ...     print(storage.device_id)
        3
    """

    def __init__(self, path: str | Path, *, new_device_id: int | None = None) -> None:
        self._lock: int | None = None
        if str(path) != ":memory:":
            self._lock = _lock(path)
        try:
            self._connection = sqlite3.connect(path, isolation_level=None)
        except BaseException:
            self._unlock()
            raise
        try:
            if str(path) != ":memory:":
                self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.executescript(_SCHEMA)
            self._connection.execute("BEGIN IMMEDIATE")
            self._connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('device_id', ?), ('cursor', 0)",
                (secrets.randbits(53) if new_device_id is None else new_device_id,),
            )
            self._connection.execute("COMMIT")
            self.device_id: int = self._meta("device_id")
        except BaseException:
            self._connection.close()
            self._unlock()
            raise

    def close(self) -> None:
        """Close the file. Closing twice is harmless.

        Example:
            >>> from examples.live.persistence import DeviceStorage
            >>> storage = DeviceStorage(":memory:")
            >>> storage.close(); storage.close()
        """
        self._connection.close()
        self._unlock()

    def _unlock(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            os.close(lock)  # releases the flock

    def __enter__(self) -> DeviceStorage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _meta(self, name: str) -> int:
        row = self._connection.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return int(row[0])

    def load(self) -> SavedDevice:
        """Read everything back.

        Example:
            >>> from examples.live.persistence import DeviceStorage
            >>> with DeviceStorage(":memory:", new_device_id=5) as storage:
            ...     print(storage.load())
            SavedDevice(device_id=5, items={}, cursor=0)
        """
        rows = self._connection.execute(
            "SELECT item, value, server_revision, pending FROM items"
        ).fetchall()
        items = {
            item: SavedItem(value, revision, bool(pending))
            for item, value, revision, pending in rows
        }
        return SavedDevice(self.device_id, items, self._meta("cursor"))

    def save(self, items: Mapping[str, SavedItem], *, cursor: int) -> None:
        """Replace the given items and the cursor, all or nothing.

        Example:
            >>> from examples.live.persistence import DeviceStorage, SavedItem
            >>> with DeviceStorage(":memory:") as storage:
            ...     storage.save({"a": SavedItem(None, -1, pending=True)}, cursor=0)
            ...     print(storage.load().items["a"].pending)
            True
        """
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO items (item, value, server_revision, pending) "
                "VALUES (?, ?, ?, ?)",
                [(k, v.value, v.server_revision, int(v.pending)) for k, v in items.items()],
            )
            connection.execute("UPDATE meta SET value = ? WHERE name = 'cursor'", (cursor,))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
