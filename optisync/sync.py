"""``optimistic_sync``: the variant for servers that do not push.

Reached through :meth:`Store.optimistic_sync <optisync.Store.optimistic_sync>`;
this module holds its logic. Follow-ups are decided by comparing values, not
revisions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, TypeVar

from optisync._types import OnFinish
from optisync._validate import check_sync_arguments
from optisync.errors import FollowUpLimitError
from optisync.revisions import _KeyState

if TYPE_CHECKING:
    from optisync.store import Store

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


def start(
    store: Store[S],
    key: Hashable,
    value_to_apply: Callable[[], T],
    apply_optimistic_value_to_state: Callable[[S, T], S],
    get_value_from_state: Callable[[S], T],
    send_value_to_server: Callable[[T], Awaitable[R | None]],
    apply_server_response_to_state: Callable[[S, R], S] | None,
    on_finish: OnFinish[S] | None,
    if_should_send_another_request: Callable[[T, T, int], bool] | None,
    max_follow_up_requests: int,
    /,
) -> Awaitable[None]:
    """Start a lock cycle for a tap on a free key (the store already checked it is free)."""
    check_sync_arguments(
        key,
        max_follow_up_requests,
        value_to_apply=value_to_apply,
        apply_optimistic_value_to_state=apply_optimistic_value_to_state,
        get_value_from_state=get_value_from_state,
        send_value_to_server=send_value_to_server,
        apply_server_response_to_state=apply_server_response_to_state,
        on_finish=on_finish,
        if_should_send_another_request=if_should_send_another_request,
    )
    key_state, value, _ = store._take_lock_and_apply(
        key, value_to_apply, apply_optimistic_value_to_state
    )
    body = _send_until_stable(
        store,
        key,
        key_state,
        value,
        get_value_from_state,
        send_value_to_server,
        apply_server_response_to_state,
        if_should_send_another_request or values_differ,
        max_follow_up_requests,
    )
    return store._start_cycle(key, key_state, body, on_finish)


async def _send_until_stable(
    store: Store[S],
    key: Hashable,
    key_state: _KeyState,
    value: T,
    get_value_from_state: Callable[[S], T],
    send_value_to_server: Callable[[T], Awaitable[R | None]],
    apply_server_response_to_state: Callable[[S, R], S] | None,
    should_send_another: Callable[[T, T, int], bool],
    max_follow_up_requests: int,
) -> None:
    requests = 0
    while True:
        response = await send_value_to_server(value)
        if store.is_closed:  # close() was called from inside this cycle: stop here
            raise asyncio.CancelledError
        requests += 1
        state_value = get_value_from_state(store.state)
        if not should_send_another(state_value, value, requests):
            taps = key_state.local_revision
            if response is not None and apply_server_response_to_state is not None:
                store.emit(apply_server_response_to_state(store.state, response))
            if key_state.local_revision == taps:
                return
            # A listener of that emit tapped this key while the lock was ours.
            state_value = get_value_from_state(store.state)
        # The next request would be follow-up number `requests`.
        if max_follow_up_requests != -1 and requests > max_follow_up_requests:
            raise FollowUpLimitError(key, max_follow_up_requests)
        value = state_value
