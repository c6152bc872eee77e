"""The reliability suite's app, scenarios and property checks, on optisync.testing.

A scenario is plain data (devices, keys, network faults, callback faults, a
script of actions, and the network's seed); :func:`play` runs it on virtual
time and returns every property it found broken. The same scenario always
gives the same run, so a failing one printed by hypothesis replays exactly:
``testing.run(play(Scenario(...))).problems``.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections import Counter
from collections.abc import Hashable
from typing import Any

import attrs

from optisync import PushOutcome, RequestCancelledError, Store, StoreClosedError
from optisync.testing import (
    Commit,
    DeviceLink,
    NetworkFaults,
    SimulatedNetwork,
    SimulatedRequestError,
    SimulatedServer,
)

KEYS = ("a", "b", "c")
OUTSIDE_WRITER = 999  # a device that is not simulated: an admin tool, another service

#: Every user callback that the suite makes raise in turn.
CALLBACKS = (
    "value_to_apply",
    "apply_optimistic_value_to_state",
    "get_value_from_state",
    "get_server_revision_from_state",
    "send_value_to_server",
    "send_cancelled",  # send raises CancelledError of its own: a failed request
    "apply_server_response_to_state",
    "on_finish",
    "apply_server_push_to_state",
    "subscriber",
)


# -- the scenario: plain data, replayable -------------------------------------


@attrs.frozen
class Tap:
    """The user of ``device`` changes ``key``; ``awaited``: a caller awaits the sync."""

    device: int
    key: str
    awaited: bool = True


@attrs.frozen
class Wait:
    """Let virtual time pass."""

    seconds: float


@attrs.frozen
class Drop:
    """The device's push connection breaks (it reconnects by itself)."""

    device: int


@attrs.frozen
class ServerWrite:
    """A writer outside the simulated devices changes ``key``: every device gets a push."""

    key: str


@attrs.frozen
class CancelCaller:
    """Cancel the task awaiting the device's latest sync (the sync itself must go on)."""

    device: int


CLOSE_POINTS = ("now", "request", "commit", "on_finish")


@attrs.frozen
class Close:
    """Close the device's store: ``now``, or as soon as it reaches an await point.

    ``request``: a request of the device has just started (before the server
    commits it); ``commit``: the server has just committed a write of the
    device (the response is on its way); ``on_finish``: an ``on_finish``
    reload has just started. If that never happens, the store stays open.
    """

    device: int
    at: str = "now"


@attrs.frozen
class Restart:
    """The app restarts: a new store starts from the old one's (persisted) state.

    The push channel stays up across the restart, as an OS push service that
    queues messages does: pushes already on their way reach the new store.
    Keys whose sync the restart cut short are reloaded at startup.
    """

    device: int


Action = Tap | Wait | Drop | ServerWrite | CancelCaller | Close | Restart


@attrs.frozen
class CallbackFault:
    """On ``device``, the ``call``-th call of ``callback`` raises :class:`InjectedFault`."""

    device: int
    callback: str
    call: int


@attrs.frozen
class Scenario:
    """Everything one run depends on. ``seed`` drives every choice of the network."""

    seed: int
    devices: int
    faults: NetworkFaults
    script: tuple[Action, ...]
    callback_faults: tuple[CallbackFault, ...] = ()


class InjectedFault(Exception):
    """Raised on purpose by a user callback."""

    def __init__(self, callback: str, call: int, device: int) -> None:
        super().__init__(f"{callback} call {call} on device {device}")
        self.callback = callback


# -- how many scenarios, and statistics shown in the terminal summary -----------

DEFAULT_SCENARIOS = 500


def scenario_count() -> int:
    """How many randomized scenarios to run: ``OPTISYNC_SCENARIOS``, default 500."""
    raw = os.environ.get("OPTISYNC_SCENARIOS", "")
    return int(raw) if raw.strip() else DEFAULT_SCENARIOS


