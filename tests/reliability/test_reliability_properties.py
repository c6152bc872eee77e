"""Randomized scenarios over 2 to 5 devices: every property holds, every device converges.

The count is OPTISYNC_SCENARIOS (default 500). A failure prints the scenario;
replay it with ``optisync.testing.run(sim_harness.play(<scenario>))``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sim_harness import (
    CALLBACKS,
    CLOSE_POINTS,
    KEYS,
    Action,
    CallbackFault,
    CancelCaller,
    Close,
    Drop,
    Restart,
    Scenario,
    ServerWrite,
    Tap,
    Wait,
    run_scenario,
    scenario_count,
)

from optisync.testing import NetworkFaults

LATENCIES = st.sampled_from([(0.0, 0.0), (0.0, 0.01), (0.001, 0.05), (0.01, 0.3)])
PROBABILITIES = st.sampled_from([0.0, 0.0, 0.05, 0.2, 0.5])

faults = st.builds(
    NetworkFaults,
    request_latency=LATENCIES,
    push_latency=LATENCIES,
    duplicate_push=PROBABILITIES,
    drop_push=st.sampled_from([0.0, 0.0, 0.05, 0.2]),
    reconnect_delay=st.sampled_from([(0.0, 0.0), (0.01, 0.1), (0.1, 1.0)]),
    fail_before_commit=PROBABILITIES,
    fail_after_commit=PROBABILITIES,
)

# Weights by repetition: mostly taps and waits; closes are rare and spare device 1,
# so that every scenario keeps at least one device to check convergence on.
KINDS = (
    ["tap"] * 8 + ["wait"] * 6 + ["drop", "write", "write", "cancel", "cancel", "close", "restart"]
)


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    devices = draw(st.integers(2, 5))
    keys = KEYS[: draw(st.integers(1, len(KEYS)))]
    device = st.integers(1, devices)
    key = st.sampled_from(keys)
    actions: dict[str, st.SearchStrategy[Action]] = {
        "tap": st.builds(Tap, device, key, st.booleans()),
        "wait": st.builds(Wait, st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.2, 1.0])),
        "drop": st.builds(Drop, device),
        "write": st.builds(ServerWrite, key),
        "cancel": st.builds(CancelCaller, device),
        "close": st.builds(Close, st.integers(2, devices), st.sampled_from(CLOSE_POINTS)),
        "restart": st.builds(Restart, device),
    }
    action = st.sampled_from(KINDS).flatmap(actions.__getitem__)
    # Hypothesis favours short lists; draw the length uniformly so long scripts are common.
    length = draw(st.integers(1, 60))
    callback_faults = st.lists(
        st.builds(CallbackFault, device, st.sampled_from(CALLBACKS), st.integers(1, 4)),
        max_size=3,
        unique_by=lambda fault: (fault.device, fault.callback),
    )
    return Scenario(
        seed=draw(st.integers(0, 2**32 - 1)),
        devices=devices,
        faults=draw(faults),
        script=tuple(draw(st.lists(action, min_size=length, max_size=length))),
        callback_faults=tuple(draw(callback_faults)),
    )


@settings(
    max_examples=scenario_count(),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios())
def test_every_scenario_converges_and_keeps_every_property(scenario: Scenario) -> None:
    problems = run_scenario(scenario)
    assert not problems, "\n".join(problems)
