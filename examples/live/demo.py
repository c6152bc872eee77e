"""The scripted demo: one server, two devices, a timeline, and a final check.

``python -m examples.live`` runs :func:`run_demo`. Everything is real (a
WebSocket server on 127.0.0.1 with a port the OS picks, SQLite files in a
temporary folder); only the moments when the server commits are held by a
:class:`Valve` so that the timeline reads the same on every run.

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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TextIO

import attrs

from examples.live.client import ConnectionLostError, LiveStore, NotConnectedError
from examples.live.database import Change, ServerDatabase
from examples.live.protocol import (
    AckMessage,
    ErrorMessage,
    GetMessage,
    JsonValue,
    PushMessage,
    ReadyMessage,
    SetMessage,
    ValueMessage,
    canonical_json,
)
from examples.live.server import LiveServer
from optisync import PushOutcome

__all__ = ["Timeline", "Valve", "run_demo"]

_COLUMNS = ("server", "device A", "device B")
_WIDTH = 39
_STEP_TIMEOUT = 10.0


class Timeline:
    """Lines of the demo in side-by-side columns, with the time since the start.

    Example:
        >>> import io
        >>> from examples.live.demo import Timeline
        >>> out = io.StringIO()
        >>> timeline = Timeline(out, clock=lambda: 0.0)
        >>> timeline.add(1, "tap like")
        >>> "tap like" in out.getvalue()
        True
    """

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._start = clock()

    def header(self) -> None:
        """Print the column titles."""
        cells = "".join(f"| {title:<{_WIDTH - 2}}" for title in _COLUMNS).rstrip()
        self._out.write(f"{'ms':>6} {cells}\n{'-' * 6} {('+' + '-' * (_WIDTH - 1)) * 3}\n")

    def step(self, title: str) -> None:
        """Print a step of the script across the whole width."""
        self._out.write(f"\n== {title}\n")

    def add(self, column: int, text: str) -> None:
        """Print ``text`` in ``column`` (0: server, 1: device A, 2: device B)."""
        elapsed = round((self._clock() - self._start) * 1000)
        cells = ["" for _ in _COLUMNS]
        cells[column] = text if len(text) <= _WIDTH - 3 else text[: _WIDTH - 4] + "~"
        row = "".join(f"| {cell:<{_WIDTH - 2}}" for cell in cells).rstrip()
        self._out.write(f"{elapsed:>6} {row}\n")


@attrs.define
class _Held:
    message: SetMessage
    release: asyncio.Future[None]


class Valve:
    """A server hook that can hold ``set`` messages until the script lets them through.

    Open, it lets everything pass. Closed, each set waits in line until
    :meth:`release`. Use it as ``before_commit`` or ``after_commit``.

    Example:
        >>> import asyncio
        >>> from examples.live.demo import Valve
        >>> from examples.live.protocol import SetMessage
        >>> async def main() -> None:
        ...     valve = Valve()
        ...     valve.close()
        ...     held = asyncio.ensure_future(valve(SetMessage(1, "x", 1, 1, 7)))
        ...     await valve.wait_held(1)
        ...     valve.release(device_id=7)
        ...     await held
        ...     print("passed")
        >>> asyncio.run(main())
        passed
    """

    def __init__(self) -> None:
        self._open = True
        self._held: deque[_Held] = deque()
        self._changed = asyncio.Event()

    async def __call__(self, message: SetMessage) -> None:
        if self._open:
            return
        held = _Held(message, asyncio.get_running_loop().create_future())
        self._held.append(held)
        self._changed.set()
        try:
            await held.release
        finally:
            with contextlib.suppress(ValueError):
                self._held.remove(held)
            self._changed.set()

    def close(self) -> None:
        """Hold every set from now on."""
        self._open = False

    def open(self) -> None:
        """Let every set through, those held included."""
        self._open = True
        while self._held:
            self._release(self._held.popleft())

    def release(self, *, device_id: int) -> SetMessage:
        """Let the oldest set of ``device_id`` through; return it."""
        for held in self._held:
            if held.message.device_id == device_id:
                self._held.remove(held)
                self._release(held)
                return held.message
        raise LookupError(f"no set of device {device_id} is held")

    def _release(self, held: _Held) -> None:
        if not held.release.done():
            held.release.set_result(None)

    async def wait_held(self, count: int) -> None:
        """Wait until ``count`` sets (or more) are held."""
        while len(self._held) < count:
            self._changed.clear()
            await self._changed.wait()

    async def wait_empty(self) -> None:
        """Wait until no set is held (released, or dropped with its connection)."""
        while self._held:
            self._changed.clear()
            await self._changed.wait()


def _show(value: JsonValue) -> str:
    return "-" if value is None else canonical_json(value)


class DemoDevice(LiveStore):
    """A :class:`LiveStore` that writes what it does into the timeline."""

    def __init__(
        self,
        url: str,
        *,
        column: int,
        timeline: Timeline,
        names: dict[int, str],
        storage_path: Path,
        backoff: Callable[[int], Awaitable[None]],
    ) -> None:
        super().__init__(url, storage_path=storage_path, backoff=backoff, ack_timeout=10)
        self._column = column
        self._timeline = timeline
        self._names = names
        self._was_connected = False

    def say(self, text: str) -> None:
        self._timeline.add(self._column, text)

    def tap(self, item: str, value: JsonValue | None = None) -> Awaitable[None]:
        """Toggle ``item`` (or set it to ``value``) and say so."""
        result = self.toggle(item) if value is None else self.set_value(item, value)
        busy = "coalesced" if _done(result) else "request"
        self.say(f"tap {item}={_show(self.state.value(item))} ({busy})")
        return result

    def on_connected(self, ready: ReadyMessage, replayed: int) -> None:
        self._was_connected = True
        self.say(f"connected, {replayed} replayed, rev {ready.server_revision}")

    def on_disconnected(self, error: BaseException | None) -> None:
        if self._was_connected:
            self._was_connected = False
            self.say("disconnected")

    def on_sent(self, message: SetMessage | GetMessage) -> None:
        if isinstance(message, SetMessage):
            self.say(f"-> set {message.item}={_show(message.value)} lr {message.local_revision}")
        else:
            self.say(f"-> get {message.item} (reload)")

    def on_ack(self, ack: AckMessage) -> None:
        self.say(f"<- ack {ack.item} rev {ack.server_revision}")

    def on_push(self, push: PushMessage, outcome: PushOutcome) -> None:
        name = self._names.get(push.device_id, "?")
        self.say(
            f"<- push {push.item}={_show(push.value)} r{push.server_revision} "
            f"{name}: {outcome.value}"
        )

    def on_reload(self, reply: ValueMessage, applied: bool) -> None:
        verdict = "applied" if applied else "kept newer"
        self.say(f"<- value {reply.item}={_show(reply.value)} r{reply.server_revision}: {verdict}")

    def on_server_error(self, error: ErrorMessage) -> None:
        self.say(f"<- error {error.code}")

    def on_error(self, error: BaseException) -> None:
        if isinstance(error, ConnectionLostError):
            self.say("request failed: connection lost")
        elif isinstance(error, NotConnectedError):
            self.say("request failed: offline")
        else:
            self.say(f"error: {error!r}")


def _done(awaitable: Awaitable[None]) -> bool:
    done = getattr(awaitable, "done", None)
    return done is None or bool(done())


class _Gate:
    """The devices' backoff: reconnect promptly, but only while the gate is open."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()

    async def __call__(self, attempt: int) -> None:
        await self.open.wait()
        await asyncio.sleep(min(0.2, 0.01 * attempt))