def run_seed(environ: dict[str, str] | os._Environ[str] = os.environ) -> int:
    """The seed hypothesis draws the run's scenarios from: ``OPTISYNC_SEED``, or a new one.

    The suite prints it, so that ``OPTISYNC_SEED=<seed>`` (with the same
    ``OPTISYNC_SCENARIOS``) replays the whole run, figures and all.
    """
    raw = environ.get("OPTISYNC_SEED", "").strip()
    if not raw:
        return secrets.randbits(32)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"OPTISYNC_SEED must be an integer, not {raw!r}") from None


RUN_SEED = run_seed()
"""This run's seed, drawn once per pytest session."""


@attrs.define
class Stats:
    scenarios: int = 0
    failed: int = 0
    divergences: int = 0
    seconds: float = 0.0
    first_start: float | None = None
    close_phases: Counter[str] = attrs.field(factory=Counter)
    injected: Counter[str] = attrs.field(factory=Counter)
    push_outcomes: Counter[str] = attrs.field(factory=Counter)
    requests: int = 0
    taps: int = 0
    network_failures: int = 0


STATS = Stats()


# -- the app under test: a key-value store, one value and revision per key ----


@attrs.frozen
class KVState:
    values: dict[Hashable, object] = attrs.field(factory=dict)
    revisions: dict[Hashable, int] = attrs.field(factory=dict)

    def with_value(self, key: Hashable, value: object) -> KVState:
        return attrs.evolve(self, values={**self.values, key: value})

    def with_commit(self, key: Hashable, value: object, revision: int) -> KVState:
        return KVState({**self.values, key: value}, {**self.revisions, key: revision})


class KVStore(Store[KVState]):
    """The app's store; it records what reaches ``on_error``."""

    def __init__(self, device_id: int, state: KVState | None = None) -> None:
        super().__init__(KVState() if state is None else state, device_id=device_id)
        self.reported: list[BaseException] = []

    def on_error(self, error: BaseException) -> None:
        self.reported.append(error)


@attrs.define(eq=False)
class Caller:
    """A task that taps and awaits the sync, as an app's ``await store.toggle()``."""

    task: asyncio.Task[None] | None = None
    cycle: CycleRecord | None = None
    waiting: bool = True
    cancelled: bool = False
    got: BaseException | None = None


@attrs.define(eq=False)
class CycleRecord:
    """One lock cycle, seen from outside: what its callbacks raised, what came back."""

    key: Hashable
    number: int
    store: KVStore
    result: Any = None
    raised: list[BaseException] = attrs.field(factory=list)
    on_finish_args: list[BaseException | None] = attrs.field(factory=list)
    on_finish_completed: bool = False
    caller: Caller | None = None


