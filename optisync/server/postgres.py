"""A :class:`~optisync.server.Storage` in PostgreSQL, for several server processes.

Commits are grouped: the writes that arrive while a transaction commits go
together in the next one, in one call of a function the storage creates
(one statement, one round trip): a lock on the one-row revision counter (so
revisions are gap-free and in commit order), one statement for the whole
batch (its dedupe checks, revisions, changes, keys), and one ``pg_notify``.
(A batch holding two copies of one deduplicated write goes one statement
per write instead, in a pipeline: the later copy must see the earlier.)
The process hands its own changes to its server
without reading them back. Each process LISTENs on a connection of its own
and, on another process's notification, reads the log after the last
revision it has seen and hands each change to its server in order. LISTEN
has no replay: after a reconnect the process re-reads the log from that same
revision, so nothing committed meanwhile is missed.

Commits and reads take their connection from a pool of their own
(``psycopg_pool``), which checks it before handing it out, without a round
trip (a socket PostgreSQL wrote to or closed while idle), and replaces one
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
import select
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final

import psycopg
import psycopg.sql
from psycopg_pool import AsyncConnectionPool

from optisync.errors import AlreadyOpenError, InvalidArgumentError, NotOpenError
from optisync.server.storage import (
    Change,
    GroupCommit,
    OpenedByAsyncWith,
    StorageUnavailableError,
    _Write,
    device_proven,
    key_ranges,
    ranges_condition,
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
CREATE INDEX IF NOT EXISTS optisync_keys_by_key_c ON optisync_keys (key COLLATE "C");
CREATE TABLE IF NOT EXISTS optisync_devices (
    device_id bigint PRIMARY KEY,
    secret_digest bytea NOT NULL
);
"""
# A batch in one statement, so one round trip and no transaction block (the
# call is its own transaction): the counter's lock first, then each later
# statement takes its snapshot once the lock is held (a VOLATILE function's
# statements take one each), so it sees every commit made before. Rows: the
# head before the batch (part 0); what other processes committed after
# ``since``, a page at most (1); then each write by its place in the batch:
# its new revision (2) or, for a write whose device remembers a local revision
# of the key at or above its own, that remembered change (3). The new writes
# take the revisions after the head in batch order; the counter moves once;
# each key and remembered write takes the batch's newest (ON CONFLICT cannot
# touch a row twice in one statement, and no two deduplicated writes of one
# device and key come here: the later must see the earlier). Its statements keep
# one plan each: planning the batch's anew at each call (PostgreSQL's choice for
# the first calls of a session, and as it judges after) costs more than the
# writes. The result's column names are the tables' too: in its statements a bare
# name is the column (use_column). The name carries a version: processes of
# another version keep their own.
_COMMIT_FUNCTION: Final = """
CREATE OR REPLACE FUNCTION optisync_commit_batch_1(
    since bigint, page integer, channel text, batch_keys text[], batch_values bytea[],
    batch_local_revisions bigint[], batch_device_ids bigint[], batch_deduplicates boolean[]
) RETURNS TABLE (
    part integer, ordinal bigint, revision bigint, key text, value bytea,
    local_revision bigint, device_id bigint
) LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
DECLARE
    before bigint;
BEGIN
    SELECT h.revision INTO before FROM optisync_head AS h FOR UPDATE;
    RETURN QUERY
    SELECT 0, NULL::bigint, before, NULL::text, NULL::bytea, NULL::bigint, NULL::bigint;
    RETURN QUERY
    SELECT 1, NULL::bigint, c.revision, c.key, c.value, c.local_revision, c.device_id
    FROM optisync_changes AS c WHERE c.revision > since ORDER BY c.revision LIMIT page;
    RETURN QUERY
    WITH batch AS (
        SELECT * FROM unnest(
            batch_keys, batch_values, batch_local_revisions, batch_device_ids, batch_deduplicates
        ) WITH ORDINALITY AS b (key, value, local_revision, device_id, deduplicate, ordinal)
    ), checked AS (
        SELECT b.*, d.revision AS prior FROM batch AS b
        LEFT JOIN optisync_device_keys AS d
        ON b.deduplicate AND d.device_id = b.device_id AND d.key = b.key
        AND d.local_revision >= b.local_revision
    ), fresh AS (
        SELECT c.*, before + row_number() OVER (ORDER BY c.ordinal) AS revision
        FROM checked AS c WHERE c.prior IS NULL
    ), bumped AS (
        UPDATE optisync_head SET revision = (SELECT max(f.revision) FROM fresh AS f)
        WHERE EXISTS (SELECT 1 FROM fresh)
    ), written AS (
        INSERT INTO optisync_changes (revision, key, value, local_revision, device_id)
        SELECT f.revision, f.key, f.value, f.local_revision, f.device_id FROM fresh AS f
    ), keyed AS (
        INSERT INTO optisync_keys (key, revision)
        SELECT DISTINCT ON (f.key) f.key, f.revision FROM fresh AS f
        ORDER BY f.key, f.revision DESC
        ON CONFLICT (key) DO UPDATE SET revision = excluded.revision
    ), remembered AS (
        INSERT INTO optisync_device_keys (device_id, key, local_revision, revision)
        SELECT f.device_id, f.key, f.local_revision, f.revision FROM fresh AS f
        WHERE f.deduplicate
        ON CONFLICT (device_id, key) DO UPDATE
        SET local_revision = excluded.local_revision, revision = excluded.revision
    )
    SELECT 2, f.ordinal, f.revision, NULL::text, NULL::bytea, NULL::bigint, NULL::bigint
    FROM fresh AS f
    UNION ALL
    SELECT 3, c.ordinal, p.revision, NULL::text, p.value, p.local_revision, NULL::bigint
    FROM checked AS c JOIN optisync_changes AS p ON p.revision = c.prior;
    PERFORM pg_notify(channel, (SELECT h.revision FROM optisync_head AS h)::text);
END
$$
"""
_COMMIT_BATCH: Final = (
    "SELECT * FROM optisync_commit_batch_1(%s, %s, %s, %s::text[], %s::bytea[], "
    "%s::bigint[], %s::bigint[], %s::boolean[])"
)
# Any fixed number: it keeps two processes from creating the tables at once.
_SCHEMA_LOCK: Final = 0x0951_7C
_COLUMNS: Final = "c.revision, c.key, c.value, c.local_revision, c.device_id"
_PAGE: Final = 500
_CHANGES_AFTER: Final = (
    f"SELECT {_COLUMNS} FROM optisync_changes AS c "
    "WHERE c.revision > %s ORDER BY c.revision LIMIT %s"
)
# The tombstones at or below a revision, and a compaction's statements: the rows
# that reference them first (foreign keys), the change-log rows last.
_TOMBSTONES: Final = (
    "SELECT revision FROM optisync_changes WHERE value = ''::bytea AND revision <= %s"
)
_COMPACT: Final = (
    f"DELETE FROM optisync_device_keys WHERE revision IN ({_TOMBSTONES})",
    f"DELETE FROM optisync_keys WHERE revision IN ({_TOMBSTONES})",
    "DELETE FROM optisync_changes WHERE value = ''::bytea AND revision <= %s",
)
# What each connection calls itself in pg_stat_activity.
_COMMITS: Final = "optisync-commits"
_READS: Final = "optisync-reads"
_LISTEN: Final = "optisync-listen"

