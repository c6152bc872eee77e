"""``optimistic_command``: a one-shot action shown at once, rolled back if it fails.

Reached through :meth:`Store.optimistic_command <optisync.Store.optimistic_command>`;
this module holds its logic, on the engine's interface. Unlike the two sync
strategies there is no value to converge on, so nothing is coalesced or sent
again: one command per key runs at a time, and a second call while it runs
is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

from optisync._engine import SyncEngine
from optisync._loop import report
from optisync._tasks import CycleResult
from optisync._types import OnFinish
from optisync._validate import check_call, check_key
from optisync.errors import CommandInProgressError

__all__ = ["roll_back_unless_moved_on"]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

RollbackState = Callable[[S, T, T, Exception], "S | None"]


def roll_back_unless_moved_on(
    get_value_from_state: Callable[[S], T],
    apply_value_to_state: Callable[[S, T], S],
) -> RollbackState[S, T]:
    """The default ``rollback_state``: restore the value from before the command.

    It rolls back only while the value in the state is still the one the
    command applied: if anything changed it since (another action, a push),
    that change is newer than the command's and stays.

    Examples:
        >>> from optisync import roll_back_unless_moved_on
        >>> rollback = roll_back_unless_moved_on(lambda s: s, lambda s, v: v)
        >>> rollback(["a", "b"], ["a"], ["a", "b"], OSError("offline"))  # unchanged
        ['a']
        >>> rollback(["a", "c"], ["a"], ["a", "b"], OSError("offline")) is None  # moved on
        True
    """

    def rollback_state(state: S, initial: T, optimistic: T, error: Exception) -> S | None:
        if get_value_from_state(state) != optimistic:
            return None
        return apply_value_to_state(state, initial)

    return rollback_state


class Command(NamedTuple, Generic[S, T, R]):
    """The arguments of one ``optimistic_command`` call."""

    key: Hashable
    value_to_apply: Callable[[], T]
    apply_optimistic_value_to_state: Callable[[S, T], S]
    get_value_from_state: Callable[[S], T]
    send_command_to_server: Callable[[T], Awaitable[R | None]]
    apply_server_response_to_state: Callable[[S, R], S] | None
    rollback_state: RollbackState[S, T] | None
    reload_from_server: Callable[[], Awaitable[T]] | None
    on_finish: OnFinish[S] | None


def start(engine: SyncEngine[S], call: Command[S, T, R]) -> CycleResult:
    """Apply the command's value, take the key's lock and run the command in a task."""
    check_key(call.key)
    check_call(call)
    key_state = engine.keys.get(call.key)
    if key_state is not None and key_state.locked:
        raise CommandInProgressError(call.key)
    initial = call.get_value_from_state(engine.host.state)
    key_state, optimistic, _ = engine.take_lock(
        call.key, call.value_to_apply, call.apply_optimistic_value_to_state, command=True
    )
    requests = _CommandRequest(engine, call, initial, optimistic)
    return engine.start_cycle(call.key, key_state, call.on_finish, requests)


class _CommandRequest(Generic[S, T, R]):
    """One command: one request; on failure, roll back and maybe reload."""

    __slots__ = ("call", "engine", "initial", "optimistic")

    def __init__(
        self, engine: SyncEngine[S], call: Command[S, T, R], initial: T, optimistic: T
    ) -> None:
        self.engine = engine
        self.call = call
        self.initial = initial
        self.optimistic = optimistic

    def first(self) -> Awaitable[R | None]:
        return self.call.send_command_to_server(self.optimistic)

    def request_done(self) -> None:
        pass

    def next(self, response: R | None) -> None:
        host = self.engine.host
        if host.is_closed:  # close() was called from inside the command
            raise asyncio.CancelledError
        apply = self.call.apply_server_response_to_state
        if response is not None and apply is not None:
            host.emit(apply(host.state, response))

    def failed(self, error: Exception) -> Awaitable[None] | None:
        if self.engine.host.is_closed:
            return None
        return _recover(self.engine, self.call, self.initial, self.optimistic, error)


async def _recover(
    engine: SyncEngine[S], call: Command[S, T, R], initial: T, optimistic: T, error: Exception
) -> None:
    """Roll back (unless the state moved on), then reload the value if asked."""
    host = engine.host
    rollback_state = call.rollback_state or roll_back_unless_moved_on(
        call.get_value_from_state, call.apply_optimistic_value_to_state
    )
    rolled_back = rollback_state(host.state, initial, optimistic, error)
    if rolled_back is not None:
        host.emit(rolled_back)
    if call.reload_from_server is None:
        return
    before = call.get_value_from_state(host.state)
    try:
        reloaded = await call.reload_from_server()
    except Exception as reload_error:
        # The command's error is what the caller must see; this one is not lost.
        report(host.on_error, reload_error)
        return
    # Apply it unless the value changed while reloading: that change is newer.
    if not host.is_closed and call.get_value_from_state(host.state) == before:
        host.emit(call.apply_optimistic_value_to_state(host.state, reloaded))
