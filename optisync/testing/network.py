"""A seeded, faulty network between a :class:`SimulatedServer` and its devices.

Every random choice (latencies, duplicated, dropped and failed messages) comes
from one ``random.Random(seed)``, drawn in the order the events happen on a
single-threaded event loop: the same seed and the same script give the same
run. Delays are ``asyncio`` timers, so on a
:class:`~optisync.testing.VirtualClockLoop` they cost no real time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

import attrs

from optisync.errors import (
    ArgumentTypeError,
    ClosedError,
    InvalidArgumentError,
    OptisyncError,
    StoreClosedError,
    TransportError,
)
from optisync.store import Store
from optisync.testing.server import Commit, SimulatedServer
from optisync.transport import Ack, PushListener, SyncRequest, checked_prefixes

__all__ = [
    "DeviceLink",
    "NetworkFaults",
    "SendValue",
    "SettleTimeoutError",
    "SimulatedNetwork",
    "SimulatedRequestError",
    "TraceEvent",
    "UnknownDeviceError",
]

logger = logging.getLogger("optisync.testing")

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


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    name = attribute.name
    if not isinstance(value, tuple):
        raise ArgumentTypeError(f"{name} must be a (low, high) tuple of seconds, got {value!r}")
    if len(value) != 2:
        raise InvalidArgumentError(
            f"{name} must be a (low, high) pair, got {len(value)} item(s): {value!r}"
        )
    if not all(_is_number(bound) for bound in value):
        raise ArgumentTypeError(f"{name} must hold two numbers of seconds, got {value!r}")
    low, high = value
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low <= high):
        raise InvalidArgumentError(
            f"{name} must be (low, high) with 0 <= low <= high < inf, got {value}"
        )


def _check_probability(instance: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not _is_number(value):
        raise ArgumentTypeError(f"{attribute.name} must be a number in [0, 1], got {value!r}")
    if not 0.0 <= value <= 1.0:
        raise InvalidArgumentError(f"{attribute.name} must be a probability in [0, 1], got {value}")


def _check_device_id(device_id: object) -> None:
    if not isinstance(device_id, int) or isinstance(device_id, bool):
        raise ArgumentTypeError(f"a device id must be an int, got {device_id!r}")


@attrs.frozen
class NetworkFaults:
    """What the network does wrong, and how often. The default is a perfect network.

    Latencies are ``(low, high)`` tuples of finite seconds, drawn uniformly;
    probabilities are numbers in ``[0, 1]``. Anything else raises a
    :class:`~optisync.ArgumentTypeError` (a ``TypeError``) or
    :class:`~optisync.InvalidArgumentError` (a ``ValueError``) that names the field.

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
        optisync.errors.InvalidArgumentError: drop_push must be a probability in [0, 1], got 2.0
        >>> NetworkFaults(request_latency=(0.5,))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optisync.errors.InvalidArgumentError: request_latency must be a (low, high) pair, ...(0.5,)
    """

    request_latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_check_range)
    push_latency: tuple[float, float] = attrs.field(default=(0.0, 0.0), validator=_check_range)
    duplicate_push: float = attrs.field(default=0.0, validator=_check_probability)
    drop_push: float = attrs.field(default=0.0, validator=_check_probability)
    reconnect_delay: tuple[float, float] = attrs.field(default=(0.1, 0.1), validator=_check_range)
    fail_before_commit: float = attrs.field(default=0.0, validator=_check_probability)
    fail_after_commit: float = attrs.field(default=0.0, validator=_check_probability)


class SimulatedRequestError(TransportError):
    """A simulated request failed: before the server committed it, or after.

    A :class:`~optisync.TransportError` (so a ``ConnectionError``), as a real
    transport raises when the connection is lost during a request.

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


