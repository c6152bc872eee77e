"""The server's SQLite database: a log of changes whose row id is the server revision.

Each write inserts one row into ``changes`` and points ``items`` at it, in one
transaction, so a revision exists exactly when its value does. Revisions are
``AUTOINCREMENT`` row ids: they only grow, across restarts too.

Example:
    >>> from examples.live.database import ServerDatabase
    >>> with ServerDatabase(":memory:") as db:
    ...     first = db.write("like", "true", local_revision=1, device_id=7)
    ...     second = db.write("like", "false", local_revision=2, device_id=7)
    ...     print(first.server_revision, second.server_revision, db.current("like").value)
    1 2 false
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import attrs

__all__ = ["Change", "ServerDatabase"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    revision INTEGER PRIMARY KEY AUTOINCREMENT,
    item TEXT NOT NULL,
    value TEXT NOT NULL,
    local_revision INTEGER NOT NULL,
    device_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    item TEXT PRIMARY KEY,
    revision INTEGER NOT NULL REFERENCES changes (revision)
);
"""


@attrs.frozen
class Change:
    """One committed write. ``value`` is canonical JSON text.

    Example:
        >>> from examples.live.database import Change
        >>> Change(server_revision=3, item="like", value="true", local_revision=1, device_id=7)
        Change(server_revision=3, item='like', value='true', local_revision=1, device_id=7)
    """

    server_revision: int
    item: str
    value: str
    local_revision: int
    device_id: int


class ServerDatabase:
    """The live server's store of values, over the standard ``sqlite3`` module.

    Args:
        path: a database file, created if missing; ``":memory:"`` for a
            database that lives as long as this object.

    Close it with :meth:`close` (or ``with``): an unclosed connection is a
    ``ResourceWarning``.

    Example:
        >>> from examples.live.database import ServerDatabase
        >>> db = ServerDatabase(":memory:")
        >>> db.head()
        0
        >>> db.close()
    """

    def __init__(self, path: str | Path = ":memory:") -> None:
        # isolation_level=None: we write BEGIN/COMMIT ourselves.
        self._connection = sqlite3.connect(path, isolation_level=None)
        try:
            if str(path) != ":memory:":
                self._connection.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged write survives a power cut, not only a crash.
            self._connection.execute("PRAGMA synchronous=FULL")
            self._connection.executescript(_SCHEMA)
        except BaseException:
            self._connection.close()
            raise

    def close(self) -> None:
        """Close the connection. Closing twice is harmless.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> db = ServerDatabase()
            >>> db.close(); db.close()
        """
        self._connection.close()

    def __enter__(self) -> ServerDatabase:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def write(self, item: str, value: str, *, local_revision: int, device_id: int) -> Change:
        """Store ``value`` (canonical JSON) for ``item`` and give it the next revision.

        The revision and the value are committed in one transaction.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     db.write("color", '"red"', local_revision=1, device_id=2).server_revision
            1
        """
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            cursor = connection.execute(
                "INSERT INTO changes (item, value, local_revision, device_id) VALUES (?, ?, ?, ?)",
                (item, value, local_revision, device_id),
            )
            revision = cursor.lastrowid
            assert revision is not None
            connection.execute(
                "INSERT INTO items (item, revision) VALUES (?, ?) "
                "ON CONFLICT (item) DO UPDATE SET revision = excluded.revision",
                (item, revision),
            )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return Change(revision, item, value, local_revision, device_id)

    def head(self) -> int:
        """The newest revision (0 before the first write).

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     print(db.head())
            0
        """
        row = self._connection.execute("SELECT max(revision) FROM changes").fetchone()
        return 0 if row[0] is None else int(row[0])

    def changes_since(self, since: int) -> Iterator[Change]:
        """Every change with a revision above ``since``, oldest first.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     _ = db.write("a", "1", local_revision=1, device_id=1)
            ...     _ = db.write("b", "2", local_revision=1, device_id=1)
            ...     print([change.item for change in db.changes_since(1)])
            ['b']
        """
        rows = self._connection.execute(
            "SELECT revision, item, value, local_revision, device_id FROM changes "
            "WHERE revision > ? ORDER BY revision",
            (since,),
        ).fetchall()
        return (Change(*row) for row in rows)

    def current(self, item: str) -> Change | None:
        """The newest change of ``item``, or None if it was never written.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     print(db.current("nothing"))
            None
        """
        row = self._connection.execute(
            "SELECT c.revision, c.item, c.value, c.local_revision, c.device_id "
            "FROM items AS i JOIN changes AS c ON c.revision = i.revision WHERE i.item = ?",
            (item,),
        ).fetchone()
        return None if row is None else Change(*row)

    def snapshot(self) -> dict[str, Change]:
        """The newest change of every item, by item.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     _ = db.write("a", "1", local_revision=1, device_id=1)
            ...     _ = db.write("a", "2", local_revision=2, device_id=1)
            ...     print(db.snapshot()["a"].value)
            2
        """
        rows = self._connection.execute(
            "SELECT c.revision, c.item, c.value, c.local_revision, c.device_id "
            "FROM items AS i JOIN changes AS c ON c.revision = i.revision ORDER BY i.item"
        ).fetchall()
        return {row[1]: Change(*row) for row in rows}

    def change_count(self) -> int:
        """How many changes the log holds.

        Example:
            >>> from examples.live.database import ServerDatabase
            >>> with ServerDatabase() as db:
            ...     print(db.change_count())
            0
        """
        row = self._connection.execute("SELECT count(*) FROM changes").fetchone()
        return int(row[0])