def _equal(device: LiveStore, change: Change | None, item: str) -> bool:
    value = device.state.values.get(item)
    revision = device.state.revisions.get(item, -1)
    if change is None:
        return item not in device.state.values
    return canonical_json(value) == change.value and revision == change.server_revision


def _settled(device: LiveStore, database: ServerDatabase) -> bool:
    snapshot = database.snapshot()
    items = set(snapshot).union(device.state.values)
    return (
        device.is_connected
        and not device.unconfirmed_items
        and all(_equal(device, snapshot.get(item), item) for item in items)
    )


async def _converge(devices: list[DemoDevice], server: LiveServer) -> None:
    """Wait until every device equals the database (each wakes on its own activity)."""
    async with asyncio.timeout(_STEP_TIMEOUT):
        while not all(_settled(device, server.database) for device in devices):
            for device in devices:
                await device.wait_until(functools.partial(_settled, device, server.database))


def _table(out: TextIO, devices: list[DemoDevice], database: ServerDatabase) -> bool:
    snapshot = database.snapshot()
    items = sorted(set(snapshot).union(*(device.state.values for device in devices)))
    out.write("\nFinal state (value @ server revision)\n")
    out.write(f"{'item':<8}| {'database':<18}| {'device A':<18}| {'device B':<18}| check\n")
    all_equal = True
    for item in items:
        change = snapshot.get(item)
        db_cell = "-" if change is None else f"{change.value} @ {change.server_revision}"
        cells = []
        equal = True
        for device in devices:
            value = device.state.values.get(item)
            revision = device.state.revisions.get(item, -1)
            cells.append(f"{_show(value)} @ {revision}")
            equal = equal and _equal(device, change, item)
        all_equal = all_equal and equal
        row = "".join(f"| {cell:<18}" for cell in [db_cell, *cells])
        out.write(f"{item:<8}{row}| {'equal' if equal else 'DIFFERENT'}\n")
    for device in devices:
        if device.unconfirmed_items:
            all_equal = False
            out.write(f"unconfirmed on {device.url}: {sorted(device.unconfirmed_items)}\n")
    return all_equal