class UnknownDeviceError(OptisyncError, KeyError):
    """No link on this network has that device id: make it with :meth:`SimulatedNetwork.device`.

    A ``KeyError``, but printed as a sentence rather than a quoted key.

    Example:
        >>> from optisync import testing
        >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
        >>> try:
        ...     network.requests_sent(3, "k")
        ... except KeyError as error:
        ...     print(type(error).__name__, error)
        UnknownDeviceError no device 3 on this network; its devices are []
    """

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class SettleTimeoutError(OptisyncError, AssertionError):
    """:meth:`SimulatedNetwork.settle` gave up: something is still running.

    An ``AssertionError``, so a test that did not settle fails rather than errors.

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
            ``"push_error"``, ``"drop"``, ``"connect"`` (a :meth:`DeviceLink.connect`),
            ``"reconnect"`` (after a drop), ``"close"``, ``"read"``.
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
        seed: the seed of every random choice: an ``int`` (``None`` would seed
            from the OS, and runs would no longer replay), else
            :class:`~optisync.ArgumentTypeError`.

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
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ArgumentTypeError(f"seed must be an int, so that a run replays; got {seed!r}")
        self.server = server
        self.faults = NetworkFaults() if faults is None else faults
        self._closed = False
        self.seed = seed
        self._rng = random.Random(seed)
        self._links: dict[int, DeviceLink] = {}
        # What each link lets the network do to it (pushes, losses): its half of the wire.
        self._ends: dict[int, _LinkSide] = {}
        self._pending: dict[asyncio.TimerHandle, None] = {}
        self._requests: dict[tuple[int, Hashable], int] = {}
        self._in_flight: dict[tuple[int, Hashable], int] = {}
        self._max_in_flight: dict[tuple[int, Hashable], int] = {}
        self.trace: list[TraceEvent] = []
        server.subscribe(self._push_to_all)

    # -- devices ---------------------------------------------------------------

    def device(self, device_id: int) -> DeviceLink:
        """Make the link of a new device (an ``int`` id); it is not connected to pushes yet.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.device(1).is_connected
            False
        """
        _check_device_id(device_id)
        self._check_open()
        if device_id in self._links:
            raise InvalidArgumentError(f"device {device_id} already has a link")
        low, high = self.faults.push_latency
        own = sorted((self._rng.uniform(low, high), self._rng.uniform(low, high)))
        wire = _NetworkSide(
            trace=self._trace,
            later=self._later,
            delay=self._delay,
            write=self._write,
            read=self._read,
            send_push=self._send_push,
            register=self._ends.__setitem__,
        )
        link = DeviceLink(self, device_id, (own[0], own[1]), wire)
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

        An id that has no link raises :class:`UnknownDeviceError` (a ``KeyError``:
        a typo must not read as 0).

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.device(1).device_id
            1
            >>> network.requests_sent(1, "k")
            0
            >>> network.requests_sent(2, "k")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            optisync.testing.network.UnknownDeviceError: no device 2 on this network; ... [1]
        """
        self._check_known(device_id)
        return self._requests.get((device_id, key), 0)

    def max_requests_in_flight(self, device_id: int, key: Hashable) -> int:
        """The most writes ``device_id`` ever had in flight at once for ``key``.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.max_requests_in_flight(network.device(1).device_id, "k")
            0
        """
        self._check_known(device_id)
        return self._max_in_flight.get((device_id, key), 0)

    def requests_in_flight(self, device_id: int, key: Hashable) -> int:
        """How many writes ``device_id`` has in flight for ``key`` right now.

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> network.requests_in_flight(network.device(1).device_id, "k")
            0
        """
        self._check_known(device_id)
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

    async def settle(
        self, *, max_time: float = 3600.0, ignore: Iterable[asyncio.Future[Any]] = ()
    ) -> None:
        """Wait until nothing is left: no other task, no push or reconnect pending.

        "Other task" means every task of the loop except the caller and those
        in ``ignore`` (say, your app's ``async for`` over ``store.stream()``,
        which only ends when the store closes), so call it from the coroutine
        that drives the scenario. Raises :class:`SettleTimeoutError` if that
        does not happen within ``max_time`` seconds of (virtual) time: a
        livelock, or a task that never ends. Its message names the tasks left,
        and the devices whose push handler keeps failing, with their last error.

        Example:
            >>> import asyncio
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     task = asyncio.create_task(asyncio.sleep(5))
            ...     forever = asyncio.create_task(asyncio.Event().wait())
            ...     await network.settle(ignore=[forever])
            ...     print(task.done(), forever.done(), asyncio.get_running_loop().time())
            ...     forever.cancel()
            >>> testing.run(main())
            True False 5.0
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_time
        me = asyncio.current_task()
        ignored = set(ignore)

        def others() -> list[asyncio.Task[Any]]:
            return [t for t in asyncio.all_tasks() if t is not me and t not in ignored]

        while True:
            running = others()
            left = deadline - loop.time()
            if left <= 0 and (running or self._pending):
                raise SettleTimeoutError(self._not_settled(max_time, running))
            if running:
                await asyncio.wait(running, timeout=left)
            elif self._pending:
                last = max(handle.when() for handle in self._pending)
                await asyncio.sleep(min(max(last - loop.time(), 0.0), left))
            else:
                # call_soon callbacks (task wake-ups, done callbacks) may still be
                # queued: give them a turn before declaring the network quiet.
                await asyncio.sleep(0)
                if not self._pending and not others():
                    return

    def _not_settled(self, max_time: float, running: list[asyncio.Task[Any]]) -> str:
        message = (
            f"not settled after {max_time}s: {len(running)} task(s) running, "
            f"{len(self._pending)} delivery(ies) pending"
        )
        for link in self._links.values():
            failing = self._ends[link.device_id].failing()
            if failing is not None and not link.is_closed:
                message += (
                    f"; device {link.device_id}'s push handler keeps failing "
                    f"({len(link.push_errors)} error(s), last: {failing})"
                )
        if running:
            message += f"; tasks: {running!r}"
        return message

    def close(self) -> None:
        """Close every link and cancel every pending push and reconnect, for good.

        A closed network refuses new devices, and its links refuse writes and
        connects (:class:`~optisync.ClosedError`, a ``RuntimeError``).

        Example:
            >>> from optisync import testing
            >>> network = testing.SimulatedNetwork(testing.SimulatedServer())
            >>> link = network.device(1)
            >>> network.close()
            >>> network.pending_deliveries, network.is_closed
            (0, True)
            >>> link.connect(print)
            Traceback (most recent call last):
            ...
            optisync.errors.ClosedError: the link of device 1 is closed
        """
        self._closed = True
        for link in self._links.values():
            link.close()
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` was called.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).is_closed
            False
        """
        return self._closed

    # -- internals used by DeviceLink -------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the network is closed")

    def _check_known(self, device_id: int) -> None:
        if device_id not in self._links:
            raise UnknownDeviceError(
                f"no device {device_id!r} on this network; its devices are {list(self._links)}"
            )

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
        end = self._ends[link.device_id]
        generation = end.generation()
        if may_drop and self._chance(self.faults.drop_push):
            self._later(self._delay(link.push_latency), end.lose, commit, generation)
            return
        self._later(self._delay(link.push_latency), end.deliver, commit, generation)
        if self._chance(self.faults.duplicate_push):
            self._later(self._delay(link.push_latency), end.deliver, commit, generation)

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

    Made by :meth:`SimulatedNetwork.device`. It is an
    ``optisync.transport.Transport`` (:meth:`send`, :meth:`get`,
    :meth:`subscribe_pushes`, :attr:`online`, :meth:`subscribe_status`,
    :meth:`caught_up`), so a store served by a transport runs on the
    simulator unchanged. For a store wired by hand, give it :meth:`send_value`
    as its ``send_value_to_server``, and :meth:`attach` it with its push
    handler (or :meth:`connect` any push handler).

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
        self,
        network: SimulatedNetwork,
        device_id: int,
        push_latency: tuple[float, float],
        wire: _NetworkSide,
    ) -> None:
        self.network = network
        self._wire = wire
        self._device_id = device_id
        #: This device's push latency range, drawn from ``NetworkFaults.push_latency``.
        self.push_latency = push_latency
        #: Errors raised by the push handler; each broke the connection.
        self.push_errors: list[Exception] = []
        self._on_push: Callable[[Commit], object] | None = None
        self._ever_connected = False
        # The last push error, as text, while the handler keeps failing.
        self._failing: str | None = None
        self._connected = False
        self._closed = False
        self._generation = 0
        self._cursor = 0
        self._delivered: set[int] = set()
        # Partial sync: the prefixes handed over (None: every key); while keys
        # newly in scope are owed, the prefixes the device had before (None:
        # nothing owed): what is in scope now and was not then is owed.
        self._prefixes: tuple[str, ...] | None = None
        self._had: tuple[str, ...] | None = None
        self._tokens = itertools.count()
        self._push_listeners: dict[int, PushListener] = {}
        self._status_listeners: dict[int, Callable[[bool], object]] = {}
        # One future per write in flight, done when the write ends: what caught_up waits for.
        self._writes: set[asyncio.Future[None]] = set()
        # caught_up's waiters, woken whenever known_revision moves or the link closes.
        self._progress: list[asyncio.Future[None]] = []
        wire.connect_link(
            _LinkSide(
                generation=lambda: self._generation,
                failing=lambda: self._failing,
                lose=self._lose,
                deliver=self._deliver,
            ),
            device_id,
        )

    @property
    def device_id(self) -> int:
        """The device id the server knows this link by; the store using it must have the same.

        Example:
            >>> from optisync import testing
            >>> testing.SimulatedNetwork(testing.SimulatedServer()).device(4).device_id
            4
        """
        return self._device_id

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

    @property
    def is_closed(self) -> bool:
        """Whether the link (or its network) was closed: it then refuses writes and connects.

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.close()
            >>> link.is_closed
            True
        """
        return self._closed

    def connect(self, on_push: Callable[[Commit], object], *, since: int | None = None) -> None:
        """Receive pushes with ``on_push(commit)``; it replaces any earlier handler.

        Where the pushes start:

        - ``since=None`` on the first connect: from now on (the device is
          assumed to know the server as it is now).
        - ``since=None`` on a later connect (an app restart, a new handler):
          from :attr:`known_revision`. Pushes that were on their way to the
          old handler are replayed to the new one: none is lost.
        - ``since=revision`` (``0 <= revision <= server.revision``): the device
          knows the server as of ``revision``; every commit after it is
          replayed first.

        If ``on_push`` raises, the push counts as lost (see :attr:`push_errors`)
        and the connection breaks and comes back, replaying it; if it raises
        :class:`optisync.StoreClosedError`, the store is gone and the link
        closes instead. Raises :class:`~optisync.ArgumentTypeError` for a
        handler that is not callable, :class:`~optisync.InvalidArgumentError`
        for a ``since`` out of range, and :class:`~optisync.ClosedError` on a
        closed link.

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
        self._check_open()
        if not callable(on_push):
            raise ArgumentTypeError(f"on_push must be callable, got {on_push!r}")
        self._check_since(since)
        self._on_push = on_push
        self._start(since)

    def attach(
        self, store: Store[Any], on_push: Callable[[Commit], object], *, since: int | None = None
    ) -> None:
        """Wire ``store`` as this device: connect ``on_push`` to pushes, for as long as it is open.

        Checks that ``store.device_id`` is the link's
        (:class:`~optisync.InvalidArgumentError` otherwise: the store would take
        its own writes' echoes for other devices'), then connects ``on_push``
        (see :meth:`connect`, ``since`` included). Once the store is closed,
        the next push closes the link instead of failing on the closed store. Give
        the store :meth:`send_value` as its ``send_value_to_server``.

        Example:
            >>> from optisync import Store, testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     phone, other = network.device(1), network.device(2)
            ...     store = Store(0, device_id=1)
            ...     phone.attach(store, lambda commit: store.emit(commit.value))
            ...     await other.write("k", 5, local_revision=1)
            ...     await network.settle()
            ...     print(store.state, end=" ")
            ...     await store.close()
            ...     await other.write("k", 6, local_revision=2)
            ...     await network.settle()
            ...     print(phone.is_closed)
            >>> testing.run(main())
            5 True
        """
        if store.device_id != self.device_id:
            raise InvalidArgumentError(
                f"the store's device id {store.device_id!r} is not its link's ({self.device_id})"
            )
        if not callable(on_push):
            raise ArgumentTypeError(f"on_push must be callable, got {on_push!r}")

        def deliver(commit: Commit) -> object:
            if store.is_closed:
                self.close()
                return None
            return on_push(commit)

        self.connect(deliver, since=since)

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
        if self._cut():
            self._notify_status()

    def close(self) -> None:
        """Disconnect for good, for a device that is shut down: later writes and
        connects raise :class:`~optisync.ClosedError` (reads still work).

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.close()
            >>> link.is_connected
            False
            >>> link.connect(print)
            Traceback (most recent call last):
            ...
            optisync.errors.ClosedError: the link of device 1 is closed
        """
        if not self._closed:
            self._closed = True
            self._wire.trace("close", self.device_id)
            self._wake_caught_up()  # they raise ClosedError
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
        self._wire.trace("drop", self.device_id)
        self._cut()
        generation = self._generation
        self._wire.later(
            self._wire.delay(self.network.faults.reconnect_delay), self._reconnect, generation
        )
        self._notify_status()

    async def write(self, key: Hashable, value: object, *, local_revision: int) -> Commit:
        """Send a write; return its commit, or raise :class:`SimulatedRequestError`.

        Raises :class:`~optisync.ClosedError` on a closed link.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     print((await link.write("k", 42, local_revision=1)).value)
            >>> testing.run(main())
            42
        """
        self._check_open()
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writes.add(finished)
        try:
            return await self._wire.write(self, key, value, local_revision)
        finally:
            self._writes.discard(finished)
            finished.set_result(None)

    async def read(self, key: Hashable) -> Commit | None:
        """Fetch the commit that holds ``key``'s value now (reads never fail).

        Reads change nothing, so a closed link still serves them: an app may
        refresh its state after its push channel is gone.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     print(await link.read("k"))
            >>> testing.run(main())
            None
        """
        return await self._wire.read(self, key)

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
                raise InvalidArgumentError(
                    f"the store's device id {device_id} is not its link's ({self.device_id})"
                )
            commit = await self.write(key, value, local_revision=local_revision)
            inform_server_revision(commit.server_revision)
            return commit

        return send

    # -- the Transport contract ----------------------------------------------------

    async def send(self, key: str, value: Any, request: SyncRequest) -> Ack[Any]:
        """Write ``value`` at wire ``key`` with ``request.local_revision``; return the server's Ack.

        The ``Ack`` holds the commit's server revision
        and the value the server stores. A delete is the value
        :data:`~optisync.DELETED`: the simulated server keeps it as the key's
        value (a tombstone, last write wins), pushes and replays it, and
        :meth:`get` reads it back, as a real server does. Raises :class:`SimulatedRequestError`
        (a ``ConnectionError``) when the network loses the write, before or
        after the commit, as :meth:`write` does, and when the link is
        offline: connected once, and not :attr:`online` now (after
        :meth:`disconnect`, or a drop until the reconnect). Such a write never
        reaches the server, as with a real transport that cannot reach it. A
        link never connected sends as :meth:`write` does (a device that only
        makes requests). It raises :class:`~optisync.InvalidArgumentError` if
        ``request.device_id`` is not the link's,
        :class:`~optisync.ArgumentTypeError` for a key that is not a ``str``,
        and :class:`~optisync.ClosedError` on a closed link.

        Example:
            >>> from optisync import testing
            >>> from optisync.transport import SyncRequest
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     request = SyncRequest("theme", local_revision=1, device_id=1)
            ...     print(await link.send("theme", "dark", request))
            >>> testing.run(main())
            Ack(server_revision=1, value='dark')
        """
        if not isinstance(key, str):
            raise ArgumentTypeError(f"a wire key must be a str, got {key!r}")
        if not isinstance(request, SyncRequest):
            raise ArgumentTypeError(f"request must be a SyncRequest, got {request!r}")
        if request.device_id != self.device_id:
            raise InvalidArgumentError(
                f"the request's device id {request.device_id!r} is not its link's "
                f"({self.device_id})"
            )
        self._check_open()
        if self._ever_connected and not self._connected:
            raise SimulatedRequestError(
                f"device {self.device_id} is offline: the write of {key!r} was not sent"
            )
        commit = await self.write(key, value, local_revision=request.local_revision)
        return Ack(commit.server_revision, commit.value)

    async def get(self, key: str) -> tuple[Any, int]:
        """The server's value of wire ``key`` and its revision; ``(None, -1)`` if never written.

        Like :meth:`read`, it never fails and works on a closed link.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     print(await link.get("theme"), end=" ")
            ...     _ = await link.write("theme", "dark", local_revision=1)
            ...     print(await link.get("theme"))
            >>> testing.run(main())
            (None, -1) ('dark', 1)
        """
        commit = await self.read(key)
        return (None, -1) if commit is None else (commit.value, commit.server_revision)

    def subscribe_pushes(self, listener: PushListener) -> Callable[[], None]:
        """Call ``listener(key, value, metadata)`` for every push the device receives.

        Every push, replayed or live, goes to the :meth:`connect` handler (if
        any) and then to each listener, in the order they subscribed;
        ``metadata`` is the commit's :class:`~optisync.PushMetadata` and
        ``key`` the key as written (a wire key, for writes made with
        :meth:`send`). A listener that subscribes later gets the pushes
        delivered from then on.

        Subscribing is how a store served by this transport receives pushes:
        on a link that was never connected, it connects it, as
        ``connect(handler)`` would (from the server's revision now). A
        listener that raises is a failed delivery, as a failing handler is:
        the error goes to :attr:`push_errors`, the connection drops and the
        reconnect replays the push to everyone; a
        :class:`~optisync.StoreClosedError` closes the link instead.

        Returns a function that unsubscribes the listener (calling it twice
        is harmless). Raises :class:`~optisync.ArgumentTypeError` for a
        listener that is not callable, :class:`~optisync.ClosedError` on a
        closed link.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     phone, laptop = network.device(1), network.device(2)
            ...     stop = phone.subscribe_pushes(lambda key, value, meta: print(key, value, meta))
            ...     _ = await laptop.write("theme", "dark", local_revision=7)
            ...     await network.settle()
            ...     stop()
            >>> testing.run(main())
            theme dark PushMetadata(server_revision=1, local_revision=7, device_id=2)
        """
        if not callable(listener):
            raise ArgumentTypeError(f"listener must be callable, got {listener!r}")
        self._check_open()
        token = next(self._tokens)
        self._push_listeners[token] = listener
        if not self._ever_connected:
            self._start(None)

        def unsubscribe() -> None:
            self._push_listeners.pop(token, None)

        return unsubscribe

    @property
    def online(self) -> bool:
        """Whether the link is connected now: pushes reach the device (as :attr:`is_connected`).

        Example:
            >>> from optisync import testing
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> link.online, link.subscribe_pushes(print) is not None, link.online
            (False, True, True)
        """
        return self._connected

    def subscribe_status(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        """Call ``listener(online)`` on every change of :attr:`online`; returns an unsubscribe.

        Changes are a connect (the first one, or after :meth:`disconnect`), a
        drop (:meth:`drop`, a lost push, a failed delivery), a reconnect and
        :meth:`close`. Listeners are called in order, right after the link
        changed; one that raises is reported to the running loop's exception
        handler (logged, outside a loop) and does not stop the others.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     link = network.device(1)
            ...     seen: list[bool] = []
            ...     _ = link.subscribe_status(seen.append)
            ...     _ = link.subscribe_pushes(lambda *push: None)
            ...     link.drop()
            ...     await network.settle()
            ...     link.close()
            ...     print(seen)
            >>> testing.run(main())
            [True, False, True, False]
        """
        if not callable(listener):
            raise ArgumentTypeError(f"listener must be callable, got {listener!r}")
        token = next(self._tokens)
        self._status_listeners[token] = listener

        def unsubscribe() -> None:
            self._status_listeners.pop(token, None)

        return unsubscribe

    async def caught_up(self) -> None:
        """Wait until this link's writes so far have ended and the server's head has arrived.

        Returns once every write the link started before the call has
        finished (acknowledged or failed) and every commit up to the server's
        revision at the call has reached the device (:attr:`known_revision`
        is at least that revision). While the link is disconnected it waits
        for the reconnect, whose replay brings the missing commits. Raises
        :class:`~optisync.ClosedError` if the link is closed before then.
        Cancelling it cancels nothing else.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     faults = testing.NetworkFaults(push_latency=(1.0, 1.0))
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer(), faults=faults)
            ...     phone, laptop = network.device(1), network.device(2)
            ...     _ = phone.subscribe_pushes(lambda *push: None)
            ...     _ = await laptop.write("k", 1, local_revision=1)
            ...     print(phone.known_revision, end=" ")
            ...     await phone.caught_up()
            ...     print(phone.known_revision)
            >>> testing.run(main())
            0 1
        """
        target = self.network.server.revision
        writes = tuple(self._writes)
        if writes:
            await asyncio.wait(writes)
        while self._cursor < target:
            if self._closed:
                raise ClosedError(
                    f"the link of device {self.device_id} was closed before it caught up "
                    f"with revision {target} (it knows {self._cursor})"
                )
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._progress.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._progress:
                    self._progress.remove(waiter)

    # -- partial sync --------------------------------------------------------------

    def use_prefixes(self, prefixes: Iterable[str] | None) -> None:
        """Hand over only the pushes of keys starting with one of ``prefixes`` (None: all).

        As the server does for ``SyncClient``: a ``str`` key matches a prefix
        as a plain string prefix (any other key only with None), the cursor
        moves past the commits not handed over, and a prefix added once the
        link has connected brings its keys' newest commits the device has
        passed, at once (at the reconnect, if the link is down). Raises
        :class:`~optisync.InvalidArgumentError` or
        :class:`~optisync.ArgumentTypeError` for prefixes a server would refuse.

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
            ...     phone, laptop = network.device(1), network.device(2)
            ...     phone.use_prefixes(["a/"])
            ...     _ = phone.subscribe_pushes(lambda key, value, meta: print(key, value))
            ...     _ = await laptop.write("a/x", 1, local_revision=1)
            ...     _ = await laptop.write("b/y", 2, local_revision=1)
            ...     await network.settle()
            ...     phone.use_prefixes(["a/", "b/"])
            >>> testing.run(main())
            a/x 1
            b/y 2
        """
        old, self._prefixes = self._prefixes, checked_prefixes(prefixes)
        if not self._ever_connected or old is None:
            return  # nothing passed yet, or every key handed over already
        if self._had is None:
            self._had = old
        if self._connected:
            self._hand_over_owed()

    async def subscribe(self, prefixes: Iterable[str] | None) -> None:
        """As :meth:`use_prefixes` (the keys newly in scope are handed over before it returns).

        Example:
            >>> from optisync import testing
            >>> async def main() -> None:
            ...     link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            ...     await link.subscribe(["shared/"])
            >>> testing.run(main())
        """
        self.use_prefixes(prefixes)

    def _in_scope(self, key: Hashable, prefixes: tuple[str, ...] | None) -> bool:
        if prefixes is None:
            return True
        return isinstance(key, str) and key.startswith(prefixes)

    def _hand_over_owed(self) -> None:
        """Hand over each owed key's newest commit among those the link has passed."""
        had, generation = self._had, self._generation
        if had is None:
            return
        passed = [
            commit
            for commit in self.network.server.log
            if commit.server_revision <= self._cursor or commit.server_revision in self._delivered
        ]
        newest = {commit.key: commit for commit in passed}
        for commit in sorted(newest.values(), key=lambda c: c.server_revision):
            if not self._in_scope(commit.key, had):
                self._deliver(commit, generation)  # handed over if in scope now
            if generation != self._generation or not self._connected:
                return  # dropped: the rest is owed at the reconnect
        self._had = None

    # -- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self.network.is_closed:
            raise ClosedError(f"the link of device {self.device_id} is closed")

    def _check_since(self, since: int | None) -> None:
        if since is None:
            return
        if not isinstance(since, int) or isinstance(since, bool):
            raise ArgumentTypeError(f"since must be an int revision, got {since!r}")
        revision = self.network.server.revision
        if not 0 <= since <= revision:
            raise InvalidArgumentError(
                f"since={since} is not a revision of the server: it must be in [0, {revision}]"
            )

    def _start(self, since: int | None) -> None:
        """Connect as :meth:`connect` does, once the receivers are in place."""
        if since is not None or not self._ever_connected:
            self._cursor = self.network.server.revision if since is None else since
            self._delivered = {r for r in self._delivered if r > self._cursor}
            self._wake_caught_up()
        self._ever_connected = True
        # _open starts a new generation: pushes on their way to the old handler
        # are dropped, and replayed from the cursor to the new one.
        self._open("connect")

    def _open(self, kind: str) -> None:
        was_online = self._connected
        self._connected = True
        self._generation += 1
        self._wire.trace(kind, self.device_id, self._cursor)
        for commit in self.network.server.commits_after(self._cursor):
            self._wire.send_push(self, commit, may_drop=False)
        self._hand_over_owed()
        if not was_online:
            self._notify_status()

    def _cut(self) -> bool:
        """Stop pushes on their way (a new generation); return whether the link was online."""
        was_online = self._connected
        self._connected = False
        self._generation += 1
        return was_online

    def _notify_status(self) -> None:
        # Called last by whatever changed the status, so that a listener sees
        # the link in its new state and cannot leave it half changed.
        online = self._connected
        for listener in tuple(self._status_listeners.values()):
            try:
                listener(online)
            except Exception as error:  # one listener's bug must not break the network
                _report(f"a status listener of device {self.device_id} raised", error)

    def _wake_caught_up(self) -> None:
        waiters, self._progress = self._progress, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _hand_over(self, commit: Commit) -> None:
        """Give ``commit`` to the handler, then to each push listener, in order."""
        if not self._in_scope(commit.key, self._prefixes):
            return  # outside the subscription: passed, not handed over
        if self._on_push is not None:
            self._on_push(commit)
        # A listener's key is a wire key: a str for every write made with send().
        key: Any = commit.key
        for listener in tuple(self._push_listeners.values()):
            if self._closed:
                return  # the handler closed the link (attach's closed store)
            listener(key, commit.value, commit.push_metadata)

    def _reconnect(self, generation: int) -> None:
        if self._closed or self._connected or generation != self._generation:
            return
        self._open("reconnect")

    def _lose(self, commit: Commit, generation: int) -> None:
        if generation == self._generation and self._connected:
            self._wire.trace("push_lost", self.device_id, commit.server_revision)
            self.drop()

    def _deliver(self, commit: Commit, generation: int) -> None:
        if generation != self._generation or not self._connected:
            return
        try:
            self._hand_over(commit)
        except Exception as error:  # the device failed to take it: as good as lost
            self.push_errors.append(error)
            # The error as text: traces of two runs of one seed compare equal.
            failure = f"{type(error).__name__}: {error}"
            self._failing = failure
            self._wire.trace("push_error", self.device_id, (commit.server_revision, failure))
            if isinstance(error, StoreClosedError):
                self.close()  # the store is gone: replaying would fail forever
            else:
                self.drop()
            return
        self._failing = None
        if self._closed:
            return  # the handler closed the link (attach's closed store): not received
        self._wire.trace("push", self.device_id, (commit.key, commit.server_revision))
        if commit.server_revision > self._cursor:
            self._delivered.add(commit.server_revision)
            while self._cursor + 1 in self._delivered:
                self._cursor += 1
                self._delivered.discard(self._cursor)
            self._wake_caught_up()


def _report(message: str, error: Exception) -> None:
    """Hand ``error`` to the running loop's exception handler (it logs), else log it."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.error(message, exc_info=error)
        return
    loop.call_exception_handler({"message": message, "exception": error})


# -- the two halves of the wire between a network and its links ---------------------
# Each side hands the other the few operations it needs, so neither reaches into
# the other's private members.


@attrs.frozen
class _LinkSide:
    """What the network does to one link: deliver or lose a push, read its state."""

    generation: Callable[[], int]
    failing: Callable[[], str | None]
    lose: Callable[[Commit, int], None]
    deliver: Callable[[Commit, int], None]


@attrs.frozen
class _NetworkSide:
    """What a link asks of its network: timers, traces, requests and replays."""

    trace: Callable[..., None]
    later: Callable[..., None]
    delay: Callable[[tuple[float, float]], float]
    write: Callable[[DeviceLink, Hashable, object, int], Awaitable[Commit]]
    read: Callable[[DeviceLink, Hashable], Awaitable[Commit | None]]
    send_push: Callable[..., None]
    register: Callable[[int, _LinkSide], None]

    def connect_link(self, end: _LinkSide, device_id: int) -> None:
        self.register(device_id, end)
