"""A :class:`~optisync.server.Storage` in PostgreSQL, for several server processes.

Every commit takes the next revision from a one-row counter (so revisions are
gap-free and in commit order), writes the change and sends a ``pg_notify``,
all in one transaction. Each process LISTENs on a connection of its own and,
on every notification, reads the log after the last revision it has seen and
hands each change to its server in order. LISTEN has no replay: after a
reconnect the process re-reads the log from that same revision, so nothing
committed meanwhile is missed.

Commits and reads take their connection from a pool of their own
(``psycopg_pool``), which checks it before handing it out and replaces one
that PostgreSQL closed (a restart, ``pg_terminate_backend``). A call whose
connection is lost midway raises :class:`StorageUnavailableError` for that
call alone; the next one runs on a new connection. :meth:`PostgresStorage.open`
raises it too when the database cannot be reached.

Example:
    >>> import asyncio, os
    >>> from optisync.server.postgres import PostgresStorage
    >>> async def main(dsn: str) -> None:
    ...     async with PostgresStorage(dsn) as storage:
    ...         change = await storage.commit("k", b"1", local_revision=1, device_id=2)
    ...         print(change.server_revision > 0)
    >>> if "OPTISYNC_TEST_POSTGRES_DSN" in os.environ:  # a server to talk to
    ...     asyncio.run(main(os.environ["OPTISYNC_TEST_POSTGRES_DSN"]))
    ... else:
    ...     print(True)
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Final

import psycopg
import psycopg.sql
from psycopg_pool import AsyncConnectionPool

from optisync.errors import AlreadyOpenError, NotOpenError
from optisync.server.storage import (
    Change,
    OpenedByAsyncWith,
    StorageUnavailableError,
    device_proven,
)

__all__ = ["PostgresStorage"]

logger: Final = logging.getLogger("optisync.server.postgres")

# Run at every open (under _SCHEMA_LOCK): a database made by an older version
# gains the tables it lacks, optisync_device_keys included.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS optisync_meta (name text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS optisync_head (
    single boolean PRIMARY KEY DEFAULT true CHECK (single),
    revision bigint NOT NULL
);
INSERT INTO optisync_head (single, revision) VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS optisync_changes (
    revision bigint PRIMARY KEY,
    key text NOT NULL,
    value bytea NOT NULL,
    local_revision bigint NOT NULL,
    device_id bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS optisync_keys (
    key text PRIMARY KEY,
    revision bigint NOT NULL REFERENCES optisync_changes (revision)
);
CREATE TABLE IF NOT EXISTS optisync_device_keys (
    device_id bigint NOT NULL,
    key text NOT NULL,
    local_revision bigint NOT NULL,
    revision bigint NOT NULL REFERENCES optisync_changes (revision),
    PRIMARY KEY (device_id, key)
);
CREATE INDEX IF NOT EXISTS optisync_keys_by_revision ON optisync_keys (revision);
CREATE TABLE IF NOT EXISTS optisync_devices (
    device_id bigint PRIMARY KEY,
    secret_digest bytea NOT NULL
);
"""
# Any fixed number: it keeps two processes from creating the tables at once.
_SCHEMA_LOCK: Final = 0x0951_7C
_COLUMNS: Final = "c.revision, c.key, c.value, c.local_revision, c.device_id"
_PAGE: Final = 500
# What each connection calls itself in pg_stat_activity.
_COMMITS: Final = "optisync-commits"
_READS: Final = "optisync-reads"
_LISTEN: Final = "optisync-listen"

_Connection = psycopg.AsyncConnection[tuple[object, ...]]
_Pool = AsyncConnectionPool[_Connection]


def _digest(cell: object) -> bytes:
    assert isinstance(cell, bytes | memoryview)  # a bytea column
    return bytes(cell)


def _change(row: tuple[int, str, bytes, int, int]) -> Change:
    return Change(row[0], row[1], bytes(row[2]), row[3], row[4])


