"""The in-process simulated server: the demo's default backend.

It holds one record (value, server revision, last writer), commits a request
the moment it arrives, pushes the change to subscribers when pushes are on,
and answers after ``latency`` seconds. How it waits is injectable, so tests
hold every response at a gate (:class:`Gate`) instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from examples.tui.backend import RequestFailedError, ServerRecord

__all__ = ["DEFAULT_LATENCY", "OTHER_DEVICE_ID", "Gate", "SimulatedServer", "Wait"]

DEFAULT_LATENCY = 2.0
OTHER_DEVICE_ID = 7

Wait = Callable[[float], Awaitable[None]]
"""``async (seconds) -> None``: how a server waits out its latency."""


class _Listeners:
    """Callbacks by token, called in subscription order."""

    def __init__(self) -> None:
        self._by_token: dict[int, Callable[[ServerRecord], object]] = {}
        self._next = 0

    def add(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        token = self._next
        self._next += 1
        self._by_token[token] = listener

        def unsubscribe() -> None:
            self._by_token.pop(token, None)

        return unsubscribe

    def call(self, record: ServerRecord) -> None:
        for listener in list(self._by_token.values()):
            listener(record)


class SimulatedServer:
    """A server in this process, implementing :class:`~examples.tui.backend.Backend`.

    Args:
        record: what the database holds at start.
        latency: seconds a response (or a read) takes to come back.
        wait: how to wait ``latency`` seconds; ``asyncio.sleep`` by default,
            a :class:`Gate` in tests.

    Example:
        >>> import asyncio
        >>> async def main() -> None:
        ...     server = SimulatedServer(latency=0)
        ...     server.subscribe_pushes(lambda r: print("push", r.liked, r.revision))
        ...     record = await server.write(True, local_revision=1, device_id=5)
        ...     print("response", record.revision, server.database.device_id)
        >>> asyncio.run(main())
        push True 1
        response 1 5
    """

    def __init__(
        self,
        record: ServerRecord | None = None,
        *,
        latency: float = DEFAULT_LATENCY,
        wait: Wait = asyncio.sleep,
    ) -> None:
        self._record = ServerRecord() if record is None else record
        self.latency = latency
        self.push_enabled = True
        self.fail_next_request = False
        self.requests = 0
        self._wait = wait
        self._pushes = _Listeners()
        self._watchers = _Listeners()
        self._other_local_revision = 0

    @property
    def database(self) -> ServerRecord:
        """What the database holds now."""
        return self._record

    @property
    def other_device_id(self) -> int:
        """The id of the simulated other device."""
        return OTHER_DEVICE_ID

    @property
    def description(self) -> str:
        """Says it is the simulated server, in this process."""
        return "simulated server (in this process)"

    def subscribe_pushes(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Push every committed change to ``listener`` while pushes are on."""
        return self._pushes.add(listener)

    def watch_database(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Tell ``listener`` about every committed change."""
        return self._watchers.add(listener)

    async def write(self, liked: bool, *, local_revision: int, device_id: int) -> ServerRecord:
        """Commit now, answer after the latency; fail instead if that was asked for."""
        self.requests += 1
        fails = self.fail_next_request
        self.fail_next_request = False
        record = None if fails else self._commit(liked, local_revision, device_id)
        await self._wait(self.latency)
        if record is None:
            raise RequestFailedError(f"request {self.requests} failed (simulated)")
        return record

    async def read(self) -> ServerRecord:
        """Answer with the record after the latency."""
        await self._wait(self.latency)
        return self._record

    async def write_as_other_device(self, liked: bool) -> ServerRecord:
        """Commit a write of the other device, at once."""
        self._other_local_revision += 1
        return self._commit(liked, self._other_local_revision, OTHER_DEVICE_ID)

    async def start(self) -> None:
        """Nothing to connect to."""

    async def aclose(self) -> None:
        """Forget every listener."""
        self._pushes = _Listeners()
        self._watchers = _Listeners()

    def _commit(self, liked: bool, local_revision: int, device_id: int) -> ServerRecord:
        self._record = ServerRecord(
            liked=liked,
            revision=self._record.revision + 1,
            device_id=device_id,
            local_revision=local_revision,
        )
        self._watchers.call(self._record)
        if self.push_enabled:
            self._pushes.call(self._record)
        return self._record


class Gate:
    """A ``wait`` for :class:`SimulatedServer` that holds each wait until released.

    Tests use it to decide when a response arrives, without sleeping.

    Example:
        >>> import asyncio
        >>> async def main() -> None:
        ...     gate = Gate()
        ...     server = SimulatedServer(wait=gate)
        ...     task = asyncio.create_task(server.read())
        ...     await gate.wait_for_held(1)
        ...     gate.release()
        ...     print((await task).revision)
        >>> asyncio.run(main())
        0
    """

    def __init__(self) -> None:
        self._held: list[asyncio.Future[None]] = []
        self._changed = asyncio.Event()

    @property
    def held(self) -> int:
        """How many waits are held now."""
        return len(self._held)

    async def __call__(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self._held.append(future)
        self._changed.set()
        try:
            await future
        finally:
            if future in self._held:
                self._held.remove(future)

    async def wait_for_held(self, count: int) -> None:
        """Return once at least ``count`` waits are held."""
        while len(self._held) < count:
            self._changed.clear()
            await self._changed.wait()

    def release(self) -> None:
        """Let the oldest held wait return."""
        self._held.pop(0).set_result(None)