class Device:
    """One simulated device: a KVStore wired to the network, with fault injection."""

    def __init__(self, number: int, network: SimulatedNetwork, faults: dict[str, int]) -> None:
        self.number = number
        self.network = network
        self.store = KVStore(device_id=number)
        self.retired: list[KVStore] = []  # the stores of earlier runs of the app
        self.link: DeviceLink = network.device(number)
        self.faults = faults
        self.calls: Counter[str] = Counter()
        self.values_made = 0
        self.taps: Counter[Hashable] = Counter()
        self.cycles: list[CycleRecord] = []
        self.coalesced: list[CycleRecord] = []
        self.callers: list[Caller] = []
        self.injected: list[InjectedFault] = []
        # Per key, the cycles that failed and whose own reload has not put the
        # server's value back yet: the app refreshes a key while any is left.
        self.tainted: dict[Hashable, set[int]] = {}
        self.reloading: Counter[Hashable] = Counter()
        self.in_flight_revision: dict[Hashable, int] = {}
        self.violations: list[str] = []
        self.push_outcomes: Counter[PushOutcome] = Counter()
        self.close_at: str | None = None
        self.closed_during: list[str] = []
        # "Last tap wins": when each key was last tapped, and last superseded
        # (a push from another writer applied, or a cycle failed), in event order.
        self.events = 0
        self.last_tap: dict[Hashable, tuple[int, object]] = {}
        self.superseded: dict[Hashable, int] = {}
        self.closer: asyncio.Task[None] | None = None
        self.store.subscribe(self._listener)
        self.link.connect(self.handle_push)

    # -- fault injection ---------------------------------------------------------

    def _hook(self, callback: str, cycle: CycleRecord | None = None) -> None:
        self.calls[callback] += 1
        if self.faults.get(callback) == self.calls[callback]:
            error = InjectedFault(callback, self.calls[callback], self.number)
            self.injected.append(error)
            STATS.injected[callback] += 1
            if cycle is not None:
                cycle.raised.append(error)
            raise error

    def _hook_cancelled(self, cycle: CycleRecord) -> None:
        """Fault ``send_cancelled``: send raises CancelledError though nobody cancelled it."""
        self.calls["send_cancelled"] += 1
        if self.faults.get("send_cancelled") == self.calls["send_cancelled"]:
            STATS.injected["send_cancelled"] += 1
            cancelled = asyncio.CancelledError("raised by the HTTP client, not by close()")
            cycle.raised.append(cancelled)
            raise cancelled

    def _listener(self, state: KVState) -> None:
        self._hook("subscriber")

    # -- the user's actions --------------------------------------------------------

    def tap(self, key: Hashable, awaited: bool) -> None:
        """Tap now; or, if awaited, from a caller task that awaits the sync at once.

        The awaited tap runs in its caller's own task, like ``await
        store.toggle()`` in an app: the caller awaits before the cycle can end.
        """
        if not awaited:
            self._tap(key)
            return
        caller = Caller()
        caller.task = asyncio.create_task(self._tap_and_await(key, caller))
        self.callers.append(caller)

    async def _tap_and_await(self, key: Hashable, caller: Caller) -> None:
        try:
            cycle = self._tap(key)
            if cycle is None:
                return
            caller.cycle = cycle
            cycle.caller = caller
            await cycle.result
        except asyncio.CancelledError:
            caller.cancelled = True
            raise
        except BaseException as error:
            caller.got = error
        finally:
            caller.waiting = False

    def _tap(self, key: Hashable) -> CycleRecord | None:
        store = self.store
        if store.is_closed:
            self._tap_closed(key)
            return None
        was_syncing = store.is_syncing(key)
        before = store.state
        before_revision = store.local_revision(key)
        cycle = CycleRecord(key, len(self.cycles), store)
        try:
            result = self._call_sync(key, cycle)
        except InjectedFault as error:
            # Errors of value_to_apply and apply_optimistic_value_to_state are
            # raised by the call itself, before anything changes: no lock cycle.
            if error not in self.injected:
                self.violations.append(f"tap raised an unknown error {error!r}")
            if store.state is not before or store.local_revision(key) != before_revision:
                self.violations.append(f"a tap that raised {error!r} changed the store")
            if store.is_syncing(key) != was_syncing:
                self.violations.append(f"a tap that raised {error!r} changed the lock of {key!r}")
            return None
        self.taps[key] += 1
        self.events += 1
        self.last_tap[key] = (self.events, store.state.values.get(key))
        if store.local_revision(key) != before_revision + 1:
            self.violations.append(f"a tap did not add one to the local revision of {key!r}")
        if was_syncing:
            if not _is_complete(result):
                self.violations.append("a coalesced tap returned an awaitable still pending")
            self.coalesced.append(cycle)
            return None
        if not store.is_syncing(key):
            self.violations.append(f"the tap that took the lock of {key!r} left it unlocked")
        cycle.result = result
        self.cycles.append(cycle)
        return cycle

    def _tap_closed(self, key: Hashable) -> None:
        before = self.store.state
        try:
            self._call_sync(key, CycleRecord(key, -1, self.store))
        except StoreClosedError:
            if self.store.state is not before:
                self.violations.append("a tap on a closed store changed its state")
        else:
            self.violations.append("a tap on a closed store did not raise StoreClosedError")

    def _call_sync(self, key: Hashable, cycle: CycleRecord) -> Any:
        store = self.store
        send = self.link.send_value(key)

        def value_to_apply() -> object:
            self._hook("value_to_apply")
            self.values_made += 1
            return f"{self.number}.{self.values_made}"

        def apply_optimistic(state: KVState, value: object) -> KVState:
            self._hook("apply_optimistic_value_to_state")
            return state.with_value(key, value)

        def get_value(state: KVState) -> object:
            self._hook("get_value_from_state", cycle)
            return state.values.get(key)

        def get_revision(asked: Hashable) -> int:
            self._hook("get_server_revision_from_state", cycle)
            return store.state.revisions.get(asked, -1)

        async def send_value(
            value: object, local_revision: int, device_id: int, inform: Any
        ) -> Commit:
            self._hook("send_value_to_server", cycle)
            self._hook_cancelled(cycle)
            self.reached("request")
            if not store.is_syncing(key):
                self.violations.append(f"a request for {key!r} was sent without the lock")
            self.in_flight_revision[key] = local_revision
            try:
                return await send(value, local_revision, device_id, inform)
            except SimulatedRequestError as error:
                STATS.network_failures += 1
                cycle.raised.append(error)
                raise
            finally:
                del self.in_flight_revision[key]

        def apply_response(state: KVState, commit: Commit) -> KVState:
            self._hook("apply_server_response_to_state", cycle)
            return state.with_commit(key, commit.value, commit.server_revision)

        async def on_finish(error: BaseException | None) -> KVState | None:
            cycle.on_finish_args.append(error)
            if error is not None:
                self.events += 1
                self.superseded[key] = self.events
                # No reload will put the server's value back: a refresh will.
                self.tainted.setdefault(key, set()).add(cycle.number)
            self._hook("on_finish")
            if error is None:
                self.tainted.pop(key, None)
                cycle.on_finish_completed = True
                return None
            self.reloading[key] += 1
            self.reached("on_finish")
            try:
                commit = await self.link.read(key)
            finally:
                self.reloading[key] -= 1
            # Only this cycle's failure is repaired: another that failed while
            # this reload was on its way (its on_finish raised) still needs one.
            self._untaint(key, cycle.number)
            cycle.on_finish_completed = True
            return self._reloaded(store, key, commit)

        return store.optimistic_sync_with_push(
            key=key,
            value_to_apply=value_to_apply,
            apply_optimistic_value_to_state=apply_optimistic,
            get_value_from_state=get_value,
            send_value_to_server=send_value,
            get_server_revision_from_state=get_revision,
            apply_server_response_to_state=apply_response,
            on_finish=on_finish,
        )

    def _untaint(self, key: Hashable, number: int) -> None:
        cycles = self.tainted.get(key, set())
        cycles.discard(number)
        if not cycles:
            self.tainted.pop(key, None)

    def _reloaded(self, store: KVStore, key: Hashable, commit: Commit | None) -> KVState | None:
        """What the app's on_finish does with a reload after a failure (seed: reload)."""
        state = store.state
        if store.is_closed or store.is_syncing(key):
            return None  # a newer tap owns the key; its own cycle will settle it
        if (-1 if commit is None else commit.server_revision) < state.revisions.get(key, -1):
            return None  # a newer push arrived while the reload was on its way
        if commit is None:  # never written: back to nothing
            values = {k: v for k, v in state.values.items() if k != key}
            revisions = {k: v for k, v in state.revisions.items() if k != key}
            return KVState(values, revisions)
        if commit.device_id != self.number:
            # Another writer's newer value, learnt by the reload: like an applied push.
            self.events += 1
            self.superseded[key] = self.events
        return state.with_commit(key, commit.value, commit.server_revision)

    def cancel_caller(self) -> None:
        """Cancel the latest caller still waiting (its tap may not have run yet)."""
        for caller in reversed(self.callers):
            if not caller.waiting:
                continue
            if caller.cycle is not None and caller.cycle.result.done():
                continue  # its result is on its way: too late to cancel
            assert caller.task is not None
            caller.task.cancel()
            # Set here too: a task cancelled before its first step never runs.
            caller.cancelled = True
            return

    def reached(self, point: str) -> None:
        """Close the store from a task of its own if the script armed ``point``."""
        if self.close_at == point and self.closer is None:
            self.closer = asyncio.get_running_loop().create_task(self.close(mid_scenario=True))

    async def close(self, *, mid_scenario: bool = False) -> None:
        if self.store.is_closed:
            return
        if mid_scenario:
            self.closed_during = self._phases()
            STATS.close_phases.update(self.closed_during)
        self.link.close()
        await self.store.close()

    async def restart(self) -> None:
        """Restart the app: persist the state, close the store, start a new one from it."""
        old = self.store
        if old.is_closed:
            return
        cut_short: set[Hashable] = {
            key for key in KEYS if old.is_syncing(key) or self.reloading[key]
        }
        cut_short |= self.tainted.keys()
        self.store = KVStore(self.number, old.state)
        self.store.subscribe(self._listener)
        self.retired.append(old)
        await old.close()
        for key in sorted(cut_short, key=repr):
            # The taps the restart cut short are lost: the app reloads those keys.
            self.events += 1
            self.superseded[key] = self.events
            await self.refresh(key)
            self.tainted.pop(key, None)

    def _phases(self) -> list[str]:
        phases = []
        log = self.network.server.log
        for key, revision in self.in_flight_revision.items():
            committed = any(
                c.device_id == self.number and c.key == key and c.local_revision == revision
                for c in log
            )
            phases.append("request after commit" if committed else "request before commit")
        phases += ["on_finish reload" for key, n in self.reloading.items() if n]
        return phases or ["idle"]

    # -- pushes ------------------------------------------------------------------

    def handle_push(self, commit: Commit) -> None:
        store = self.store
        key = commit.key
        before = store.state
        before_revision = store.server_revision(key)

        def apply_push(state: KVState, pushed_key: Hashable, revision: int) -> KVState:
            self._hook("apply_server_push_to_state")
            return state.with_commit(pushed_key, commit.value, revision)

        def get_revision(asked: Hashable) -> int:
            self._hook("get_server_revision_from_state")
            return store.state.revisions.get(asked, -1)

        try:
            outcome = store.server_push(
                key=key,
                push_metadata=commit.push_metadata,
                apply_server_push_to_state=apply_push,
                get_server_revision_from_state=get_revision,
            )
        except InjectedFault:
            # server_push may have learnt the revision the state already holds
            # (seeding) before the callback raised; nothing else may change.
            seeded = max(before_revision, before.revisions.get(key, -1))
            if store.state is not before or store.server_revision(key) not in (
                before_revision,
                seeded,
            ):
                self.violations.append("a push whose callback raised changed the store")
            raise  # the link counts the push as lost: the reconnect replays it
        self.push_outcomes[outcome] += 1
        if outcome is PushOutcome.APPLIED and commit.device_id != self.number:
            self.events += 1
            self.superseded[key] = self.events

    async def refresh(self, key: Hashable) -> None:
        """The app's recovery (pull to refresh) for a key whose on_finish failed."""
        commit = await self.link.read(key)
        state = self.store.state
        newest = (-1 if commit is None else commit.server_revision) >= state.revisions.get(key, -1)
        if not self.store.is_closed and not self.store.is_syncing(key) and newest:
            if commit is None:
                self.store.emit(
                    KVState(
                        {k: v for k, v in state.values.items() if k != key},
                        {k: v for k, v in state.revisions.items() if k != key},
                    )
                )
            else:
                self.store.emit(state.with_commit(key, commit.value, commit.server_revision))


