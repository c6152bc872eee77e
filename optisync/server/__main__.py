"""``python -m optisync.server --database app.sqlite3 --port 8765``: run a server.

The log goes through :mod:`logging` to stderr from a thread of its own: a
full pipe that nobody drains drops log lines, it never stops the server.

Example:
    >>> from optisync.server.__main__ import parse_arguments
    >>> parse_arguments(["--database", "app.sqlite3", "--port", "0"]).port
    0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import logging.handlers
import os
import queue
import signal
import sys
from collections.abc import Sequence
from typing import TextIO

from optisync.server.security import allow_anyone, require_token
from optisync.server.server import SyncServer
from optisync.server.storage import SqliteStorage, Storage

__all__ = ["DropReportingHandler", "DroppingQueueHandler", "main", "parse_arguments"]

TOKEN_VARIABLE = "OPTISYNC_SERVER_TOKEN"


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
    parser = argparse.ArgumentParser(prog="python -m optisync.server", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database", help="SQLite file (created if missing)")
    where.add_argument("--postgres", metavar="DSN", help="PostgreSQL connection string")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin allowed to connect (repeatable); none by default",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="INFO",
        help="debug logs every message (and every frame, from websockets)",
    )
    return parser.parse_args(argv)


def _storage(arguments: argparse.Namespace) -> Storage:
    if arguments.postgres:
        from optisync.server.postgres import PostgresStorage

        return PostgresStorage(arguments.postgres)
    return SqliteStorage(arguments.database)


async def _serve(arguments: argparse.Namespace) -> None:
    token = os.environ.get(TOKEN_VARIABLE)
    server = SyncServer(
        _storage(arguments),
        authenticate=require_token(token) if token else allow_anyone,
        allowed_origins=[None, *arguments.allow_origin],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # The loop's own handlers (not signal.signal's): they wake the loop through its
    # wakeup fd even when the signal lands on another thread (the log listener's),
    # where a Python-level handler would wait for the next network event.
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows: Ctrl-C still works
            loop.add_signal_handler(signum, stop.set)
    async with server.run(arguments.host, arguments.port) as url:
        logging.getLogger("optisync.server").info("listening on %s", url)
        # The line a supervisor (or a test) waits for; stdout is written once.
        print(url, flush=True)
        await stop.wait()
        logging.getLogger("optisync.server").info("stopping")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server until interrupted.

    Clients must send the token in ``$OPTISYNC_SERVER_TOKEN`` when it is set;
    without it, anyone who can reach the port may connect.

    Example:
        >>> from optisync.server.__main__ import main
        >>> main(["--port", "8765"])  # doctest: +SKIP
        ws://127.0.0.1:8765
    """
    arguments = parse_arguments(argv)
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    into_queue = DroppingQueueHandler(records)
    listener = logging.handlers.QueueListener(records, DropReportingHandler(sys.stderr, into_queue))
    logging.basicConfig(level=arguments.log_level, handlers=[into_queue])
    listener.start()
    try:
        asyncio.run(_serve(arguments))
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()


if __name__ == "__main__":
    main()
