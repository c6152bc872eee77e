"""Helpers shared by the live tests (imported as ``live_support``)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable
from typing import Any

from examples.live.client import LiveStore
from examples.live.database import ServerDatabase
from examples.live.protocol import (
    AckMessage,
    ErrorMessage,
    JsonValue,
    PushMessage,
    ReadyMessage,
    canonical_json,
)
from optisync import PushOutcome

# A safety net so that a broken test fails instead of hanging; never an assertion.
HANG_GUARD = 20.0


async def tiny_backoff(attempt: int) -> None:
    """Reconnect almost at once: the tests never wait on wall-clock time."""
    await asyncio.sleep(0.001 * min(attempt, 10))


class Gate:
    """A backoff that reconnects only while open; ``attempts`` counts the waits."""

    def __init__(self) -> None:
        self.is_open = asyncio.Event()
        self.is_open.set()
        self.waiting = asyncio.Event()

    def close(self) -> None:
        self.is_open.clear()

    def open(self) -> None:
        self.is_open.set()

    async def __call__(self, attempt: int) -> None:
        self.waiting.set()
        await self.is_open.wait()
        await tiny_backoff(attempt)


class Device(LiveStore):
    """A LiveStore that records what it receives, for the assertions."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.acks: list[AckMessage] = []
        self.pushes: list[tuple[PushMessage, PushOutcome]] = []
        self.replays: list[int] = []
        self.server_errors: list[ErrorMessage] = []
        self.errors: list[BaseException] = []
        self.connected_count = 0
        self.connections = asyncio.Event()

    def on_connected(self, ready: ReadyMessage, replayed: int) -> None:
        self.replays.append(replayed)
        self.connected_count += 1

    def on_ack(self, ack: AckMessage) -> None:
        self.acks.append(ack)

    def on_push(self, push: PushMessage, outcome: PushOutcome) -> None:
        self.pushes.append((push, outcome))

    def on_server_error(self, error: ErrorMessage) -> None:
        self.server_errors.append(error)

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)


def matches(device: LiveStore, database: ServerDatabase) -> bool:
    """Whether the device shows exactly the database's values and revisions."""
    snapshot = database.snapshot()
    state = device.state
    if set(state.values) != set(snapshot):
        return False
    return all(
        canonical_json(state.values[item]) == change.value
        and state.revisions.get(item) == change.server_revision
        for item, change in snapshot.items()
    )


async def wait_converged(devices: Iterable[LiveStore], database: ServerDatabase) -> None:
    """Wait (woken by each device's activity) until all equal the database, all confirmed."""
    every = list(devices)
    async with asyncio.timeout(HANG_GUARD):
        while not all(settled(device, database) for device in every):
            for device in every:
                await device.wait_until(functools.partial(settled, device, database))


def settled(device: LiveStore, database: ServerDatabase) -> bool:
    """Connected, nothing unconfirmed, and equal to the database."""
    return device.is_connected and not device.unconfirmed_items and matches(device, database)


#: ``make_device(url, **options)``, the fixture: a started Device, closed at teardown.
DeviceFactory = Callable[..., Device]


def nested_lists(depth: int) -> JsonValue:
    """The number 0 inside ``depth`` lists, each inside the next."""
    value: JsonValue = 0
    for _ in range(depth):
        value = [value]
    return value