# -- running a scenario ---------------------------------------------------------


@attrs.define(eq=False)
class Outcome:
    """What a scenario left: the broken properties (none: all held), and the world."""

    problems: list[str]
    server: SimulatedServer
    network: SimulatedNetwork
    devices: dict[int, Device]


async def play(scenario: Scenario) -> Outcome:
    """Run ``scenario``; its :class:`Outcome` lists every property it found broken."""
    server = SimulatedServer()
    network = SimulatedNetwork(server, faults=scenario.faults, seed=scenario.seed)
    devices = {
        number: Device(
            number,
            network,
            {f.callback: f.call for f in scenario.callback_faults if f.device == number},
        )
        for number in range(1, scenario.devices + 1)
    }
    outside_writes = 0
    problems: list[str] = []

    def on_commit(commit: Commit) -> None:
        device = devices.get(commit.device_id)
        if device is not None:
            device.reached("commit")

    server.subscribe(on_commit)
    for action in scenario.script:
        match action:
            case Tap(device, key, awaited):
                devices[device].tap(key, awaited)
            case Wait(seconds):
                await asyncio.sleep(seconds)
            case Drop(device):
                devices[device].link.drop()
            case ServerWrite(key):
                outside_writes += 1
                server.write(
                    key,
                    f"out.{outside_writes}",
                    local_revision=outside_writes,
                    device_id=OUTSIDE_WRITER,
                )
            case CancelCaller(device):
                devices[device].cancel_caller()
            case Restart(device):
                await devices[device].restart()
            case Close(device, "now"):
                await devices[device].close(mid_scenario=True)
            case Close(device, at):
                devices[device].close_at = at
        problems += _check_moment(devices, network)
    try:
        await network.settle(max_time=36_000)
    except AssertionError as error:
        problems.append(f"no quiescence (task left or livelock): {error}")
        problems += await _shutdown(devices, network)
        return Outcome(problems, server, network, devices)
    for each in devices.values():
        for tainted in sorted(each.tainted, key=repr):
            await each.refresh(tainted)
    problems += _check_quiescent(devices, network)
    problems += await _check_cycles(devices)
    problems += await _shutdown(devices, network)
    return Outcome(problems, server, network, devices)


