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
    key_state, value, revision = engine.take_lock(
        call.key, call.value_to_apply, call.apply_optimistic_value_to_state
    )
    return engine.start_cycle(
        call.key, key_state, call.on_finish, _send_until_stable, call, value, revision
    )


async def _send_until_stable(
    engine: SyncEngine[S], call: Sync[S, T, R], key_state: KeyState, value: T, revision: int
) -> None:
    host = engine.host
    should_send_another = call.if_should_send_another_request or values_differ
    requests = 0
    while True:
        response = await call.send_value_to_server(value)
        if host.is_closed:  # close() was called from inside this cycle: stop here
            raise asyncio.CancelledError
        requests += 1
        state_value = call.get_value_from_state(host.state)
        if not should_send_another(state_value, value, requests):
            taps = key_state.local_revision
            apply = call.apply_server_response_to_state
            if response is not None and apply is not None:
                host.emit(apply(host.state, response))
            if key_state.local_revision == taps:
                return
            # A listener of that emit tapped this key while the lock was ours.
            state_value = call.get_value_from_state(host.state)
        # The next request would be follow-up number `requests`.
        limit = call.max_follow_up_requests
        if limit != -1 and requests > limit:
            raise FollowUpLimitError(call.key, limit)
        value = state_value
