"""A server whose every request waits until the test answers it, and a test store.

Tests drive time by answering requests, never by sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs

from optisync import PushMetadata, PushOutcome, Store

KEY = ("like", "post")


@attrs.frozen
class Doc:
    """A liked flag and the server revision the app stored for it."""

    liked: bool = False
    revision: int = -1


@attrs.define(eq=False)
class Request:
    """One request the store sent; the test answers it."""

    value: Any
    local_revision: int
    device_id: int
    inform: Callable[[int], None] | None
    reply: asyncio.Future[tuple[Any, Any]]

    def respond(self, response: Any, server_revision: int | None = None) -> None:
        """Succeed; inform ``server_revision`` first unless it is None."""
        self.reply.set_result((server_revision, response))

    def fail(self, error: BaseException) -> None:
        self.reply.set_exception(error)


class FakeServer:
    """Records requests; each one waits for the test to respond or fail it."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    @property
    def log(self) -> list[tuple[Any, int]]:
        """(value, local_revision) of every request, in order."""
        return [(r.value, r.local_revision) for r in self.requests]

    async def send(
        self, value: Any, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> Any:
        revision, response = await self._record(value, local_revision, device_id, inform)
        if revision is not None:
            inform(revision)
        return response

    async def send_value(self, value: Any) -> Any:
        """The send function of ``optimistic_sync``: no revisions."""
        _, response = await self._record(value, 0, 0, None)
        return response

    def _record(
        self, value: Any, local_revision: int, device_id: int, inform: Callable[[int], None] | None
    ) -> asyncio.Future[tuple[Any, Any]]:
        reply: asyncio.Future[tuple[Any, Any]] = asyncio.get_running_loop().create_future()
        self.requests.append(Request(value, local_revision, device_id, inform, reply))
        for count, waiter in self._waiters:
            if len(self.requests) >= count and not waiter.done():
                waiter.set_result(None)
        return reply

    async def request(self, number: int) -> Request:
        """Wait until request ``number`` (1-based) has arrived, and return it."""
        if len(self.requests) < number:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((number, waiter))
            async with asyncio.timeout(10):  # a guard against a hung test, not a timing check
                await waiter
        return self.requests[number - 1]


class DocStore(Store[Doc]):
    """A store with one liked flag; each method is an action an app would write."""

    def __init__(
        self,
        server: FakeServer,
        *,
        device_id: int = 1,
        eager_start: bool = False,
        local_revision_base: int = 0,
    ) -> None:
        super().__init__(
            Doc(),
            device_id=device_id,
            eager_start=eager_start,
            local_revision_base=local_revision_base,
        )
        self.server = server
        self.errors: list[BaseException] = []
        self.finished: list[BaseException | None] = []

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)

    def record_finish(self, error: BaseException | None) -> None:
        self.finished.append(error)

    def toggle(self, **overrides: Any) -> Awaitable[None]:
        return self.set_liked(not self.state.liked, **overrides)

    def set_liked(self, liked: bool, **overrides: Any) -> Awaitable[None]:
        arguments: dict[str, Any] = {
            "key": KEY,
            "value_to_apply": lambda: liked,
            "apply_optimistic_value_to_state": lambda s, v: attrs.evolve(s, liked=v),
            "get_value_from_state": lambda s: s.liked,
            "send_value_to_server": self.server.send,
            "get_server_revision_from_state": lambda key: self.state.revision,
            "apply_server_response_to_state": lambda s, v: attrs.evolve(s, liked=v),
            "on_finish": self.record_finish,
        }
        arguments.update(overrides)
        return self.optimistic_sync_with_push(**arguments)

    def push(
        self, liked: bool, server_revision: int, local_revision: int = 1, device_id: int = 2
    ) -> PushOutcome:
        return self.server_push(
            key=KEY,
            push_metadata=PushMetadata(
                server_revision=server_revision,
                local_revision=local_revision,
                device_id=device_id,
            ),
            apply_server_push_to_state=lambda s, k, r: attrs.evolve(s, liked=liked, revision=r),
            get_server_revision_from_state=lambda key: self.state.revision,
        )

    def sync_liked(self, liked: bool, **overrides: Any) -> Awaitable[None]:
        """The same flag through ``optimistic_sync`` (no revisions)."""
        arguments: dict[str, Any] = {
            "key": KEY,
            "value_to_apply": lambda: liked,
            "apply_optimistic_value_to_state": lambda s, v: attrs.evolve(s, liked=v),
            "get_value_from_state": lambda s: s.liked,
            "send_value_to_server": self.server.send_value,
            "apply_server_response_to_state": lambda s, v: attrs.evolve(s, liked=v),
            "on_finish": self.record_finish,
        }
        arguments.update(overrides)
        return self.optimistic_sync(**arguments)


async def settle(store: Store[Any], key: Hashable = KEY) -> None:
    """Let the loop run until ``key`` is no longer syncing (bounded: fails if stuck)."""
    for _ in range(1000):
        if not store.is_syncing(key):
            # One more turn, so that on_finish (after the lock) has run too.
            for _ in range(3):
                await asyncio.sleep(0)
            return
        await asyncio.sleep(0)
    raise AssertionError(f"key {key!r} still syncing after 1000 loop turns")


def own_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than the running test's."""
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]