async def _shutdown(devices: dict[int, Device], network: SimulatedNetwork) -> list[str]:
    network.close()
    for device in devices.values():
        await device.close()
    left = asyncio.all_tasks() - {asyncio.current_task()}
    return [f"tasks left after closing every store: {left!r}"] if left else []


def _check_moment(devices: dict[int, Device], network: SimulatedNetwork) -> list[str]:
    problems = []
    for device in devices.values():
        for key in KEYS:
            in_flight = network.requests_in_flight(device.number, key)
            if in_flight > 1:
                problems.append(f"device {device.number}: {in_flight} requests for {key!r}")
            if in_flight and not device.store.is_syncing(key):
                problems.append(f"device {device.number}: request for {key!r} without lock")
    return problems


def _check_quiescent(devices: dict[int, Device], network: SimulatedNetwork) -> list[str]:
    problems = []
    server = network.server
    for device in devices.values():
        store = device.store
        problems += [f"device {device.number}: {v}" for v in device.violations]
        for key in KEYS:
            requests = network.requests_sent(device.number, key)
            STATS.requests += requests
            STATS.taps += device.taps[key]
            if network.max_requests_in_flight(device.number, key) > 1:
                problems.append(f"device {device.number}: >1 request in flight for {key!r}")
            if requests > device.taps[key]:
                problems.append(
                    f"device {device.number}: {requests} requests > {device.taps[key]} taps "
                    f"for {key!r}"
                )
            if any(each.is_syncing(key) for each in [*device.retired, store]):
                problems.append(f"device {device.number}: {key!r} still locked")
            if store.is_closed:
                continue
            shown = (store.state.values.get(key), store.state.revisions.get(key, -1))
            held = (server.value(key), server.revision_of(key))
            if shown != held:
                STATS.divergences += 1
                problems.append(
                    f"DIVERGENCE device {device.number} key {key!r}: shows {shown}, "
                    f"server holds {held}"
                )
            if key in device.last_tap:
                tapped_at, tapped = device.last_tap[key]
                if held[0] != tapped and device.superseded.get(key, -1) < tapped_at:
                    problems.append(
                        f"LAST TAP LOST device {device.number} key {key!r}: tapped {tapped!r} "
                        f"last, nothing newer came, yet the server holds {held[0]!r}"
                    )
            if store.server_revision(key) > server.revision_of(key):
                problems.append(f"device {device.number}: knows a revision the server never made")
        for outcome, count in device.push_outcomes.items():
            STATS.push_outcomes[outcome.value] += count
        unexplained = [e for e in device.link.push_errors if e not in device.injected]
        if unexplained:
            problems.append(f"device {device.number}: push handler raised {unexplained!r}")
    return problems


