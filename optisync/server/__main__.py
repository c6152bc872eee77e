"""``python -m optisync.server --database app.sqlite3 --port 8765``: run a server.

``python -m optisync.server compact --database app.sqlite3 --keep 100000``
drops the tombstones (deletes) older than the newest 100,000 revisions
(:func:`compact_main`); run it from cron beside the server.

The log goes through :mod:`logging` to stderr from a thread of its own: a
full pipe that nobody drains drops log lines, it never stops the server.
Without ``$OPTISYNC_SERVER_TOKEN`` it listens on loopback only, unless
``--insecure``. A server that cannot start (that refusal, a database it cannot
open, a port in use) says why in one line on stderr and exits with status 2.

Example:
    >>> from optisync.server.__main__ import parse_arguments
    >>> parse_arguments(["--database", "app.sqlite3", "--port", "0"]).port
    0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import logging
import logging.handlers
import os
import queue
import signal
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from optisync.server._memory import use_system_malloc
from optisync.server.security import allow_anyone, require_token
from optisync.server.server import SyncServer
from optisync.server.storage import (
    CompactingStorage,
    SqliteStorage,
    Storage,
    StorageUnavailableError,
)

if TYPE_CHECKING:
    from optisync.server.metrics import ServerMetrics

__all__ = [
    "DropReportingHandler",
    "DroppingQueueHandler",
    "compact_main",
    "main",
    "parse_arguments",
]

TOKEN_VARIABLE = "OPTISYNC_SERVER_TOKEN"
PROGRAM = "python -m optisync.server"
CANNOT_START = 2  # the exit status of every failure to start, as for argparse's usage errors

_DESCRIPTION = """\
Run an optisync sync server: devices connect over WebSocket; every change is
committed to one database and pushed to every connected device."""

_EPILOG = f"""\
example:
  {TOKEN_VARIABLE}=change-me \\
    {PROGRAM} --database app.sqlite3 --host 0.0.0.0

