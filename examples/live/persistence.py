"""What a device keeps across restarts, in its own SQLite file.

Saved atomically (one transaction per save):

* the device id, made once when the file is created;
* each item's value, the newest server revision known for it, and whether
  its value is unconfirmed (a tap the server may not have);
* the replay cursor: the newest revision received in a push, sent in ``hello``.

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

import secrets
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import attrs

__all__ = ["DeviceStorage", "SavedDevice", "SavedItem"]

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


class DeviceStorage:
    """A device's SQLite file. Open it once per run; close it with :meth:`close`.

    Args:
        path: the file (created if missing), or ``":memory:"``.
        new_device_id: the id to record if the file has none yet; by default
            a random 53-bit id (exact in JSON and JavaScript).

    Example:
        >>> from examples.live.persistence import DeviceStorage
        >>> with DeviceStorage(":memory:", new_device_id=3) as storage:
        ...     print(storage.device_id)
        3
    """

    def __init__(self, path: str | Path, *, new_device_id: int | None = None) -> None:
        self._connection = sqlite3.connect(path, isolation_level=None)
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
            raise

    def close(self) -> None:
        """Close the file. Closing twice is harmless.

        Example:
            >>> from examples.live.persistence import DeviceStorage
            >>> storage = DeviceStorage(":memory:")
            >>> storage.close(); storage.close()
        """
        self._connection.close()

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