_Connection = psycopg.AsyncConnection[tuple[object, ...]]
_Pool = AsyncConnectionPool[_Connection]


async def _closed_while_idle(connection: _Connection) -> None:
    """The pools' check before each use, without a round trip to the database.

    An idle connection of ours is never sent anything, so a readable socket
    means PostgreSQL wrote to it (the FATAL of a terminated backend) or closed
    it: it is closed here and refused, and the pool connects anew. A
    connection cut without a word (a partition) passes, and the call on it
    fails as ``unavailable``; the device retries.
    """
    if not connection.closed:
        readable, _, _ = select.select([connection.fileno()], [], [], 0)
        if not readable:
            return
        await connection.close()
    raise psycopg.OperationalError("PostgreSQL closed this connection while it was idle")


def _bytea(cell: object) -> bytes:
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
        max_batch: group commit: the writes that arrive while a batch
            commits go together, up to this many, in the next transaction,
            in one round trip; each keeps its own revision.

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
        max_batch: int = 256,
    ) -> None:
        if not isinstance(max_batch, int) or max_batch < 1:
            raise InvalidArgumentError(f"max_batch must be an int of 1 or more, got {max_batch!r}")
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
        self._group = GroupCommit(self._commit_batch, max_batch)
        # The backends this process commits through: its own NOTIFYs are skipped.
        self._own_backends: set[int] = set()

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
        # One connection, checked before each use without a round trip: one that
        # PostgreSQL closed while idle is replaced before a call fails on it.
        pool: _Pool = AsyncConnectionPool(
            self._dsn,
            kwargs={"autocommit": True, "application_name": name},
            min_size=1,
            max_size=1,
            open=False,
            check=_closed_while_idle,
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
            await db.execute(_COMMIT_FUNCTION)
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
        if self._commits is None:
            raise NotOpenError("the storage is not open: await open() first")
        return await self._group.commit(key, value, local_revision, device_id, deduplicate)

    def _remember_backend(self, pid: int) -> None:
        if pid not in self._own_backends:
            if len(self._own_backends) >= 8:  # connections replaced over time: keep the last
                self._own_backends.clear()
            self._own_backends.add(pid)

    async def _commit_batch(self, batch: list[_Write]) -> list[Change]:
        """Commit ``batch`` in one transaction and one round trip; hand it over.

        The batch also reads what other processes committed since this one
        last handed a change over (a page at most), so it needs no read of
        its own to keep revision order. A batch with two deduplicated writes
        of one device and key (the later must see the earlier) goes one
        statement per write, in a pipeline; any other goes in one call.
        """
        since = self._last_seen
        async with self._connection(self._commits, "a commit") as db:
            self._remember_backend(db.info.backend_pid)
            if _each_device_key_once(batch):
                before, others, results = await _commit_together(db, batch, since, self._channel)
            else:
                before, others, results = await _commit_one_by_one(db, batch, since, self._channel)
        new = [change for change, fresh in results if fresh]
        # Hand over the commits of other processes before ours, then ours, without
        # reading either back. Should a read still be needed and fail, the LISTEN
        # side catches up; only this batch's writes report the failure.
        await self._hand_over(before, others, new)
        return [change for change, _ in results]

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
        rows = await self._query(_CHANGES_AFTER, (revision, limit))
        return [_change(row) for row in rows]  # type: ignore[arg-type]

    async def latest_after(
        self, revision: int, limit: int, *, prefixes: Iterable[str] | None = None
    ) -> list[Change]:
        """Up to ``limit`` keys' newest changes above ``revision``, oldest first.

        With ``prefixes``, only keys that start with one of them: ranges in
        code point order (``COLLATE "C"``, on its own index), whatever the
        database's collation.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").latest_after  # doctest: +ELLIPSIS
            <bound method PostgresStorage.latest_after of <...>>
        """
        condition, bounds = "true", list[str]()
        if prefixes is not None:
            ranges = key_ranges(prefixes)
            if not ranges:
                return []
            condition, bounds = ranges_condition('k.key COLLATE "C"', ranges, "%s")
        rows = await self._query(
            f"SELECT {_COLUMNS} FROM optisync_keys AS k "
            "JOIN optisync_changes AS c ON c.revision = k.revision "
            f"WHERE k.revision > %s AND ({condition}) ORDER BY k.revision LIMIT %s",
            (revision, *bounds, limit),
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

    async def horizon(self) -> int:
        """The revision through which tombstones were dropped (0: never compacted).

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").horizon  # doctest: +ELLIPSIS
            <bound method PostgresStorage.horizon of <...>>
        """
        rows = await self._query("SELECT value FROM optisync_meta WHERE name = 'horizon'")
        return int(str(rows[0][0])) if rows else 0

    async def compact(self, through_revision: int) -> int:
        """Drop the tombstones at or below ``through_revision``; return how many.

        One transaction, holding the revision counter's lock, so no commit
        of any process runs meanwhile. See :meth:`CompactingStorage.compact
        <optisync.server.CompactingStorage.compact>`.

        Example:
            >>> from optisync.server.postgres import PostgresStorage
            >>> PostgresStorage("dbname=app").compact  # doctest: +ELLIPSIS
            <bound method PostgresStorage.compact of <...>>
        """
        if not isinstance(through_revision, int) or through_revision < 0:
            raise InvalidArgumentError(
                f"through_revision must be an int of 0 or more, got {through_revision!r}"
            )
        async with self._connection(self._commits, "a compaction") as db, db.transaction():
            cursor = await db.execute("SELECT revision FROM optisync_head FOR UPDATE")
            head = await cursor.fetchone()
            assert head is not None
            cursor = await db.execute("SELECT value FROM optisync_meta WHERE name = 'horizon'")
            kept = await cursor.fetchone()
            before = 0 if kept is None else int(str(kept[0]))
            horizon = max(min(through_revision, int(str(head[0]))), before)
            for statement in _COMPACT:
                cursor = await db.execute(statement, (horizon,))
            dropped = cursor.rowcount
            await db.execute(
                "INSERT INTO optisync_meta (name, value) VALUES ('horizon', %s) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (str(horizon),),
            )
        return max(dropped, 0)

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
            return device_proven(_bytea(rows[0][0]) if rows else None, None)
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
        return device_proven(None if row is None else _bytea(row[0]), secret_digest)

    # -- LISTEN --------------------------------------------------------------------

    async def _catch_up(self, target: int | None = None) -> None:
        """Hand every change after ``last_seen`` (up to ``target``) to the server, in order."""
        async with self._catching_up:
            await self._read_up_to(target)

    async def _read_up_to(self, target: int | None) -> None:
        # Holding _catching_up.
        while target is None or self._last_seen < target:
            page = await self.changes_after(self._last_seen, _PAGE)
            for change in page:
                self._hand(change)
            if len(page) < _PAGE:
                return

    def _hand(self, change: Change) -> None:
        self._last_seen = change.server_revision
        if self.on_commit is not None:
            self.on_commit(change)

    async def _hand_over(self, before: int, others: list[Change], ours: list[Change]) -> None:
        """Hand what other processes committed up to ``before``, then ``ours``.

        ``others`` is what the batch read of them, in order; ``ours`` follow
        ``before`` with no gap (the batch held the counter's lock). Those the
        LISTEN side already handed are skipped; what ``others`` lacks is read.
        """
        async with self._catching_up:
            for change in others:
                if self._last_seen < change.server_revision <= before:
                    if change.server_revision != self._last_seen + 1:
                        break  # a gap: read the rest in order below
                    self._hand(change)
            await self._read_up_to(before)
            if self._last_seen < before:  # the read came short: read ours back too
                await self._read_up_to(ours[-1].server_revision if ours else before)
                return
            for change in ours:
                if change.server_revision > self._last_seen:
                    self._hand(change)

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
                        if notice.pid in self._own_backends:
                            continue  # this process's commit: handed over by its batch
                        await self._catch_up(int(notice.payload) if notice.payload else None)
            except (psycopg.OperationalError, StorageUnavailableError) as error:
                self.reconnects += 1
                logger.warning("LISTEN connection lost (%s); reconnecting in %.1f s", error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


# -- a batch's statements (one transaction, one round trip) -------------------------

# One write: the dedupe check, its revision, change, key and remembered write,
# in one statement. Returns the new change (last column true) or, for a retry
# or a stale copy, the device's remembered commit of the key (false).
_WRITE: Final = f"""
WITH prior AS (
    SELECT d.local_revision, d.revision FROM optisync_device_keys AS d
    WHERE %(deduplicate)s AND d.device_id = %(device_id)s AND d.key = %(key)s
), fresh AS (
    UPDATE optisync_head SET revision = revision + 1
    WHERE NOT EXISTS (SELECT 1 FROM prior WHERE prior.local_revision >= %(local_revision)s)
    RETURNING revision
), written AS (
    INSERT INTO optisync_changes (revision, key, value, local_revision, device_id)
    SELECT revision, %(key)s, %(value)s, %(local_revision)s, %(device_id)s FROM fresh
    RETURNING revision, key, value, local_revision, device_id
), keyed AS (
    INSERT INTO optisync_keys (key, revision) SELECT key, revision FROM written
    ON CONFLICT (key) DO UPDATE SET revision = excluded.revision
), remembered AS (
    INSERT INTO optisync_device_keys (device_id, key, local_revision, revision)
    SELECT device_id, key, local_revision, revision FROM written WHERE %(deduplicate)s
    ON CONFLICT (device_id, key) DO UPDATE
    SET local_revision = excluded.local_revision, revision = excluded.revision
)
SELECT revision, key, value, local_revision, device_id, true FROM written
UNION ALL
SELECT {_COLUMNS}, false
FROM prior JOIN optisync_changes AS c ON c.revision = prior.revision
WHERE prior.local_revision >= %(local_revision)s
"""
# Once per batch, after its writes: the head is the batch's last revision.
_NOTIFY: Final = "SELECT pg_notify(%s, (SELECT revision FROM optisync_head)::text)"


def _parameters(write: _Write) -> dict[str, object]:
    return {
        "key": write.key,
        "value": write.value,
        "local_revision": write.local_revision,
        "device_id": write.device_id,
        "deduplicate": write.deduplicate,
    }


def _each_device_key_once(batch: list[_Write]) -> bool:
    """Whether no two deduplicated writes of ``batch`` share a device and key."""
    pairs = [(write.device_id, write.key) for write in batch if write.deduplicate]
    return len(set(pairs)) == len(pairs)


_Committed = tuple[int, list[Change], list[tuple[Change, bool]]]


async def _commit_together(
    db: _Connection, batch: list[_Write], since: int, channel: str
) -> _Committed:
    """The head before, others' changes after ``since``, each write's change and whether new."""
    cursor = await db.execute(
        _COMMIT_BATCH,
        (
            since,
            _PAGE,
            channel,
            [write.key for write in batch],
            [write.value for write in batch],
            [write.local_revision for write in batch],
            [write.device_id for write in batch],
            [write.deduplicate for write in batch],
        ),
    )
    before, others, results = 0, list[Change](), dict[int, tuple[Change, bool]]()
    for part, ordinal, revision, *rest in await cursor.fetchall():
        if part == 0:
            before = int(str(revision))
        elif part == 1:
            others.append(_change((revision, *rest)))  # type: ignore[arg-type]
        else:
            write = batch[int(str(ordinal)) - 1]
            value, local_revision = write.value, write.local_revision
            if part == 3:  # the device's remembered change of the key
                value, local_revision = _bytea(rest[1]), int(str(rest[2]))
            change = Change(int(str(revision)), write.key, value, local_revision, write.device_id)
            results[int(str(ordinal))] = (change, part == 2)
    return before, others, [results[ordinal] for ordinal in range(1, len(batch) + 1)]


async def _commit_one_by_one(
    db: _Connection, batch: list[_Write], since: int, channel: str
) -> _Committed:
    """As :func:`_commit_together`, one statement per write (each sees the ones before)."""
    # The counter's lock first: each later statement takes its snapshot once it
    # is held (READ COMMITTED), so it sees every commit made before.
    async with db.pipeline(), db.transaction():
        head = await db.execute("SELECT revision FROM optisync_head FOR UPDATE")
        missed = await db.execute(_CHANGES_AFTER, (since, _PAGE))
        written = [await db.execute(_WRITE, _parameters(write)) for write in batch]
        await db.execute(_NOTIFY, (channel,))
    before = await head.fetchone()
    assert before is not None
    others = [_change(row) for row in await missed.fetchall()]  # type: ignore[arg-type]
    rows = [await cursor.fetchone() for cursor in written]
    results = [(_change(row[:5]), bool(row[5])) for row in rows if row is not None]  # type: ignore[arg-type]
    return int(str(before[0])), others, results