class PostgresStorage(OpenedByAsyncWith):
    """Keeps the log in PostgreSQL (psycopg 3, async); pushes commits of every process.

    Args:
        dsn: a libpq connection string or URL.
        channel: the LISTEN/NOTIFY channel shared by the processes of one database.
        reconnect_delay: first wait before the LISTEN connection reconnects;
            it doubles up to 5 s while the database stays unreachable.
        wait_timeout: how long a commit or read waits for a working
            connection (the database down) before it fails.

    Example:
        >>> from optisync.server.postgres import PostgresStorage
        >>> PostgresStorage("postgresql://127.0.0.1/app").generation
        ''
    """

    on_commit: Callable[[Change], None] | None = None

    def __init__(
        self,
        dsn: str,
        *,
        channel: str = "optisync_changes",
        reconnect_delay: float = 0.1,
        wait_timeout: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._reconnect_delay = reconnect_delay
        # Commits on one connection, reads on another: a transaction is never
        # shared by two tasks, and a replay's reads never wait behind commits.
        self._wait_timeout = wait_timeout
        self._commits: _Pool | None = None
        self._reads: _Pool | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._catching_up = asyncio.Lock()
        self._last_seen = 0
        self._generation = ""
        self.reconnects = 0

    @property
    def generation(self) -> str:
        """The random id written when the tables were created ("" before :meth:`open`).

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").generation
            ''
        """
        return self._generation

    @property
    def last_seen(self) -> int:
        """The newest revision this process has handed to its server.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").last_seen
            0
        """
        return self._last_seen

    async def _open_pool(self, name: str) -> _Pool:
        # One connection, checked before each use: one that PostgreSQL closed
        # while idle is replaced before a call fails on it.
        pool: _Pool = AsyncConnectionPool(
            self._dsn,
            kwargs={"autocommit": True, "application_name": name},
            min_size=1,
            max_size=1,
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=self._wait_timeout,
            name=name,
        )
        try:
            await pool.open(wait=True, timeout=self._wait_timeout)
        except BaseException as error:
            await pool.close()
            if isinstance(error, psycopg.OperationalError):  # PoolTimeout is one too
                raise StorageUnavailableError(
                    f"PostgreSQL could not be reached: {error} "
                    "(check the DSN and that the server is up, then open again)"
                ) from error
            raise
        return pool

    @contextlib.asynccontextmanager
    async def _connection(
        self, pool: _Pool | None, doing: str
    ) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
        """A working connection of ``pool``; a lost one raises StorageUnavailableError."""
        if pool is None:
            raise NotOpenError("the storage is not open: await open() first")
        try:
            async with pool.connection() as connection:
                yield connection
        except psycopg.OperationalError as error:  # PoolTimeout is one too
            # The pool drops a broken connection when it is handed back.
            raise StorageUnavailableError(f"PostgreSQL failed during {doing}: {error}") from error

    async def _query(
        self, sql: str, parameters: tuple[object, ...] = ()
    ) -> list[tuple[object, ...]]:
        async with self._connection(self._reads, "a read") as reads:
            cursor = await reads.execute(sql, parameters)
            return await cursor.fetchall()

    async def open(self) -> None:
        """Connect, create the tables if missing, and start listening.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> storage = PostgresStorage("dbname=app")  # then: await storage.open()
        """
        if self._commits is not None:
            raise AlreadyOpenError("the storage is already open: open it once, close it once")
        try:
            self._commits = await self._open_pool(_COMMITS)
            self._reads = await self._open_pool(_READS)
            self._generation = await self._create_tables()
            self._last_seen = await self.head()
            self._listener = asyncio.create_task(self._listen_forever())
            await self._listening.wait()
        except BaseException:
            await self.close()
            raise

    async def _create_tables(self) -> str:
        """Create what is missing; the database's generation id."""
        async with self._connection(self._commits, "open") as db, db.transaction():
            await db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            await db.execute(_SCHEMA)
            await db.execute(
                "INSERT INTO optisync_meta (name, value) VALUES ('generation', %s) "
                "ON CONFLICT DO NOTHING",
                (uuid.uuid4().hex,),
            )
            cursor = await db.execute("SELECT value FROM optisync_meta WHERE name = 'generation'")
            row = await cursor.fetchone()
        assert row is not None
        return str(row[0])

    async def close(self) -> None:
        """Stop listening and disconnect. Closing twice is harmless.

        Example:
            >>> import asyncio
            >>> from optisync.server.postgres import PostgresStorage
            >>> asyncio.run(PostgresStorage("dbname=app").close())
        """
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        for pool in (self._commits, self._reads):
            if pool is not None:
                await pool.close()
        self._commits = self._reads = None

    async def commit(
        self,
        key: str,
        value: bytes,
        *,
        local_revision: int,
        device_id: int,
        deduplicate: bool = False,
    ) -> Change:
        """Write ``value`` at the next revision and notify every process, in one transaction.

        With ``deduplicate``, a write this device already committed for this
        key (same or lower ``local_revision``), through this process or another,
        returns that commit instead (see :meth:`Storage.commit
        <optisync.server.Storage.commit>`).

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").commit  # doctest: +ELLIPSIS
            <bound method PostgresStorage.commit of <...>>
        """
        async with self._connection(self._commits, "a commit") as db, db.transaction():
            remembered = await _remembered(db, device_id, key) if deduplicate else None
            if remembered is not None and local_revision <= remembered.local_revision:
                change = remembered
            else:
                change = await _insert(db, key, value, local_revision, device_id)
                if deduplicate:
                    await _remember(db, change)
                await db.execute(
                    "SELECT pg_notify(%s, %s)", (self._channel, str(change.server_revision))
                )
        # Hand it (and any earlier commit of another process) to the server before
        # the ack; a remembered commit too, which another process may have made.
        # Should this read fail, the change still reaches every device through
        # the LISTEN side's catch-up; only this call reports a failure.
        await self._catch_up(change.server_revision)
        return change

    async def read(self, key: str) -> Change | None:
        """The newest change of ``key``, or None.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").read  # doctest: +ELLIPSIS
            <bound method PostgresStorage.read of <...>>
        """
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM optisync_keys AS k "
            "JOIN optisync_changes AS c ON c.revision = k.revision WHERE k.key = %s",
            (key,),
        )
        return _change(rows[0]) if rows else None  # type: ignore[arg-type]

    async def changes_after(self, revision: int, limit: int) -> list[Change]:
        """Up to ``limit`` changes above ``revision``, oldest first.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").changes_after  # doctest: +ELLIPSIS
            <bound method PostgresStorage.changes_after of <...>>
        """
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM optisync_changes AS c "
            "WHERE c.revision > %s ORDER BY c.revision LIMIT %s",
            (revision, limit),
        )
        return [_change(row) for row in rows]  # type: ignore[arg-type]

    async def latest_after(self, revision: int, limit: int) -> list[Change]:
        """Up to ``limit`` keys' newest changes above ``revision``, oldest first.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").latest_after  # doctest: +ELLIPSIS
            <bound method PostgresStorage.latest_after of <...>>
        """
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM optisync_keys AS k "
            "JOIN optisync_changes AS c ON c.revision = k.revision "
            "WHERE k.revision > %s ORDER BY k.revision LIMIT %s",
            (revision, limit),
        )
        return [_change(row) for row in rows]  # type: ignore[arg-type]

    async def head(self) -> int:
        """The newest revision, 0 before the first write.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").head  # doctest: +ELLIPSIS
            <bound method PostgresStorage.head of <...>>
        """
        rows = await self._query("SELECT revision FROM optisync_head")
        return int(str(rows[0][0])) if rows else 0

    async def claim_device(self, device_id: int, secret_digest: bytes | None) -> bool:
        """Bind ``device_id`` to ``secret_digest`` at its first claim; check it later.

        See :meth:`Storage.claim_device <optisync.server.Storage.claim_device>`.
        Of two processes claiming one id at once, the first insert wins; the
        other reads the winner's digest (a new statement sees the committed row).

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").claim_device  # doctest: +ELLIPSIS
            <bound method PostgresStorage.claim_device of <...>>
        """
        if secret_digest is None:
            rows = await self._query(
                "SELECT secret_digest FROM optisync_devices WHERE device_id = %s", (device_id,)
            )
            return device_proven(_digest(rows[0][0]) if rows else None, None)
        async with self._connection(self._commits, "a device claim") as db, db.transaction():
            await db.execute(
                "INSERT INTO optisync_devices (device_id, secret_digest) VALUES (%s, %s) "
                "ON CONFLICT (device_id) DO NOTHING",
                (device_id, secret_digest),
            )
            cursor = await db.execute(
                "SELECT secret_digest FROM optisync_devices WHERE device_id = %s", (device_id,)
            )
            row = await cursor.fetchone()
        return device_proven(None if row is None else _digest(row[0]), secret_digest)

    # -- LISTEN --------------------------------------------------------------------

    async def _catch_up(self, target: int | None = None) -> None:
        """Hand every change after ``last_seen`` (up to ``target``) to the server, in order."""
        async with self._catching_up:
            while target is None or self._last_seen < target:
                page = await self.changes_after(self._last_seen, _PAGE)
                for change in page:
                    self._last_seen = change.server_revision
                    if self.on_commit is not None:
                        self.on_commit(change)
                if len(page) < _PAGE:
                    return

    async def _listen_forever(self) -> None:
        delay = self._reconnect_delay
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, application_name=_LISTEN
                ) as listener:
                    await listener.execute(
                        psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
                    )
                    # LISTEN keeps no backlog: read what was committed while deaf.
                    await self._catch_up()
                    self._listening.set()
                    delay = self._reconnect_delay
                    async for notice in listener.notifies():
                        await self._catch_up(int(notice.payload))
            except (psycopg.OperationalError, StorageUnavailableError) as error:
                self.reconnects += 1
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


