"""``optimistic_sync``: the variant for servers that do not push.

Reached through :meth:`Store.optimistic_sync <optisync.Store.optimistic_sync>`;
this module holds its logic, on the engine's interface. Follow-ups are
decided by comparing values, not revisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, NamedTuple, TypeVar

from optisync._engine import KeyState, SyncEngine
from optisync._tasks import CycleResult
from optisync._types import OnFinish
from optisync._validate import check_call
from optisync.errors import FollowUpLimitError

__all__ = ["values_differ"]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")


def values_differ(state_value: object, sent_value: object, request_count: int) -> bool:
    """The default ``if_should_send_another_request``: send again if the value changed.

    Examples:
        >>> from optisync.sync import values_differ
        >>> values_differ(True, False, 1)
        True
        >>> values_differ(True, True, 1)
        False
    """
    return bool(state_value != sent_value)


class Sync(NamedTuple, Generic[S, T, R]):
    """The arguments of one ``optimistic_sync`` call that took a lock."""

    key: Hashable
    value_to_apply: Callable[[], T]
    apply_optimistic_value_to_state: Callable[[S, T], S]
    get_value_from_state: Callable[[S], T]
    send_value_to_server: Callable[[T], Awaitable[R | None]]
    apply_server_response_to_state: Callable[[S, R], S] | None
    on_finish: OnFinish[S] | None
    if_should_send_another_request: Callable[[T, T, int], bool] | None
    max_follow_up_requests: int


def start(engine: SyncEngine[S], call: Sync[S, T, R]) -> CycleResult:
    """Start a lock cycle for a tap on a free key (the caller checked it is free)."""
    check_call(call)
    key_state, value, _ = engine.take_lock(
        call.key, call.value_to_apply, call.apply_optimistic_value_to_state
    )
    requests = _Requests(engine, call, key_state, value)
    return engine.start_cycle(call.key, key_state, call.on_finish, requests)


class _Requests(Generic[S, T, R]):
    """One lock cycle: send, then follow up while the state's value differs from the sent one."""

    __slots__ = ("call", "engine", "key_state", "requests", "value")

    def __init__(
        self, engine: SyncEngine[S], call: Sync[S, T, R], key_state: KeyState, value: T
    ) -> None:
        self.engine = engine
        self.call = call
        self.key_state = key_state
        self.value = value  # the value sent last
        self.requests = 0

    def first(self) -> Awaitable[R | None]:
        return self.call.send_value_to_server(self.value)

    def request_done(self) -> None:
        pass

    def next(self, response: R | None) -> Awaitable[R | None] | None:
        host, call, key_state = self.engine.host, self.call, self.key_state
        if host.is_closed:  # close() was called from inside this cycle: stop here
            raise asyncio.CancelledError
        self.requests += 1
        should_send_another = call.if_should_send_another_request or values_differ
        state_value = call.get_value_from_state(host.state)
        if not should_send_another(state_value, self.value, self.requests):
            taps = key_state.local_revision
            apply = call.apply_server_response_to_state
            if response is not None and apply is not None:
                host.emit(apply(host.state, response))
            if key_state.local_revision == taps:
                return None
            # A listener of that emit tapped this key while the lock was ours.
            state_value = call.get_value_from_state(host.state)
        # The next request would be follow-up number `requests`.
        limit = call.max_follow_up_requests
        if limit != -1 and self.requests > limit:
            raise FollowUpLimitError(call.key, limit)
        self.value = state_value
        return call.send_value_to_server(state_value)

    def failed(self, error: Exception) -> None:
        return None
