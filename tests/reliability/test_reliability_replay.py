"""A scenario is a pure function of its data: replaying it gives the same run."""

from __future__ import annotations

import random

from sim_harness import (
    CALLBACKS,
    CLOSE_POINTS,
    Action,
    CallbackFault,
    CancelCaller,
    Close,
    Drop,
    Outcome,
    Scenario,
    ServerWrite,
    Tap,
    Wait,
    play,
)

from optisync import testing
from optisync.testing import NetworkFaults

CHAOS = NetworkFaults(
    request_latency=(0.0, 0.2),
    push_latency=(0.0, 0.3),
    duplicate_push=0.2,
    drop_push=0.1,
    reconnect_delay=(0.01, 0.5),
    fail_before_commit=0.1,
    fail_after_commit=0.1,
)


def chaotic_scenario(seed: int) -> Scenario:
    draw = random.Random(seed)
    script: list[Action] = []
    for _ in range(150):
        device = draw.randint(1, 4)
        choices: list[Action] = [
            Tap(device, draw.choice("abc"), draw.random() < 0.5),
            Tap(device, draw.choice("abc"), draw.random() < 0.5),
            Wait(draw.choice([0.0, 0.01, 0.1])),
            Wait(draw.choice([0.0, 0.01, 0.1])),
            Drop(device),
            ServerWrite(draw.choice("abc")),
            CancelCaller(device),
        ]
        script.append(draw.choice(choices))
    script.insert(100, Close(4, at=draw.choice(CLOSE_POINTS)))
    faults = tuple(
        CallbackFault(device, callback, draw.randint(1, 5))
        for device in (1, 2, 3)
        for callback in draw.sample(CALLBACKS, 2)
    )
    return Scenario(seed, 4, CHAOS, tuple(script), faults)


def replay(scenario: Scenario) -> Outcome:
    outcome = testing.run(play(scenario))
    assert outcome.problems == []
    return outcome


def test_replaying_a_scenario_gives_the_same_network_trace_and_server_log() -> None:
    scenario = chaotic_scenario(2026)
    first, second = replay(scenario), replay(scenario)
    assert len(first.network.trace) > 300  # it really was a busy run
    assert first.network.trace == second.network.trace
    assert first.server.log == second.server.log


def test_another_network_seed_gives_another_run() -> None:
    scenario = chaotic_scenario(2026)
    other = Scenario(scenario.seed + 1, 4, CHAOS, scenario.script, scenario.callback_faults)
    assert replay(scenario).network.trace != replay(other).network.trace