# -- one commit's statements (inside its transaction) -------------------------------


async def _insert(
    db: _Connection, key: str, value: bytes, local_revision: int, device_id: int
) -> Change:
    # The row lock on the counter orders commits: revision order is commit order.
    cursor = await db.execute("UPDATE optisync_head SET revision = revision + 1 RETURNING revision")
    row = await cursor.fetchone()
    assert row is not None
    revision = int(str(row[0]))
    await db.execute(
        "INSERT INTO optisync_changes (revision, key, value, local_revision, device_id) "
        "VALUES (%s, %s, %s, %s, %s)",
        (revision, key, value, local_revision, device_id),
    )
    await db.execute(
        "INSERT INTO optisync_keys (key, revision) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET revision = excluded.revision",
        (key, revision),
    )
    return Change(revision, key, value, local_revision, device_id)


async def _remembered(db: _Connection, device_id: int, key: str) -> Change | None:
    """The newest commit of ``key`` by ``device_id`` among its deduplicated writes."""
    # The counter's row lock first (every commit takes it), then the read in a
    # statement of its own: under READ COMMITTED its snapshot is taken once the
    # lock is held, so it sees the commit of the transaction that held it last.
    # (A join under FOR UPDATE would re-read only the locked row, not the join.)
    await db.execute("SELECT revision FROM optisync_head FOR UPDATE")
    cursor = await db.execute(
        f"SELECT {_COLUMNS} FROM optisync_device_keys AS d "
        "JOIN optisync_changes AS c ON c.revision = d.revision "
        "WHERE d.device_id = %s AND d.key = %s",
        (device_id, key),
    )
    row = await cursor.fetchone()
    return None if row is None else _change(row)  # type: ignore[arg-type]


async def _remember(db: _Connection, change: Change) -> None:
    await db.execute(
        "INSERT INTO optisync_device_keys (device_id, key, local_revision, revision) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (device_id, key) DO UPDATE SET "
        "local_revision = excluded.local_revision, revision = excluded.revision",
        (change.device_id, change.key, change.local_revision, change.server_revision),
    )