When ${TOKEN_VARIABLE} is set, every device must send that token in its
hello. Without it the server listens on loopback only (127.0.0.0/8, ::1,
localhost) unless --insecure. It prints its URL on stdout once listening and
stops on SIGINT or SIGTERM. Exit status: 0 once stopped; 2 when it cannot start
(one line on stderr says why)."""


class _CannotStartError(Exception):
    """Why the server cannot start, in one line for its operator: no bug, no traceback."""


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to a bounded queue and drops them when it is full: never blocks.

    Example:
        >>> import logging, queue
        >>> from optisync.server.__main__ import DroppingQueueHandler
        >>> handler = DroppingQueueHandler(queue.Queue(maxsize=1))
        >>> record = logging.makeLogRecord({"msg": "hi"})
        >>> handler.emit(record); handler.emit(record)
        >>> handler.dropped
        1
    """

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class DropReportingHandler(logging.StreamHandler[TextIO]):
    """Writes records to a stream, first saying how many ``source`` dropped since the last.

    It runs in the :class:`~logging.handlers.QueueListener`'s thread: when a
    stalled stream moves again, its reader learns how much of the log is missing.

    Example:
        >>> import io, logging, queue
        >>> from optisync.server.__main__ import DropReportingHandler, DroppingQueueHandler
        >>> source = DroppingQueueHandler(queue.Queue(maxsize=1))
        >>> source.dropped = 3
        >>> out = io.StringIO()
        >>> DropReportingHandler(out, source).emit(logging.makeLogRecord({"msg": "next"}))
        >>> print(out.getvalue(), end="")
        3 log records dropped: the log output was not read
        next
    """

    def __init__(self, stream: TextIO, source: DroppingQueueHandler) -> None:
        super().__init__(stream)
        self._source = source
        self._reported = 0

    def emit(self, record: logging.LogRecord) -> None:
        dropped = self._source.dropped
        if dropped > self._reported:
            note = logging.LogRecord(
                "optisync.server", logging.WARNING, __file__, 0,
                "%d log records dropped: the log output was not read",
                (dropped - self._reported,), None,
            )  # fmt: skip
            super().emit(self._source.prepare(note))
            self._reported = dropped
        super().emit(record)


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line's options.

    Example:
        >>> from optisync.server.__main__ import parse_arguments
        >>> parse_arguments(["--database", "x.sqlite3"]).host
        '127.0.0.1'
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--database", metavar="PATH", help="SQLite file, created if missing (this or --postgres)"
    )
    where.add_argument(
        "--postgres",
        metavar="DSN",
        help="PostgreSQL connection string, e.g. postgresql://app@db/app (this or --database)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help=f"address to listen on; one that is not loopback needs ${TOKEN_VARIABLE} "
        "or --insecure (default: %(default)s)",
    )
    parser.add_argument(
        "--port", type=int, default=8765, help="TCP port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin allowed to connect, repeatable (default: none)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="DEBUG logs every message, and every frame from websockets (default: %(default)s)",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="permessage-deflate for clients that offer it: fewer bytes for large, "
        "compressible values, more CPU per message (default: off)",
    )
    parser.add_argument(
        "--require-device-secret",
        action="store_true",
        help="refuse devices that send no device secret (older clients, hand-written "
        "ones); without it, such a device may use a device id no secret is bound to yet "
        "(default: off)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics over HTTP at /metrics on this port, 0 for any free "
        "one (logged); needs the metrics extra (default: no metrics)",
    )
    parser.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help=f"listen on a host that is not loopback without ${TOKEN_VARIABLE}: anyone who "
        "reaches the port may read and write every key (default: off)",
    )
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _refuse_an_open_door(host: str, token: str | None, *, insecure: bool) -> None:
    if token or insecure or _is_loopback(host):
        return
    raise _CannotStartError(
        f"refusing to listen on {host} without a token: anyone who can reach it could read "
        f"and write every key. Set ${TOKEN_VARIABLE} (devices then send it), listen on "
        "127.0.0.1, or pass --insecure to accept that"
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _storage(arguments: argparse.Namespace) -> Storage:
    if arguments.postgres:
        try:
            from optisync.server.postgres import PostgresStorage
        except ImportError as error:
            raise _CannotStartError(
                f'--postgres needs the PostgreSQL driver: pip install "optisync[postgres]" '
                f"({error})"
            ) from error
        return PostgresStorage(arguments.postgres)
    return SqliteStorage(arguments.database)


async def _check_postgres(dsn: str) -> None:
    """Connect once, to fail at once with libpq's reason instead of a pool's time-out."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        settings = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise _CannotStartError(
            f"--postgres is not a PostgreSQL connection string ({_one_line(error)}): write "
            "postgresql://user@host:port/dbname or 'host=... dbname=...'"
        ) from error
    if "connect_timeout" not in settings and "PGCONNECT_TIMEOUT" not in os.environ:
        dsn = make_conninfo(dsn, connect_timeout=5)
    try:
        connection = await psycopg.AsyncConnection.connect(dsn)
    except psycopg.OperationalError as error:
        raise _CannotStartError(
            f"PostgreSQL could not be reached: {_one_line(error)} "
            "(check --postgres and that the database server is up)"
        ) from error
    await connection.close()


def _why_sqlite_cannot_open(path: Path, error: sqlite3.Error) -> str | None:
    """What an operator should hear about ``error``; None for a bug."""
    kind = "_".join(error.sqlite_errorname.split("_")[:2])  # SQLITE_CANTOPEN_ISDIR: CANTOPEN
    directory = path.absolute().parent
    if kind == "SQLITE_NOTADB":
        return f"{path} is not a SQLite database: give --database a new or a SQLite file"
    if kind == "SQLITE_CANTOPEN" and path.is_dir():
        return f"{path} is a directory: give --database a file path"
    if kind == "SQLITE_CANTOPEN" and not directory.is_dir():
        return f"cannot create {path}: the directory {directory} does not exist (create it)"
    if kind in {"SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM", "SQLITE_AUTH"}:
        return f"cannot open {path} for writing: no permission for {directory} or {path.name}"
    if kind in {"SQLITE_CORRUPT", "SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL"}:
        return f"cannot open {path}: {_one_line(error)}"
    return None


def _why_it_cannot_listen(host: str, port: int, error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot listen on --host {host}: {error.strerror}"
    if error.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is in use: stop what listens there or pick another --port"
    if error.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {host}: it is not an address of this machine"
    if error.errno == errno.EACCES:
        return f"no permission to listen on port {port} (ports below 1024 need privileges)"
    return f"cannot listen on {host} port {port}: {_one_line(error)}"


def _why_it_cannot_start(arguments: argparse.Namespace, error: Exception) -> str | None:
    """The one line for an error while the server starts; None for a bug (a traceback)."""
    if isinstance(error, StorageUnavailableError):  # a ConnectionError, so before OSError
        return _one_line(error)
    if isinstance(error, sqlite3.Error) and arguments.database:
        return _why_sqlite_cannot_open(Path(arguments.database), error)
    if isinstance(error, OSError):
        return _why_it_cannot_listen(arguments.host, arguments.port, error)
    return None


def _metrics(arguments: argparse.Namespace) -> ServerMetrics | None:
    if arguments.metrics_port is None:
        return None
    try:
        from optisync.server.metrics import ServerMetrics
    except ImportError as error:
        raise _CannotStartError(
            f'--metrics-port needs prometheus-client: pip install "optisync[metrics]" ({error})'
        ) from error
    return ServerMetrics()  # prometheus-client's global registry: its process metrics too


def _serve_metrics(
    metrics: ServerMetrics,
    arguments: argparse.Namespace,
    running: contextlib.AsyncExitStack[bool | None],
) -> str:
    """Serve ``/metrics`` from a thread of its own until ``running`` closes; its URL.

    A scrape takes the GIL for a moment: it never waits for the event loop.
    """
    from prometheus_client import start_http_server

    host, port = arguments.metrics_host, arguments.metrics_port
    try:
        listener, thread = start_http_server(port, host, metrics.registry)
    except OSError as error:
        problem = _why_it_cannot_listen(host, port, error)
        problem = problem.replace("--port", "--metrics-port").replace("--host", "--metrics-host")
        raise _CannotStartError(f"metrics: {problem}") from error
    running.callback(thread.join)
    running.callback(listener.server_close)
    running.callback(listener.shutdown)
    bound = listener.server_address[1]
    return f"http://{host}:{bound}/metrics"


async def _serve(arguments: argparse.Namespace, token: str | None) -> None:
    storage = _storage(arguments)  # first: it says when the PostgreSQL driver is missing
    if arguments.postgres:
        await _check_postgres(arguments.postgres)
    metrics = _metrics(arguments)
    server = SyncServer(
        storage,
        authenticate=require_token(token) if token else allow_anyone,
        allowed_origins=[None, *arguments.allow_origin],
        require_device_secret=arguments.require_device_secret,
        compression=arguments.compression,
        metrics=metrics,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The loop's own handlers (not signal.signal's): they wake the loop through its
    # wakeup fd even when the signal lands on another thread (the log listener's),
    # where a Python-level handler would wait for the next network event.
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows: Ctrl-C still works
            loop.add_signal_handler(signum, stop.set)
    log = logging.getLogger("optisync.server")
    async with contextlib.AsyncExitStack() as running:
        try:
            url = await running.enter_async_context(server.run(arguments.host, arguments.port))
        except Exception as error:
            problem = _why_it_cannot_start(arguments, error)
            if problem is None:
                raise
            raise _CannotStartError(problem) from error
        if metrics is not None:
            log.info("metrics on %s", _serve_metrics(metrics, arguments, running))
        if not token and not _is_loopback(arguments.host):
            log.warning(
                "no $%s (--insecure): anyone who reaches %s may connect", TOKEN_VARIABLE, url
            )
        log.info(
            "listening on %s (allocator: PYTHONMALLOC=%s)",
            url,
            os.environ.get("PYTHONMALLOC", "pymalloc"),
        )
        # The line a supervisor (or a test) waits for; stdout is written once.
        print(url, flush=True)
        await stop.wait()
        log.info("stopping")


def _run(arguments: argparse.Namespace) -> None:
    token = os.environ.get(TOKEN_VARIABLE) or None
    _refuse_an_open_door(arguments.host, token, insecure=arguments.insecure)
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    into_queue = DroppingQueueHandler(records)
    listener = logging.handlers.QueueListener(records, DropReportingHandler(sys.stderr, into_queue))
    logging.basicConfig(level=arguments.log_level, handlers=[into_queue])
    listener.start()
    try:
        asyncio.run(_serve(arguments, token))
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()  # the log lines so far, before any reason for failing


_COMPACT_DESCRIPTION = """\
Drop the tombstones (deletes) at or below a revision, and record it as the
horizon: what keeps deletes from growing the database forever. A device
whose position is at or below the horizon reloads (its replay starts at 0)
the next time it connects. Safe while servers run on the same database."""


def _parse_compact_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"{PROGRAM} compact", description=_COMPACT_DESCRIPTION)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database", metavar="PATH", help="SQLite file (this or --postgres)")
    where.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string")
    through = parser.add_mutually_exclusive_group(required=True)
    through.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="keep the tombstones of the newest N revisions; drop those before",
    )
    through.add_argument(
        "--through", type=int, metavar="REV", help="drop the tombstones at or below revision REV"
    )
    arguments = parser.parse_args(argv)
    if (arguments.keep if arguments.keep is not None else arguments.through) < 0:
        parser.error("--keep and --through take a number of 0 or more")
    if arguments.database and not Path(arguments.database).is_file():
        parser.error(f"--database {arguments.database}: no such file")
    return arguments


async def _compact(arguments: argparse.Namespace) -> tuple[int, int]:
    storage = _storage(arguments)
    if not callable(getattr(storage, "compact", None)):  # pragma: no cover - both ship it
        raise _CannotStartError(f"{type(storage).__name__} cannot compact")
    compacting: CompactingStorage = storage  # type: ignore[assignment]
    async with contextlib.AsyncExitStack() as opened:
        await compacting.open()
        opened.push_async_callback(compacting.close)
        through = arguments.through
        if through is None:
            through = max(await compacting.head() - arguments.keep, 0)
        dropped = await compacting.compact(through)
        return dropped, await compacting.horizon()


def compact_main(argv: Sequence[str]) -> int:
    """``python -m optisync.server compact ...``: drop old tombstones; the exit status.

    Prints one line: how many tombstones were dropped and the horizon now.

    Example:
        >>> import asyncio, contextlib, io, tempfile, pathlib
        >>> from optisync.server import SqliteStorage
        >>> from optisync.server.__main__ import compact_main
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "app.sqlite3"
        >>> async def fill() -> None:
        ...     async with SqliteStorage(path) as storage:
        ...         await storage.commit("a", b"", local_revision=1, device_id=1)
        ...         await storage.commit("b", b"1", local_revision=1, device_id=1)
        >>> asyncio.run(fill())
        >>> compact_main(["--database", str(path), "--keep", "1"])
        dropped 1 tombstones; the horizon is revision 1
        0
    """
    arguments = _parse_compact_arguments(argv)
    try:
        dropped, horizon = asyncio.run(_compact(arguments))
    except (_CannotStartError, StorageUnavailableError, sqlite3.Error) as error:
        print(f"{PROGRAM} compact: error: {_one_line(error)}", file=sys.stderr, flush=True)
        return CANNOT_START
    print(f"dropped {dropped} tombstones; the horizon is revision {horizon}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until interrupted; the exit status (2: it could not start).

    Clients must send the token in ``$OPTISYNC_SERVER_TOKEN`` when it is set;
    without it, the server listens on loopback only unless ``--insecure``.
    A failure to start is one line on stderr, and a bug a traceback.

    Example:
        >>> from optisync.server.__main__ import main
        >>> main(["--port", "8765"])  # doctest: +SKIP
        ws://127.0.0.1:8765
    """
    given = sys.argv[1:] if argv is None else list(argv)
    if given[:1] == ["compact"]:
        return compact_main(given[1:])
    arguments = parse_arguments(argv)
    try:
        _run(arguments)
    except _CannotStartError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr, flush=True)
        return CANNOT_START
    return 0


if __name__ == "__main__":
    # Small objects in glibc's heap, which the server trims after many closes.
    use_system_malloc(sys.orig_argv[1:])
    sys.exit(main())
