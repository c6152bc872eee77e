"""Many random taps from several devices, with and without failures."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from live_support import HANG_GUARD, Device, DeviceFactory, wait_converged

from examples.live.client import ConnectionLostError, NotConnectedError
from examples.live.database import ServerDatabase
from examples.live.protocol import JsonValue, canonical_json
from examples.live.server import LiveServer

ITEMS = ("like", "star", "color", "size")
COLORS = ("red", "green", "blue")


def random_tap(rng: random.Random, device: Device) -> Awaitable[None]:
    item = rng.choice(ITEMS)
    if item in ("like", "star"):
        return device.toggle(item)
    value: JsonValue = rng.choice(COLORS) if item == "color" else rng.randrange(10)
    return device.set_value(item, value)


async def let_the_network_run(rng: random.Random) -> None:
    # Yield a random number of loop turns so that replies land between taps
    # at varied points: interleavings without wall-clock waits.
    for _ in range(rng.randrange(4)):
        await asyncio.sleep(0)


def assert_every_ack_is_in_the_log(devices: list[Device], database: ServerDatabase) -> int:
    log = {change.server_revision: change for change in database.changes_since(0)}
    acks = [ack for device in devices for ack in device.acks]
    for ack in acks:
        change = log[ack.server_revision]
        assert (change.item, change.value) == (ack.item, canonical_json(ack.value))
    return len(acks)


async def test_a_thousand_random_taps_from_three_devices_converge(
    server: LiveServer, make_device: DeviceFactory, record_property: Callable[[str, object], None]
) -> None:
    rng = random.Random(20261126)
    devices = [make_device(server.url) for _ in range(3)]
    for device in devices:
        await device.wait_ready()
    started = time.perf_counter()

    cycles = []
    for _ in range(1000):
        cycles.append(random_tap(rng, rng.choice(devices)))
        await let_the_network_run(rng)
    for cycle in cycles:
        await cycle
    await wait_converged(devices, server.database)

    elapsed = time.perf_counter() - started
    record_property("thousand_taps_seconds", round(elapsed, 3))
    outcomes = Counter(outcome.value for d in devices for _, outcome in d.pushes)
    writes = server.database.change_count()
    print(f"1000 taps, 3 devices: {writes} writes, pushes {dict(outcomes)}, {elapsed:.2f} s")
    assert all(device.errors == [] for device in devices)
    shown = {canonical_json([dict(d.state.values), dict(d.state.revisions)]) for d in devices}
    assert len(shown) == 1
    assert assert_every_ack_is_in_the_log(devices, server.database) > 0


async def test_no_acknowledged_write_is_lost_across_drops_and_server_restarts(
    db_path: Path, make_device: DeviceFactory
) -> None:
    rng = random.Random(7)
    server = LiveServer(db_path)
    await server.start()
    port = server.port
    try:
        devices = [make_device(server.url) for _ in range(3)]
        for device in devices:
            await device.wait_ready()
        cycles = []
        restarts = drops = 0
        for _ in range(400):
            cycles.append(random_tap(rng, rng.choice(devices)))
            await let_the_network_run(rng)
            luck = rng.random()
            if luck < 0.03:
                rng.choice(devices).drop_connection()
                drops += 1
            elif luck < 0.05:
                await server.stop()
                server = LiveServer(db_path)
                await server.start(port=port)
                restarts += 1
            if luck < 0.05 and rng.random() < 0.7:
                # Mostly let the devices come back, so that most taps reach
                # the server and the next failure hits requests in flight.
                async with asyncio.timeout(HANG_GUARD):
                    for device in devices:
                        await device.wait_ready()
        results = await asyncio.gather(*cycles, return_exceptions=True)
        await wait_converged(devices, server.database)

        failures = [result for result in results if isinstance(result, BaseException)]
        assert all(
            isinstance(failure, ConnectionLostError | NotConnectedError) for failure in failures
        ), failures
        acknowledged = assert_every_ack_is_in_the_log(devices, server.database)
        print(
            f"{restarts} restarts, {drops} drops, {len(failures)} failed cycles,"
            f" {acknowledged} acks all in the log"
        )
        assert restarts > 0
        assert drops > 0
        assert acknowledged > 0
    finally:
        await server.stop()
