"""Scene 6: two server processes on one PostgreSQL database, a device on each.

Each server is ``python -m optisync.server --postgres DSN --port 0`` in a
process of its own. A write through one is committed with a ``pg_notify`` in
the same transaction; the other process LISTENs and pushes it to its device.

The database may hold changes from earlier runs: each device's file is
made with the database's head as its replay position, so the replay is
empty and the table shows the items this scene writes.

Example:
    >>> import asyncio, io
    >>> from examples.live import two_servers
    >>> out = io.StringIO()
    >>> asyncio.run(two_servers.play(out, None, None))
    True
    >>> "skipped" in out.getvalue()
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TextIO

from examples.live.client import LiveDevice, LiveState, wire_of
from examples.live.timeline import Narrator, Timeline, print_table, tap
from optisync.persistence import AttrsCodec, Snapshot, SqliteSnapshotStorage
from optisync.revisions import random_device_id
from optisync.server import Change

__all__ = ["DSN_VARIABLE", "play", "skip_reason"]

DSN_VARIABLE = "OPTISYNC_TEST_POSTGRES_DSN"
TITLE = "6. Two server processes on one PostgreSQL database, a device on each"
_TIMEOUT = 20.0  # a safety net: starting two processes and converging takes about a second
ITEMS = ("color", "like")


def skip_reason(dsn: str | None) -> str | None:
    """Why the scene cannot run (None: it can).

    Example:
        >>> from examples.live.two_servers import skip_reason
        >>> skip_reason(None).startswith("no PostgreSQL")
        True
    """
    if not dsn:
        return f"no PostgreSQL: pass --postgres DSN or set ${DSN_VARIABLE}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return 'psycopg is not installed: pip install -e ".[postgres]"'
    return None


@contextlib.asynccontextmanager
async def _server_process(dsn: str) -> AsyncIterator[str]:
    """``python -m optisync.server --postgres DSN --port 0``; yields its URL."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "optisync.server", "--postgres", dsn, "--port", "0"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        # Without a token: these devices send none.
        env={name: value for name, value in os.environ.items() if name != "OPTISYNC_SERVER_TOKEN"},
    )
    try:
        assert process.stdout is not None
        line = (await process.stdout.readline()).decode().strip()
        if not line.startswith("ws://"):
            raise RuntimeError(f"the server process did not start: {line!r}")
        yield line
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await process.wait()


async def play(out: TextIO, dsn: str | None, folder: Path | None) -> bool:
    """Play the scene (or print why it is skipped); return whether it converged.

    ``folder`` holds the devices' files (None: a temporary folder).
    """
    reason = skip_reason(dsn)
    if reason is not None:
        out.write(f"\n== {TITLE}: skipped ({reason})\n")
        return True
    assert dsn is not None
    from optisync.server.postgres import PostgresStorage

    out.write(f"\n== {TITLE}\n")
    async with PostgresStorage(dsn) as database:
        head = await database.head()
        try:
            with tempfile.TemporaryDirectory(prefix="optisync-scene6-") as temporary:
                async with asyncio.timeout(_TIMEOUT):
                    devices = await _scene(out, dsn, folder or Path(temporary), head)
        except TimeoutError:
            out.write(f"\nThe scene did not converge within {_TIMEOUT:g} s.\n")
            return False
        newest = {wire_of(item): await database.read(wire_of(item)) for item in ITEMS}
    found = {key: change for key, change in newest.items() if isinstance(change, Change)}
    return print_table(out, ["device C", "device D"], devices, found, ITEMS)


async def _scene(out: TextIO, dsn: str, folder: Path, head: int) -> list[LiveDevice]:
    timeline = Timeline(out)
    timeline.header(["servers", "device C, on server 1", "device D, on server 2"])
    async with _server_process(dsn) as one, _server_process(dsn) as two:
        timeline.add(0, f"1: {one}")
        timeline.add(0, f"2: {two}")
        say_c, say_d = Narrator(timeline, 1), Narrator(timeline, 2)
        c_file, d_file = folder / "device-C.sqlite3", folder / "device-D.sqlite3"
        await _start_at(c_file, head)
        await _start_at(d_file, head)
        async with (
            LiveDevice.open(one, c_file, trace=say_c.trace, on_error=say_c.error) as c,
            LiveDevice.open(two, d_file, trace=say_d.trace, on_error=say_d.error) as d,
        ):
            say_c.watch(c)
            say_d.watch(d)
            await c.client.wait_online()
            await d.client.wait_online()
            await tap(c, say_c, "color", "purple")
            await _caught_up(d, c, "color")
            await tap(d, say_d, "like", True)
            await _caught_up(c, d, "like")
        return [c, d]


async def _start_at(path: Path, head: int) -> None:
    """Make a new device file whose replay position is ``head``: no replay of older runs."""
    storage = SqliteSnapshotStorage(path)
    try:
        if await storage.load() is None:
            state = AttrsCodec(LiveState).encode(LiveState())
            await storage.save(Snapshot(random_device_id(), state, {}, frozenset(), cursor=head))
    finally:
        await storage.close()


async def _caught_up(reader: LiveDevice, writer: LiveDevice, item: str) -> None:
    """Wait until ``reader`` shows ``item`` at the revision ``writer`` got in its ack."""
    revision = writer.revision(item)
    await reader.wait_until(lambda: reader.revision(item) == revision)
