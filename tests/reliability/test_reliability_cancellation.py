"""Cancellation at each await point, and close() mid-flight, one scripted scenario each.

The randomized suite reaches these points by chance; here each is reached on
purpose, and the test checks that it really was.
"""

from __future__ import annotations

import asyncio

import pytest
from sim_harness import (
    Action,
    CallbackFault,
    CancelCaller,
    Close,
    Outcome,
    Restart,
    Scenario,
    ServerWrite,
    Tap,
    Wait,
    play,
)

from optisync import RequestCancelledError, testing
from optisync.testing import NetworkFaults

SLOW = NetworkFaults(request_latency=(0.1, 0.1), push_latency=(0.05, 0.05))


def run(script: tuple[Action, ...], faults: NetworkFaults = SLOW) -> Outcome:
    outcome = testing.run(play(Scenario(seed=7, devices=2, faults=faults, script=script)))
    assert outcome.problems == []
    return outcome


@pytest.mark.parametrize(
    ("close_at", "phase"),
    [
        ("request", "request before commit"),
        ("commit", "request after commit"),
        ("on_finish", "on_finish reload"),
    ],
)
def test_closing_a_store_at_an_await_point_keeps_every_property(close_at: str, phase: str) -> None:
    failing = NetworkFaults(
        request_latency=(0.1, 0.1), fail_after_commit=1.0 if close_at == "on_finish" else 0.0
    )
    outcome = run((Close(2, at=close_at), Tap(2, "a", True), Tap(1, "b", True), Wait(1.0)), failing)
    closed = outcome.devices[2]
    assert closed.store.is_closed
    assert closed.closed_during == [phase]
    assert not closed.store.is_syncing("a")
    cycle = closed.cycles[0]
    assert not cycle.on_finish_completed


def test_closing_during_a_follow_up_request_keeps_every_property() -> None:
    # Taps 2 and 3 coalesce; the second request is the follow-up that close() cuts.
    outcome = run((Tap(2, "a", True), Tap(2, "a", False), Tap(2, "a", False), Wait(0.25), Close(2)))
    closed = outcome.devices[2]
    assert closed.closed_during == ["request before commit"]
    assert outcome.network.requests_sent(2, "a") == 2


def test_a_cancelled_caller_does_not_cancel_its_sync() -> None:
    outcome = run((Tap(1, "a", True), Wait(0.05), CancelCaller(1), Wait(1.0)))
    caller = outcome.devices[1].callers[0]
    assert caller.cancelled
    assert outcome.server.value("a") == "1.1"
    assert outcome.devices[2].store.state.values["a"] == "1.1"


def test_a_caller_cancelled_before_its_tap_runs_changes_nothing() -> None:
    outcome = run((Tap(1, "a", True), CancelCaller(1), Wait(1.0)))
    assert outcome.devices[1].callers[0].cancelled
    assert outcome.devices[1].taps["a"] == 0
    assert outcome.server.revision == 0


def test_a_push_during_a_request_drops_the_follow_up_of_the_taps_coalesced_before_it() -> None:
    # Request 1 commits after the outside write, so the server keeps the first tap;
    # the second tap, coalesced before the push, is not sent.
    script = (Tap(1, "a", True), Wait(0.02), Tap(1, "a", False), ServerWrite("a"), Wait(1.0))
    outcome = run(script)
    assert outcome.network.requests_sent(1, "a") == 1
    assert outcome.server.value("a") == "1.1"


def test_a_follow_up_whose_get_value_from_state_raises_fails_its_cycle_only() -> None:
    scenario = Scenario(
        seed=7,
        devices=2,
        faults=SLOW,
        script=(Tap(1, "a", False), Tap(1, "a", False), Wait(1.0)),
        callback_faults=(CallbackFault(1, "get_value_from_state", 1),),
    )
    outcome = testing.run(play(scenario))
    assert outcome.problems == []
    device = outcome.devices[1]
    assert [error.callback for error in device.injected] == ["get_value_from_state"]
    assert device.cycles[0].on_finish_args == device.injected
    assert device.store.reported == device.injected  # nobody awaited it
    assert outcome.network.requests_sent(1, "a") == 1


def test_a_restart_mid_request_reloads_the_key_and_converges() -> None:
    outcome = run((Tap(1, "a", True), Wait(0.15), Restart(1), Tap(2, "a", False), Wait(1.0)))
    device = outcome.devices[1]
    assert len(device.retired) == 1
    assert device.retired[0].is_closed
    assert not device.retired[0].is_syncing("a")
    assert device.store.state.values["a"] == outcome.server.value("a")


def test_a_cancelled_error_raised_by_send_itself_fails_the_request_and_reaches_the_caller() -> None:
    scenario = Scenario(
        seed=7,
        devices=2,
        faults=SLOW,
        script=(Tap(1, "a", True), Wait(1.0)),
        callback_faults=(CallbackFault(1, "send_cancelled", 1),),
    )
    outcome = testing.run(play(scenario))
    assert outcome.problems == []
    cycle = outcome.devices[1].cycles[0]
    assert isinstance(cycle.raised[0], asyncio.CancelledError)
    assert cycle.caller is not None
    assert isinstance(cycle.caller.got, RequestCancelledError)
    assert cycle.caller.got.__cause__ is cycle.raised[0]
    assert cycle.on_finish_args == [cycle.caller.got]
