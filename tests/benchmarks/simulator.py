"""Row 6: randomized simulator scenarios per second of CPU time, under virtual time.

One scenario, driven by its seed: three devices (each a ``Store`` wired to
``optisync.testing`` through a ``DeviceLink``) tap two keys eight times at
random moments, over a network with latency, reordered, duplicated and
dropped pushes, and requests that fail before or after the commit (each
failure reloads the key in ``on_finish``). Once the network settles, every
device must show the server's value and revision for every key. Each
scenario runs in a fresh virtual-time loop (``testing.run``), as a test
replaying one seed would. The rate is per second of this process's CPU time
(``time.process_time``), not of wall time: on a shared machine the wall clock
also counts the time other work held the core. Needs :mod:`optisync.testing`;
without it the row says it is not available.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import statistics
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING

from optisync import Store

from ._common import Row

if TYPE_CHECKING:
    from optisync.testing import Commit, DeviceLink

__all__ = ["SCENARIOS", "available", "measure", "run_scenarios"]

SCENARIOS = 500
REPEATS = 3
TARGET = 1_000
DEVICES = 3
KEYS = ("a", "b")
TAPS = 8

#: What a device shows: per key, (value, server revision).
Shown = dict[Hashable, tuple[object, int]]


def available() -> bool:
    """Whether :mod:`optisync.testing` can be imported."""
    return importlib.util.find_spec("optisync.testing") is not None


class _Device(Store[Shown]):
    """A store synced through one simulated link."""

    def __init__(self, link: DeviceLink) -> None:
        super().__init__({}, device_id=link.device_id)
        self.link = link
        self.errors = 0
        link.connect(self.on_push)

    def on_error(self, error: BaseException) -> None:
        # Failed requests are part of the scenario: on_finish reloads the key.
        self.errors += 1

    def revision_of(self, key: Hashable) -> int:
        return self.state.get(key, (None, -1))[1]

    def tap(self, key: Hashable, value: int) -> None:
        async def reload_on_error(error: BaseException | None) -> Shown | None:
            if error is None:
                return None
            commit = await self.link.read(key)
            # A push newer than what was read may have arrived meanwhile.
            if commit is None or commit.server_revision < self.revision_of(key):
                return None
            return {**self.state, key: (commit.value, commit.server_revision)}

        def respond(state: Shown, commit: Commit) -> Shown:
            return {**state, key: (commit.value, commit.server_revision)}

        self.optimistic_sync_with_push(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: {
                **state,
                key: (v, state.get(key, (None, -1))[1]),
            },
            get_value_from_state=lambda state: state[key][0],
            send_value_to_server=self.link.send_value(key),
            get_server_revision_from_state=self.revision_of,
            apply_server_response_to_state=respond,
            on_finish=reload_on_error,
        )

    def on_push(self, commit: Commit) -> None:
        self.server_push(
            key=commit.key,
            push_metadata=commit.push_metadata,
            apply_server_push_to_state=lambda state, key, revision: {
                **state,
                key: (commit.value, revision),
            },
            get_server_revision_from_state=self.revision_of,
        )


async def _scenario(seed: int) -> int:
    """Play one seeded scenario; return how many (device, key) pairs diverged."""
    from optisync import testing

    rng = random.Random(seed)
    server = testing.SimulatedServer()
    faults = testing.NetworkFaults(
        request_latency=(0.01, 0.2),
        push_latency=(0.0, 0.3),
        duplicate_push=0.1,
        drop_push=0.05,
        fail_before_commit=0.05,
        fail_after_commit=0.05,
    )
    network = testing.SimulatedNetwork(server, faults=faults, seed=seed)
    devices = [_Device(network.device(number)) for number in range(1, DEVICES + 1)]
    try:
        for _ in range(TAPS):
            await asyncio.sleep(rng.uniform(0.0, 0.3))
            rng.choice(devices).tap(rng.choice(KEYS), rng.randrange(1_000))
        await network.settle()
        written = server.keys()
        return sum(
            device.state.get(key) != (server.value(key), server.revision_of(key))
            for device in devices
            for key in written
        )
    finally:
        for device in devices:
            await device.close()
        network.close()


def run_scenarios(scenarios: int, first_seed: int = 0) -> tuple[int, int]:
    """Run ``scenarios`` seeds; return (CPU ns of this process, divergences)."""
    from optisync import testing

    divergences = 0
    start = time.process_time_ns()
    for seed in range(first_seed, first_seed + scenarios):
        divergences += testing.run(_scenario(seed))
    return time.process_time_ns() - start, divergences


def measure(scenarios: int = SCENARIOS, repeats: int = REPEATS) -> list[Row]:
    """The simulator row (or a row saying the simulator is missing)."""
    label = "scenarios per CPU second"
    if not available():
        return [Row("6", label, "not available: optisync.testing missing", "", "", _target(), None)]
    samples: list[int] = []
    divergences = 0
    for _ in range(repeats):
        elapsed, diverged = run_scenarios(scenarios)
        samples.append(elapsed)
        divergences += diverged
    per_second = scenarios / (statistics.median(samples) / 1e9)
    return [
        Row(
            number="6",
            measure=label,
            optisync=f"{per_second:,.0f}/s",
            baseline=f"{divergences} divergences in {scenarios * repeats:,} runs",
            ratio="",
            target=_target(),
            met=per_second >= TARGET,
        )
    ]


def _target() -> str:
    return f">= {TARGET:,}/s"
