"""The scripted demo: the library's server and two devices, a timeline, and a final check.

``python -m examples.live`` runs :func:`run_demo`. Everything is real: an
:class:`optisync.server.SyncServer` on :class:`~optisync.server.SqliteStorage`
(127.0.0.1, a port the OS picks), two :class:`~examples.live.client.LiveDevice`
opened with :func:`optisync.device.open_device`, SQLite files in a temporary folder.
Only two things are staged: a :class:`Valve` in the server's storage holds
commits so that the timeline reads the same on every run, and each device
reaches the server through a :class:`~examples.live.network.Link` the script
can cut.

Example:
    >>> import asyncio, io
    >>> from examples.live.demo import run_demo
    >>> out = io.StringIO()
    >>> asyncio.run(run_demo(out))
    True
    >>> "equal" in out.getvalue()
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TextIO

from websockets.asyncio.server import ServerConnection

from examples.live import two_servers
from examples.live.client import LiveDevice, item_of, wire_of
from examples.live.network import Link
from examples.live.timeline import Narrator, Timeline, matches, print_table, show, tap
from optisync.server import Change, SqliteStorage, SyncServer

__all__ = ["DemoServer", "DemoStorage", "Stage", "Valve", "converged", "run_demo", "wait_converged"]

STEP_TIMEOUT = 10.0
"""Seconds a step may take to converge: a safety net, so that a broken run ends."""


class Valve:
    """Holds the commits of the server until the script lets them through.

    Open, it lets everything pass. Closed, each commit waits until
    :meth:`release` (of its device) or :meth:`open`.

    Example:
        >>> import asyncio
        >>> from examples.live.demo import Valve
        >>> async def main() -> None:
        ...     valve = Valve()
        ...     valve.close()
        ...     held = asyncio.ensure_future(valve(7))
        ...     await valve.wait_held(1)
        ...     valve.release(device_id=7)
        ...     await held
        ...     print("passed")
        >>> asyncio.run(main())
        passed
    """

    def __init__(self) -> None:
        self._open = True
        self._held: list[tuple[int, asyncio.Future[None]]] = []
        self._changed = asyncio.Condition()

    async def __call__(self, device_id: int) -> None:
        if self._open:
            return
        passage = asyncio.get_running_loop().create_future()
        self._held.append((device_id, passage))
        async with self._changed:
            self._changed.notify_all()
        await passage

    def close(self) -> None:
        """Hold every commit from now on."""
        self._open = False

    def open(self) -> None:
        """Let every commit through, those held included."""
        self._open = True
        while self._held:
            self._let_through(0)

    def release(self, *, device_id: int) -> None:
        """Let the oldest held commit of ``device_id`` through."""
        index = next(i for i, (held, _) in enumerate(self._held) if held == device_id)
        self._let_through(index)

    def _let_through(self, index: int) -> None:
        _, passage = self._held.pop(index)
        if not passage.done():
            passage.set_result(None)

    async def wait_held(self, count: int) -> None:
        """Wait until ``count`` commits (or more) are held."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self._held) >= count)


class DemoStorage(SqliteStorage):
    """The server's SQLite storage, with the demo's valves and a line per commit.

    Args:
        path: the database file.
        before: holds a commit before it happens.
        after: holds it after the commit and its pushes, before the ack.
        say: prints a line in the server's column.
        database: a mirror of the newest change of each key, for the script's checks.
    """

    def __init__(
        self,
        path: Path,
        *,
        before: Valve,
        after: Valve,
        say: Callable[[str], None],
        database: dict[str, Change],
    ) -> None:
        super().__init__(path)
        self._before, self._after, self._say = before, after, say
        self.database = database

    async def commit(
        self,
        key: str,
        value: bytes,
        *,
        local_revision: int,
        device_id: int,
        deduplicate: bool = False,
    ) -> Change:
        """Commit as :class:`~optisync.server.SqliteStorage` does, between the two valves."""
        await self._before(device_id)
        change = await super().commit(
            key, value, local_revision=local_revision, device_id=device_id, deduplicate=deduplicate
        )
        self.database[key] = change
        self._say(f"commit {key}={value.decode()} rev {change.server_revision}")
        await self._after(device_id)
        return change


class DemoServer(SyncServer):
    """A :class:`~optisync.server.SyncServer` the script can ask how many devices it serves."""

    def __init__(self, storage: DemoStorage) -> None:
        super().__init__(storage)
        self._disconnects = asyncio.Condition()

    async def handler(self, connection: ServerConnection) -> None:
        """Serve as the library does; then wake :meth:`wait_connections`."""
        try:
            await super().handler(connection)
        finally:
            async with self._disconnects:
                self._disconnects.notify_all()

    async def wait_connections(self, count: int) -> None:
        """Wait until at most ``count`` devices are connected (a device id is free again)."""
        async with self._disconnects:
            await self._disconnects.wait_for(lambda: self.connection_count <= count)


