"""Many random taps from several devices, with and without failures."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from live_support import Device, DeviceFactory, read_log

from examples.live.demo import Stage, wait_converged
from optisync.server.protocol import canonical_json

ITEMS = ("like", "star", "color", "size")
COLORS = ("red", "green", "blue")


def random_tap(rng: random.Random, device: Device) -> Awaitable[None]:
    item = rng.choice(ITEMS)
    if item in ("like", "star"):
        return device.toggle(item)
    value: Any = rng.choice(COLORS) if item == "color" else rng.randrange(10)
    return device.set_value(item, value)


async def let_the_network_run(rng: random.Random) -> None:
    # Yield a random number of loop turns so that replies land between taps
    # at varied points: interleavings without wall-clock waits.
    for _ in range(rng.randrange(4)):
        await asyncio.sleep(0)


async def assert_every_ack_is_in_the_log(devices: list[Device], stage: Stage) -> int:
    log = await read_log(stage.path)
    acks = [ack for device in devices for ack in device.record.acks]
    for ack in acks:
        change = log[ack.server_revision]
        assert (change.key, change.value) == (ack.key, canonical_json(ack.value))
    return len(acks)


async def test_a_thousand_random_taps_from_three_devices_converge(
    stage: Stage, make_device: DeviceFactory, record_property: Callable[[str, object], None]
) -> None:
    rng = random.Random(20261126)
    devices = [await make_device(stage.url) for _ in range(3)]
    for device in devices:
        await device.client.wait_online()
    started = time.perf_counter()

    cycles = []
    for _ in range(1000):
        cycles.append(random_tap(rng, rng.choice(devices)))
        await let_the_network_run(rng)
    for cycle in cycles:
        await cycle
    await wait_converged(devices, stage.database)

    elapsed = time.perf_counter() - started
    record_property("thousand_taps_seconds", round(elapsed, 3))
    outcomes = Counter(str(outcome) for d in devices for _, outcome in d.record.pushes)
    print(f"1000 taps, 3 devices: pushes {dict(outcomes)}, {elapsed:.2f} s")
    assert all(device.record.errors == [] for device in devices)
    shown = {
        canonical_json([{i: (v, d.revision(i)) for i, v in d.values.items()}]) for d in devices
    }
    assert len(shown) == 1
    assert await assert_every_ack_is_in_the_log(devices, stage) > 0


async def test_no_acknowledged_write_is_lost_across_drops_and_server_restarts(
    stage: Stage, make_device: DeviceFactory
) -> None:
    rng = random.Random(7)
    async with stage.link() as one, stage.link() as two, stage.link() as three:
        links = [one, two, three]
        devices = [await make_device(link.url) for link in links]
        for device in devices:
            await device.client.wait_online()
        cycles = []
        restarts = drops = 0
        for _ in range(400):
            cycles.append(random_tap(rng, rng.choice(devices)))
            await let_the_network_run(rng)
            luck = rng.random()
            if luck < 0.05:
                # Cut only between handshakes: a handshake cut halfway makes the
                # client back off for up to 5 s (websockets' random delay).
                for device in devices:
                    await device.client.wait_online()
            if luck < 0.03:
                dropped = rng.randrange(3)
                links[dropped].down()
                await stage.server.wait_connections(2)  # the server let it go
                links[dropped].up()
                drops += 1
            elif luck < 0.05:
                for link in links:
                    link.down()
                await stage.stop()
                await stage.start()
                for link in links:
                    link.up()
                restarts += 1
        results = await asyncio.gather(*cycles, return_exceptions=True)
        await wait_converged(devices, stage.database)

    # A cycle cut by a drop or a restart is not a failure: the outbox sends it again.
    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures == []
    assert all(device.record.errors == [] for device in devices)
    acknowledged = await assert_every_ack_is_in_the_log(devices, stage)
    print(
        f"{restarts} restarts, {drops} drops, no failed cycle, {acknowledged} acks all in the log"
    )
    assert restarts > 0
    assert drops > 0
    assert acknowledged > 0
