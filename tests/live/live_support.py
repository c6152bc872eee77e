"""Helpers shared by the live tests (imported as ``live_support``)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs

from examples.live.client import LiveDevice, LiveStore
from examples.live.network import Link
from optisync import PushOutcome
from optisync.client import Traced
from optisync.server import Change, SqliteStorage
from optisync.transport import store_key
from optisync.wire import Committed, Hello, Push, Ready, Value


class Recorder:
    """What one device sent and received, from its client's trace, and its errors."""

    def __init__(self) -> None:
        self.events: list[Traced] = []
        self.errors: list[BaseException] = []
        self.store: LiveStore | None = None  # set once the device is open

    def trace(self, event: Traced) -> None:
        """Record ``event``; a push with what it did (the store tells, the client does not)."""
        if isinstance(event.message, Push) and self.store is not None:
            outcome = self.store.push_outcomes.get(store_key(event.message.key))
            event = attrs.evolve(event, outcome=outcome)
        self.events.append(event)

    @property
    def pushes(self) -> list[tuple[Push, PushOutcome | None]]:
        return [(e.message, e.outcome) for e in self.events if isinstance(e.message, Push)]

    @property
    def acks(self) -> list[Committed]:
        return [event.message for event in self.events if isinstance(event.message, Committed)]

    @property
    def reloads(self) -> list[Value]:
        return [event.message for event in self.events if isinstance(event.message, Value)]

    @property
    def replays(self) -> list[int]:
        """Pushes between each hello and its ready: one count per connection."""
        counts: list[int] = []
        replaying = False
        for event in self.events:
            if isinstance(event.message, Hello):
                counts.append(0)
                replaying = True
            elif isinstance(event.message, Ready):
                replaying = False
            elif isinstance(event.message, Push) and replaying:
                counts[-1] += 1
        return counts


class Device(LiveDevice):
    """A LiveDevice that records its traffic for the assertions, and can be closed."""

    record: Recorder
    closer: contextlib.AsyncExitStack

    async def close(self) -> None:
        """Close the device (what leaving its ``async with`` does)."""
        await self.closer.aclose()


#: ``await make_device(url, name=None)``: an open Device on the storage file
#: ``name.sqlite3`` (a new file when unnamed), closed at teardown.
DeviceFactory = Callable[..., Awaitable[Device]]


async def take_offline(device: LiveDevice, link: Link) -> None:
    """Take ``link`` down and wait until ``device`` knows it is offline."""
    link.down()
    await device.wait_until(lambda: not device.online)


async def read_log(path: Path) -> dict[int, Change]:
    """Every change in the server's file, by revision."""
    async with SqliteStorage(path) as storage:
        return {c.server_revision: c for c in await storage.changes_after(0, 1_000_000)}