async def _check_cycles(devices: dict[int, Device]) -> list[str]:
    problems = []
    for device in devices.values():
        reported = [e for store in [*device.retired, device.store] for e in store.reported]
        if any(cycle.on_finish_args for cycle in device.coalesced):
            problems.append(f"device {device.number}: the on_finish of a coalesced tap ran")
        for cycle in device.cycles:
            problems += [
                f"device {device.number} cycle {cycle.number} ({cycle.key!r}): {p}"
                for p in await _check_cycle(device, cycle, reported)
            ]
        expected_listener_faults = [e for e in device.injected if e.callback == "subscriber"]
        for error in expected_listener_faults:
            if error in reported:
                reported.remove(error)
            else:
                problems.append(f"device {device.number}: subscriber error missed on_error")
        if reported:
            problems.append(f"device {device.number}: unexplained on_error calls {reported!r}")
    return problems


async def _check_cycle(
    device: Device, cycle: CycleRecord, reported: list[BaseException]
) -> list[str]:
    problems = []
    try:
        await cycle.result  # already complete: this only reads the outcome
        outcome: BaseException | None = None
    except BaseException as error:
        outcome = error
    if len(cycle.raised) > 1:
        problems.append(f"the cycle went on after an error: {cycle.raised!r}")
    cause = cycle.raised[0] if cycle.raised else None
    if isinstance(cause, asyncio.CancelledError):
        # Not close(): the core reports it as a failed request, caused by it.
        wrapped = cycle.on_finish_args[0] if cycle.on_finish_args else None
        if not isinstance(wrapped, RequestCancelledError) or wrapped.__cause__ is not cause:
            problems.append(f"a CancelledError from send reached on_finish as {wrapped!r}")
            return problems
        cause = wrapped
    caller = cycle.caller
    if cycle.store.is_closed and isinstance(outcome, StoreClosedError):
        # Cancelled by close(): on_finish did not run, or was cut short by it.
        if cycle.on_finish_args and cycle.on_finish_completed:
            problems.append("on_finish completed in a cycle that close() cancelled")
        if len(cycle.on_finish_args) > 1:
            problems.append(f"on_finish ran {len(cycle.on_finish_args)} times")
        if caller is not None and not caller.cancelled and type(caller.got) is not type(outcome):
            problems.append(f"the caller of a closed cycle got {caller.got!r}")
        return problems
    if cycle.on_finish_args != [cause]:
        problems.append(f"on_finish got {cycle.on_finish_args!r}, expected [{cause!r}]")
    finish_fault = next(
        (e for e in device.injected if e.callback == "on_finish" and e is outcome), None
    )
    if finish_fault is not None:
        if finish_fault.__context__ is not cause:
            problems.append(f"on_finish's error is not chained to {cause!r}")
    elif outcome is not cause:
        problems.append(f"the cycle ended with {outcome!r}, its callbacks raised {cause!r}")
    if outcome is None:
        if caller is not None and caller.got is not None:
            problems.append(f"a successful cycle raised {caller.got!r} in its caller")
        return problems
    if caller is not None and caller.got is outcome:
        if outcome in reported:
            problems.append("an error that reached its caller also went to on_error")
    elif caller is not None and not caller.cancelled:
        problems.append(f"the caller got {caller.got!r}, not {outcome!r}")
    elif outcome in reported:
        reported.remove(outcome)
    else:
        problems.append(f"{outcome!r} reached neither a caller nor on_error")
    return problems


def run_scenario(scenario: Scenario) -> list[str]:
    """Play one scenario on virtual time, counting it in the statistics."""
    from optisync import testing

    started = time.perf_counter()
    if STATS.first_start is None:
        STATS.first_start = started
    problems = testing.run(play(scenario)).problems
    STATS.scenarios += 1
    STATS.failed += bool(problems)
    STATS.seconds = time.perf_counter() - STATS.first_start
    return problems


def _is_complete(result: Any) -> bool:
    """Whether awaiting ``result`` finishes without suspending (a coalesced call's result)."""
    iterator = result.__await__()
    try:
        next(iterator)
    except StopIteration:
        return True
    iterator.close()
    return False
