"""A seeded, faulty network between a :class:`SimulatedServer` and its devices.

Every random choice (latencies, duplicated, dropped and failed messages) comes
from one ``random.Random(seed)``, drawn in the order the events happen on a
single-threaded event loop: the same seed and the same script give the same
run. Delays are ``asyncio`` timers, so on a
:class:`~optisync.testing.VirtualClockLoop` they cost no real time.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs

from optisync.testing.server import Commit, SimulatedServer

__all__ = [
    "DeviceLink",
    "NetworkFaults",
    "SettleTimeoutError",
    "SimulatedNetwork",
    "SimulatedRequestError",
    "TraceEvent",
]

SendValue = Callable[[Any, int, int, Callable[[int], None]], Awaitable[Commit]]
"""The type of :meth:`DeviceLink.send_value`'s result: a ``send_value_to_server``.

It is called as ``send(value, local_revision, device_id, inform_server_revision)``
and returns the :class:`~optisync.testing.Commit`, which is then the response
handed to ``apply_server_response_to_state``.

Example:
    >>> from optisync import testing
    >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
    >>> send: testing.SendValue = link.send_value("k")
"""


def _check_range(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    low, high = value
    if not 0 <= low <= high:
        raise ValueError(f"{attribute.name} must be (low, high) with 0 <= low <= high, got {value}")


def _check_probability(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability in [0, 1], got {value}")


@attrs.frozen
class NetworkFaults:
    """What the network does wrong, and how often. The default is a perfect network.

    Latencies are ``(low, high)`` ranges in seconds, drawn uniformly.

    Attributes:
        request_latency: each leg of a request: to the server, and back.
        push_latency: the range each device's own push range is drawn from,
            once per device; pushes then draw from their device's range, so
            devices differ and a device's pushes overtake each other.
        duplicate_push: probability that a push is delivered twice.
        drop_push: probability that a push is lost; the device notices, its
            connection breaks and reconnects after ``reconnect_delay``,
            replaying every commit after the last revision it knows.
            Replayed pushes may be duplicated and delayed, never dropped.
        reconnect_delay: how long a broken connection stays down.
        fail_before_commit: probability that a write fails before the
            server commits it.
        fail_after_commit: probability that a write is committed (and pushed)
            but the response is lost: the client sees an error.

    Example:
        >>> from optisync.testing import NetworkFaults
        >>> NetworkFaults(drop_push=0.1, request_latency=(0.01, 0.2)).drop_push
        0.1
        >>> NetworkFaults(drop_push=2.0)
        Traceback (most recent call last):
        ...
        ValueError: drop_push must be a probability in [0, 1], got 2.0
    """

    request_latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_check_range)
    push_latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_check_range)
    duplicate_push: float = attrs.field(default=0.0, validator=_check_probability)
    drop_push: float = attrs.field(default=0.0, validator=_check_probability)
    reconnect_delay: tuple[float, float] = attrs.field(default=(0.1, 0.1), validator=_check_range)
    fail_before_commit: float = attrs.field(default=0.0, validator=_check_probability)
    fail_after_commit: float = attrs.field(default=0.0, validator=_check_probability)


class SimulatedRequestError(ConnectionError):
    """A simulated request failed: before the server committed it, or after.

    Attributes:
        commit: the commit when the server committed the write before the
            response was lost (``committed`` is then True), else ``None``.

    Example:
        >>> from optisync.testing import SimulatedRequestError
        >>> SimulatedRequestError("request lost").committed
        False
    """

    def __init__(self, message: str, commit: Commit | None = None) -> None:
        super().__init__(message)
        self.commit = commit

    @property
    def committed(self) -> bool:
        """Whether the server committed the write despite the error.

        Example:
            >>> from optisync.testing import Commit, SimulatedRequestError
            >>> SimulatedRequestError("lost", Commit("k", 1, 1, 1, 1)).committed
            True
        """
        return self.commit is not None


class SettleTimeoutError(AssertionError):
    """:meth:`SimulatedNetwork.settle` gave up: something is still running.

    Example:
        >>> from optisync.testing import SettleTimeoutError
        >>> issubclass(SettleTimeoutError, AssertionError)
        True
    """


@attrs.frozen
class TraceEvent:
    """One thing the network did, for comparing runs and reading failures.

    Attributes:
        time: the loop's (virtual) time.
        kind: ``"request"``, ``"commit"``, ``"fail_before_commit"``,
            ``"fail_after_commit"``, ``"response"``, ``"push"``, ``"push_lost"``,
            ``"push_error"``, ``"drop"``, ``"reconnect"``, ``"read"``.
        device_id: the device concerned.
        detail: the key, revision or error concerned.

    Example:
        >>> from optisync.testing import TraceEvent
        >>> TraceEvent(0.5, "push", 1, ("k", 3)).kind
        'push'
    """

    time: float
    kind: str
    device_id: int
    detail: object = None


class SimulatedNetwork:
    """Carries requests to a :class:`SimulatedServer` and its pushes back, with faults.

    Make one :class:`DeviceLink` per device with :meth:`device`. Run it on a
    :class:`~optisync.testing.VirtualClockLoop` (see :func:`~optisync.testing.run`)
    to make delays free; it also works on a normal loop, in real time.

    Args:
        server: the server every link talks to.
        faults: what goes wrong (default: nothing).
        seed: the seed of every random choice.

    Example:
        >>> from optisync import testing
        >>> async def main() -> None:
        ...     server = testing.SimulatedServer()
        ...     network = testing.SimulatedNetwork(server, seed=1)
        ...     phone = network.device(1)
        ...     phone.connect(lambda commit: print("push", commit.value))
        ...     commit = await phone.write("k", "hello", local_revision=1)
        ...     await network.settle()
        ...     print(commit.server_revision, network.requests_sent(1, "k"))
        >>> testing.run(main())
        push hello
        1 1
    """

    def __init__(
        self, server: SimulatedServer, *, faults: NetworkFaults | None = None, seed: int = 0
    ) -> None:
        self.server = server
        self.faults = NetworkFaults() if faults is None else faults
        self.seed = seed
        self._rng = random.Random(seed)
        self._links: dict[int, DeviceLink] = {}
        self._pending: dict[asyncio.TimerHandle, None] = {}
        self._requests: dict[tuple[int, Hashable], int] = {}
        self._in_flight: dict[tuple[int, Hashable], int] = {}
        self._max_in_flight: dict[tuple[int, Hashable], int] = {}
        self.trace: list[TraceEvent] = []
        server.subscribe(self._push_to_all)

    # -- devices ---------------------------------------------------------------

    def device(self, device_id: int) -> DeviceLink:
        """Make the link of a new device; it is not connected to pushes yet.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.device(1).is_connected
            False
        """
        if device_id in self._links:
            raise ValueError(f"device {device_id} already has a link")
        low, high = self.faults.push_latency
        own = sorted((self._rng.uniform(low, high), self._rng.uniform(low, high)))
        link = DeviceLink(self, device_id, (own[0], own[1]))
        self._links[device_id] = link
        return link

    @property
    def links(self) -> list[DeviceLink]:
        """Every device link, in the order they were made.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> [link.device_id for link in (network.device(1), network.device(2))]
            [1, 2]
        """
        return list(self._links.values())

    # -- statistics ------------------------------------------------------------

    def requests_sent(self, device_id: int, key: Hashable) -> int:
        """How many writes ``device_id`` started for ``key``.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).requests_sent(1, "k")
            0
        """
        return self._requests.get((device_id, key), 0)

    def max_requests_in_flight(self, device_id: int, key: Hashable) -> int:
        """The most writes ``device_id`` ever had in flight at once for ``key``.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).max_requests_in_flight(1, "k")
            0
        """
        return self._max_in_flight.get((device_id, key), 0)

    def requests_in_flight(self, device_id: int, key: Hashable) -> int:
        """How many writes ``device_id`` has in flight for ``key`` right now.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).requests_in_flight(1, "k")
            0
        """
        return self._in_flight.get((device_id, key), 0)

    @property
    def pending_deliveries(self) -> int:
        """Pushes, losses and reconnects scheduled but not yet happened.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).pending_deliveries
            0
        """
        return len(self._pending)

    # -- waiting ---------------------------------------------------------------

    async def settle(self, *, max_time: float = 3600.0) -> None:
        """Wait until nothing is left: no other task, no push or reconnect pending.

        "Other task" means every task of the loop except the caller, so call it
        from the coroutine that drives the scenario. Raises
        :class:`SettleTimeoutError` if that does not happen within ``max_time``
        seconds of (virtual) time: a livelock, or a task that never ends.

        Example:
            >>> import asyncio
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     task = asyncio.create_task(asyncio.sleep(5))
            ...     await network.settle()
            ...     print(task.done(), asyncio.get_running_loop().time())
            >>> testing.run(main())
            True 5.0
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_time
        me = asyncio.current_task()
        while True:
            others = [task for task in asyncio.all_tasks() if task is not me]
            left = deadline - loop.time()
            if left <= 0 and (others or self._pending):
                raise SettleTimeoutError(
                    f"not settled after {max_time}s: {len(others)} task(s) running, "
                    f"{len(self._pending)} delivery(ies) pending: {others!r}"
                )
            if others:
                await asyncio.wait(others, timeout=left)
            elif self._pending:
                last = max(handle.when() for handle in self._pending)
                await asyncio.sleep(min(max(last - loop.time(), 0.0), left))
            else:
                # call_soon callbacks (task wake-ups, done callbacks) may still be
                # queued: give them a turn before declaring the network quiet.
                await asyncio.sleep(0)
                if not self._pending and all(task is me for task in asyncio.all_tasks()):
                    return

    def close(self) -> None:
        """Cancel every pending push and reconnect, and disconnect every device.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.close()
            >>> network.pending_deliveries
            0
        """
        for link in self._links.values():
            link.disconnect()
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()

    # -- internals used by DeviceLink -------------------------------------------

    def _trace(self, kind: str, device_id: int, detail: object = None) -> None:
        try:
            now = asyncio.get_running_loop().time()
        except RuntimeError:  # wiring done before the loop starts
            now = 0.0
        self.trace.append(TraceEvent(now, kind, device_id, detail))

    def _delay(self, span: tuple[float, float]) -> float:
        low, high = span
        return low if low == high else self._rng.uniform(low, high)

    def _chance(self, probability: float) -> bool:
        # Draw only when it can matter, so adding a zero-probability fault to a
        # configuration does not change the runs of every seed.
        return probability > 0.0 and self._rng.random() < probability

    def _later(self, delay: float, callback: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self._pending.pop(handle, None)
            callback(*args)

        handle = loop.call_later(delay, fire)
        self._pending[handle] = None

    def _push_to_all(self, commit: Commit) -> None:
        for link in self._links.values():
            if link.is_connected:
                self._send_push(link, commit, may_drop=True)

    def _send_push(self, link: DeviceLink, commit: Commit, *, may_drop: bool) -> None:
        generation = link._generation
        if may_drop and self._chance(self.faults.drop_push):
            self._later(self._delay(link.push_latency), link._lose, commit, generation)
            return
        self._later(self._delay(link.push_latency), link._deliver, commit, generation)
        if self._chance(self.faults.duplicate_push):
            self._later(self._delay(link.push_latency), link._deliver, commit, generation)

    async def _write(
        self, link: DeviceLink, key: Hashable, value: object, local_revision: int
    ) -> Commit:
        slot = (link.device_id, key)
        self._requests[slot] = self._requests.get(slot, 0) + 1
        in_flight = self._in_flight.get(slot, 0) + 1
        self._in_flight[slot] = in_flight
        self._max_in_flight[slot] = max(self._max_in_flight.get(slot, 0), in_flight)
        self._trace("request", link.device_id, (key, local_revision))
        try:
            await asyncio.sleep(self._delay(self.faults.request_latency))
            if self._chance(self.faults.fail_before_commit):
                self._trace("fail_before_commit", link.device_id, key)
                raise SimulatedRequestError(f"write of {key!r} lost before the server got it")
            commit = self.server.write(
                key, value, local_revision=local_revision, device_id=link.device_id
            )
            self._trace("commit", link.device_id, (key, commit.server_revision))
            await asyncio.sleep(self._delay(self.faults.request_latency))
            if self._chance(self.faults.fail_after_commit):
                self._trace("fail_after_commit", link.device_id, (key, commit.server_revision))
                raise SimulatedRequestError(
                    f"write of {key!r} committed as revision {commit.server_revision}, "
                    "but its response was lost",
                    commit,
                )
            self._trace("response", link.device_id, (key, commit.server_revision))
            return commit
        finally:
            self._in_flight[slot] -= 1

    async def _read(self, link: DeviceLink, key: Hashable) -> Commit | None:
        await asyncio.sleep(self._delay(self.faults.request_latency))
        commit = self.server.latest(key)
        await asyncio.sleep(self._delay(self.faults.request_latency))
        self._trace(
            "read", link.device_id, (key, None if commit is None else commit.server_revision)
        )
        return commit


class DeviceLink:
    """One device's connection: its requests to the server, and the pushes it receives.

    Made by :meth:`SimulatedNetwork.device`. Give your store :meth:`send_value`
    as its ``send_value_to_server``, and :meth:`connect` your push handler.

    Example:
        >>> from optisync import testing
        >>> async def main() -> None:
        ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
        ...     link = network.device(5)
        ...     send = link.send_value("k")
        ...     informed = []
        ...     commit = await send("v", 1, 5, informed.append)
        ...     print(commit.value, informed)
        >>> testing.run(main())
        v [1]
    """

    def __init__(
        self, network: SimulatedNetwork, device_id: int, push_latency: tuple[float, float]
    ) -> None:
        self.network = network
        self.device_id = device_id
        #: This device's push latency range, drawn from ``NetworkFaults.push_latency``.
        self.push_latency = push_latency
        #: Errors raised by the push handler; each broke the connection.
        self.push_errors: list[Exception] = []
        self._on_push: Callable[[Commit], object] | None = None
        self._connected = False
        self._closed = False
        self._generation = 0
        self._cursor = 0
        self._delivered: set[int] = set()

    @property
    def is_connected(self) -> bool:
        """Whether pushes reach the device now.

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.is_connected
            False
        """
        return self._connected

    @property
    def known_revision(self) -> int:
        """The revision up to which every commit reached the device: where a reconnect resumes.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).device(1).known_revision
            0
        """
        return self._cursor

    def connect(self, on_push: Callable[[Commit], object], *, since: int | None = None) -> None:
        """Receive every commit from now on with ``on_push(commit)``.

        With ``since``, first replay the commits after that revision (the device
        knows the server as of ``since``); without it, the device is assumed to
        know the server as it is now.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     server = testing.SimulatedServer()
            ...     _ = server.write("k", "old", local_revision=1, device_id=9)
            ...     link = testing.SimulatedNetwork(server).device(1)
            ...     link.connect(lambda c: print("got", c.value), since=0)
            ...     await link.network.settle()
            >>> testing.run(main())
            got old
        """
        if self._closed:
            raise RuntimeError(f"the link of device {self.device_id} is closed")
        self._on_push = on_push
        self._cursor = self.network.server.revision if since is None else since
        self._delivered = {r for r in self._delivered if r > self._cursor}
        self._open()

    def disconnect(self) -> None:
        """Stop receiving pushes (those on their way are lost); no automatic reconnect.

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.connect(print)
            >>> link.disconnect()
            >>> link.is_connected
            False
        """
        self._connected = False
        self._generation += 1

    def close(self) -> None:
        """Disconnect for good: for a device that is shut down.

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.close()
            >>> link.is_connected
            False
        """
        self._closed = True
        self.disconnect()

    def drop(self) -> None:
        """Break the connection, as the network would: it comes back after ``reconnect_delay``.

        Pushes on their way are lost; the reconnect replays every commit after
        :attr:`known_revision`.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     link = network.device(1)
            ...     link.connect(lambda c: None)
            ...     link.drop()
            ...     print(link.is_connected, end=" ")
            ...     await network.settle()
            ...     print(link.is_connected)
            >>> testing.run(main())
            False True
        """
        if not self._connected:
            return
        self.network._trace("drop", self.device_id)
        self.disconnect()
        generation = self._generation
        self.network._later(
            self.network._delay(self.network.faults.reconnect_delay), self._reconnect, generation
        )

    async def write(self, key: Hashable, value: object, *, local_revision: int) -> Commit:
        """Send a write; return its commit, or raise :class:`SimulatedRequestError`.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     print((await link.write("k", 42, local_revision=1)).value)
            >>> testing.run(main())
            42
        """
        return await self.network._write(self, key, value, local_revision)

    async def read(self, key: Hashable) -> Commit | None:
        """Fetch the commit that holds ``key``'s value now (reads never fail).

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     print(await link.read("k"))
            >>> testing.run(main())
            None
        """
        return await self.network._read(self, key)

    def send_value(self, key: Hashable) -> SendValue:
        """A ``send_value_to_server`` for ``key``: writes, informs the revision, returns the commit.

        The response given to ``apply_server_response_to_state`` is the
        :class:`~optisync.testing.Commit` (value and server revision).

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> send = link.send_value(("like", 7))
            >>> callable(send)
            True
        """

        async def send(
            value: Any,
            local_revision: int,
            device_id: int,
            inform_server_revision: Callable[[int], None],
        ) -> Commit:
            if device_id != self.device_id:
                raise ValueError(
                    f"the store's device id {device_id} is not its link's ({self.device_id})"
                )
            commit = await self.write(key, value, local_revision=local_revision)
            inform_server_revision(commit.server_revision)
            return commit

        return send

    # -- internals ---------------------------------------------------------------

    def _open(self) -> None:
        self._connected = True
        self._generation += 1
        self.network._trace("reconnect", self.device_id, self._cursor)
        for commit in self.network.server.commits_after(self._cursor):
            self.network._send_push(self, commit, may_drop=False)

    def _reconnect(self, generation: int) -> None:
        if self._closed or self._connected or generation != self._generation:
            return
        self._open()

    def _lose(self, commit: Commit, generation: int) -> None:
        if generation == self._generation and self._connected:
            self.network._trace("push_lost", self.device_id, commit.server_revision)
            self.drop()

    def _deliver(self, commit: Commit, generation: int) -> None:
        if generation != self._generation or not self._connected or self._on_push is None:
            return
        try:
            self._on_push(commit)
        except Exception as error:  # the device failed to take it: as good as lost
            self.push_errors.append(error)
            # The error as text: traces of two runs of one seed compare equal.
            failure = f"{type(error).__name__}: {error}"
            self.network._trace("push_error", self.device_id, (commit.server_revision, failure))
            self.drop()
            return
        self.network._trace("push", self.device_id, (commit.key, commit.server_revision))
        if commit.server_revision > self._cursor:
            self._delivered.add(commit.server_revision)
            while self._cursor + 1 in self._delivered:
                self._cursor += 1
                self._delivered.discard(self._cursor)