class Stage:
    """The server side of the demo: its valves, a mirror of its database, a server to restart.

    Args:
        path: the server's SQLite file; it outlives restarts.
        say: prints a line in the server's column.

    Example:
        >>> import asyncio, os, tempfile
        >>> from pathlib import Path
        >>> from examples.live.demo import Stage
        >>> async def main() -> None:
        ...     stage = Stage(Path(tempfile.mkdtemp()) / "server.sqlite3")
        ...     await stage.start()
        ...     print(stage.port > 0, stage.server.connection_count)
        ...     await stage.stop()
        >>> asyncio.run(main())
        True 0
    """

    def __init__(self, path: Path, say: Callable[[str], None] = lambda text: None) -> None:
        self.path = path
        self.before, self.after = Valve(), Valve()
        self.database: dict[str, Change] = {}
        self.port = 0
        self._say = say
        self._server: DemoServer | None = None
        self._running = contextlib.AsyncExitStack()

    @property
    def server(self) -> DemoServer:
        """The server running now."""
        if self._server is None:
            raise RuntimeError("the server is not running")
        return self._server

    @property
    def url(self) -> str:
        """The URL of the server running now (a device connected to it directly)."""
        return f"ws://127.0.0.1:{self.port}"

    async def start(self) -> DemoServer:
        """Start a server on the file, on a new port the OS picks."""
        storage = DemoStorage(
            self.path, before=self.before, after=self.after, say=self._say, database=self.database
        )
        self._server = DemoServer(storage)
        url = await self._running.enter_async_context(self._server.run(port=0))
        self.port = int(url.rsplit(":", 1)[1])
        return self._server

    async def stop(self) -> None:
        """Stop the server (its devices see their connections close)."""
        await self._running.aclose()
        self._server = None

    def link(self) -> Link:
        """A link to whichever server runs now (use it with ``async with``)."""
        return Link(lambda: self.port)


def converged(device: LiveDevice, database: Mapping[str, Change]) -> bool:
    """Online, nothing unconfirmed, and every item as the database holds it.

    Example:
        >>> from examples.live.demo import converged
        >>> callable(converged)
        True
    """
    items = {item for key in database if (item := item_of(key)) is not None}
    items.update(device.values)
    return (
        device.online
        and not device.unconfirmed_items
        and all(matches(device, database, item) for item in items)
    )


async def wait_converged(devices: Sequence[LiveDevice], database: Mapping[str, Change]) -> None:
    """Wait, woken by each device's activity, until every device has converged."""
    async with asyncio.timeout(STEP_TIMEOUT):
        while not all(converged(device, database) for device in devices):
            for device in devices:
                await device.wait_until(functools.partial(converged, device, database))


async def read_database(path: Path) -> dict[str, Change]:
    """The newest change of every key in the server's SQLite file."""
    newest: dict[str, Change] = {}
    async with SqliteStorage(path) as storage:
        for change in await storage.changes_after(0, 1_000_000):
            newest[change.key] = change
    return newest