@contextlib.contextmanager
def _folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="optisync-live-") as name:
        yield Path(name)


async def run_demo(out: TextIO) -> bool:
    """Play the script; print the timeline and the final table; return whether all converged.

    Example:
        >>> import asyncio, io
        >>> from examples.live.demo import run_demo
        >>> asyncio.run(run_demo(io.StringIO()))
        True
    """
    with _folder() as folder:
        return await _script(out, folder)


async def _script(out: TextIO, folder: Path) -> bool:
    timeline = Timeline(out)
    before, after = Valve(), Valve()
    gate = _Gate()

    def server_say(text: str) -> None:
        timeline.add(0, text)

    def new_server() -> LiveServer:
        return LiveServer(
            folder / "server.sqlite3", before_commit=before, after_commit=after, trace=server_say
        )

    server = new_server()
    await server.start()
    port = server.port
    names: dict[int, str] = {}
    out.write(f"Server on {server.url}; SQLite files in {folder} (removed at the end)\n\n")
    timeline.header()

    def device(column: int, name: str) -> DemoDevice:
        made = DemoDevice(
            server.url,
            column=column,
            timeline=timeline,
            names=names,
            storage_path=folder / f"device-{name}.sqlite3",
            backoff=gate,
        )
        names[made.device_id] = name
        return made

    a, b = device(1, "A"), device(2, "B")
    devices = [a, b]
    try:
        timeline.step("Both devices connect")
        a.start()
        b.start()
        await a.wait_ready()
        await b.wait_ready()

        timeline.step("1. A taps like, unlike, like while request 1 is in flight")
        before.close()
        first = a.tap("like")
        await before.wait_held(1)
        a.tap("like")
        a.tap("like")
        server_say("(request 1 was held until now)")
        before.open()
        await first
        await _converge(devices, server)

        timeline.step("2. A and B set color at once: the later commit wins")
        before.close()
        red = a.tap("color", "red")
        blue = b.tap("color", "blue")
        await before.wait_held(2)
        before.release(device_id=a.device_id)
        await red
        before.open()
        await blue
        await _converge(devices, server)

        timeline.step("3. A's network drops while its request is in flight; B taps")
        before.close()
        gate.open.clear()
        lost = a.tap("like")
        await before.wait_held(1)
        a.drop_connection()
        with contextlib.suppress(ConnectionLostError):
            await lost
        a.say("request failed: connection lost")
        await before.wait_empty()  # the server saw the drop: the held set is abandoned
        server_say("(A's set dropped uncommitted)")
        before.open()
        await b.tap("like")
        gate.open.set()
        await _converge(devices, server)

        timeline.step("4. The server restarts after committing B's set, before its ack")
        after.close()
        green = b.tap("color", "green")
        await after.wait_held(1)
        gate.open.clear()
        server_say("stopping")
        await server.stop()
        after.open()
        with contextlib.suppress(ConnectionLostError):
            await green  # failed already: on_error said so
        server = new_server()
        await server.start(port=port)
        server_say(f"restarted on port {port}")
        gate.open.set()
        await _converge(devices, server)

        timeline.step("5. B restarts from its file while A sets color")
        await b.close()
        b.say(f"closed (saved cursor {b.cursor})")
        await a.tap("color", "yellow")
        b = device(2, "B")
        devices = [a, b]
        b.say(f"restored color={_show(b.state.value('color'))} cursor {b.cursor}")
        b.start()
        await _converge(devices, server)

    except TimeoutError:
        out.write(f"\nA step did not converge within {_STEP_TIMEOUT} s.\n")
        with ServerDatabase(folder / "server.sqlite3") as database:
            _table(out, devices, database)
        return False
    else:
        with ServerDatabase(folder / "server.sqlite3") as database:
            return _table(out, devices, database)
    finally:
        for each in devices:
            await each.close()
        await server.stop()


def main() -> int:
    """Run the demo; the exit status is 0 when the devices equal the database."""
    converged = asyncio.run(run_demo(sys.stdout))
    print("\nAll devices equal the database." if converged else "\nDEVICES DIFFER.")
    return 0 if converged else 1