class _Script:
    """The five scenes, with the server, the links and the devices they act on."""

    def __init__(self, out: TextIO, folder: Path) -> None:
        self.out = out
        self.folder = folder
        self.timeline = Timeline(out)
        self.stage = Stage(folder / "server.sqlite3", say=self.server_says)
        self.open_devices: dict[str, contextlib.AsyncExitStack] = {}

    def server_says(self, text: str) -> None:
        self.timeline.add(0, text)

    async def device(self, name: str, narrator: Narrator, link: Link) -> LiveDevice:
        """Open device ``name`` from its file; it starts connecting at once."""
        running = self.open_devices[name] = contextlib.AsyncExitStack()
        device = await running.enter_async_context(
            LiveDevice.open(
                link.url,
                self.folder / f"device-{name}.sqlite3",
                trace=narrator.trace,
                on_error=narrator.error,
            )
        )
        narrator.watch(device)
        return device

    async def close(self, name: str) -> None:
        await self.open_devices.pop(name).aclose()

    async def play(self) -> bool:
        server = await self.stage.start()
        self.out.write(f"Server on 127.0.0.1:{self.stage.port}; SQLite files in {self.folder}\n")
        self.out.write("Devices name items (like); the server keeps item X as values/X.\n\n")
        self.timeline.header(["server", "device A", "device B"])
        say_a, say_b = Narrator(self.timeline, 1), Narrator(self.timeline, 2)
        async with self.stage.link() as link_a, self.stage.link() as link_b:
            devices: list[LiveDevice] = []
            finished = False
            try:
                self.timeline.step("Both devices connect")
                devices += [await self.device("A", say_a, link_a)]
                devices += [await self.device("B", say_b, link_b)]
                a, b = devices
                await a.client.wait_online()
                await b.client.wait_online()
                await self.coalesced_taps(a, say_a, b)
                await self.conflicting_writes(a, say_a, b, say_b)
                await self.dropped_connection(server, a, say_a, b, say_b, link_a)
                await self.server_restart(a, b, say_b, link_a, link_b)
                devices[1] = await self.device_restart(a, say_a, b, say_b, link_b)
                finished = True
            except TimeoutError:
                self.out.write(f"\nA step did not converge within {STEP_TIMEOUT:g} s.\n")
            finally:
                self.timeline.step("Both devices close")
                for name in list(self.open_devices):
                    await self.close(name)
                await self.stage.stop()
        database = await read_database(self.stage.path)
        return print_table(self.out, ["device A", "device B"], devices, database) and finished

    async def coalesced_taps(self, a: LiveDevice, say_a: Narrator, b: LiveDevice) -> None:
        self.timeline.step("1. A taps like, unlike, like while request 1 is in flight")
        self.stage.before.close()
        first = tap(a, say_a, "like")
        await self.stage.before.wait_held(1)
        tap(a, say_a, "like")
        tap(a, say_a, "like")
        self.server_says("(request 1 was held until now)")
        self.stage.before.open()
        await first
        await wait_converged([a, b], self.stage.database)

    async def conflicting_writes(
        self, a: LiveDevice, say_a: Narrator, b: LiveDevice, say_b: Narrator
    ) -> None:
        self.timeline.step("2. A and B set color at once: the later commit wins")
        self.stage.before.close()
        red = tap(a, say_a, "color", "red")
        blue = tap(b, say_b, "color", "blue")
        await self.stage.before.wait_held(2)
        self.stage.before.release(device_id=a.device_id)
        await red
        self.stage.before.open()
        await blue
        await wait_converged([a, b], self.stage.database)

    async def dropped_connection(
        self,
        server: DemoServer,
        a: LiveDevice,
        say_a: Narrator,
        b: LiveDevice,
        say_b: Narrator,
        link_a: Link,
    ) -> None:
        self.timeline.step("3. A's network drops while its request is in flight; B taps")
        self.stage.before.close()
        lost = tap(a, say_a, "like")
        await self.stage.before.wait_held(1)
        link_a.down()
        await a.wait_until(lambda: not a.online)
        say_a.say("request lost: like stays in the outbox")
        self.server_says("(A's set commits after A left)")
        self.stage.before.open()
        await tap(b, say_b, "like")
        await server.wait_connections(1)  # the server has let A's old connection go
        link_a.up()
        await lost  # the replay told A its write was committed: nothing to resend
        say_a.say("replay has it: like not resent")
        await wait_converged([a, b], self.stage.database)

    async def server_restart(
        self, a: LiveDevice, b: LiveDevice, say_b: Narrator, link_a: Link, link_b: Link
    ) -> None:
        self.timeline.step("4. The server restarts after committing B's set, before its ack")
        self.stage.after.close()
        green = tap(b, say_b, "color", "green")
        await self.stage.after.wait_held(1)
        revision = self.stage.database[wire_of("color")].server_revision
        # Both devices have the push; only B's ack is held.
        await a.wait_until(lambda: a.client.cursor >= revision)
        await b.wait_until(lambda: b.client.cursor >= revision)
        self.server_says("stops before the ack")
        link_a.down()
        link_b.down()
        await b.wait_until(lambda: not b.online)
        say_b.say("request lost: color stays in the outbox")
        self.stage.after.open()
        await self.stage.stop()
        await self.stage.start()
        self.server_says(f"restarted on port {self.stage.port}")
        link_a.up()
        link_b.up()
        await green  # B's own push had told it the write was committed
        say_b.say("color already pushed: not resent")
        await wait_converged([a, b], self.stage.database)

    async def device_restart(
        self, a: LiveDevice, say_a: Narrator, b: LiveDevice, say_b: Narrator, link_b: Link
    ) -> LiveDevice:
        self.timeline.step("5. B restarts from its file while A sets color")
        cursor = b.client.cursor
        await self.close("B")
        say_b.say(f"closed (saved cursor {cursor})")
        await tap(a, say_a, "color", "yellow")
        await self.stage.server.wait_connections(1)  # B's old connection is gone: its id is free
        restarted = await self.device("B", say_b, link_b)
        say_b.say(
            f"restored color={show(restarted.value('color'))} cursor {restarted.client.cursor}"
        )
        await wait_converged([a, restarted], self.stage.database)
        return restarted


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="optisync-live-") as name:
        yield Path(name)


async def run_demo(out: TextIO, postgres: str | None = None) -> bool:
    """Play the scenes; print the timeline and the final tables; return whether all converged.

    ``postgres``: a PostgreSQL DSN for the sixth scene (two server
    processes on one database); without one it is skipped, and says so.

    Example:
        >>> import asyncio, io
        >>> from examples.live.demo import run_demo
        >>> asyncio.run(run_demo(io.StringIO()))
        True
    """
    with _folder() as folder:
        converged_all = await _Script(out, folder).play()
        converged_all = await two_servers.play(out, postgres, folder) and converged_all
    return converged_all


def main(postgres: str | None = None) -> int:
    """Run the demo; the exit status is 0 when every device equals the database."""
    converged_all = asyncio.run(run_demo(sys.stdout, postgres))
    print("\nAll devices equal the database." if converged_all else "\nDEVICES DIFFER.")
    return 0 if converged_all else 1
