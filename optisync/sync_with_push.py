"""``optimistic_sync_with_push`` and ``server_push``: revisions decide the follow-ups.

Reached through :meth:`Store.optimistic_sync_with_push
<optisync.Store.optimistic_sync_with_push>` and :meth:`Store.server_push
<optisync.Store.server_push>`; this module holds their logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

from optisync._types import OnFinish
from optisync._validate import check_sync_arguments
from optisync.errors import (
    FollowUpLimitError,
    MissingServerRevisionError,
    StateError,
    StoreClosedError,
)
from optisync.revisions import PushMetadata, PushOutcome, _KeyState, _require_int

if TYPE_CHECKING:
    from optisync.store import Store

__all__: list[str] = []

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


def start(
    store: Store[S],
    key: K,
    value_to_apply: Callable[[], T],
    apply_optimistic_value_to_state: Callable[[S, T], S],
    get_value_from_state: Callable[[S], T],
    send_value_to_server: Callable[[T, int, int, Callable[[int], None]], Awaitable[R | None]],
    get_server_revision_from_state: Callable[[K], int],
    apply_server_response_to_state: Callable[[S, R], S] | None,
    on_finish: OnFinish[S] | None,
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
        get_server_revision_from_state=get_server_revision_from_state,
        apply_server_response_to_state=apply_server_response_to_state,
        on_finish=on_finish,
    )
    key_state, value, first_revision = store._take_lock_and_apply(
        key, value_to_apply, apply_optimistic_value_to_state
    )

    body = _send_until_stable(
        store,
        key,
        key_state,
        value,
        first_revision,
        get_value_from_state,
        send_value_to_server,
        get_server_revision_from_state,
        apply_server_response_to_state,
        max_follow_up_requests,
    )
    return store._start_cycle(key, key_state, body, on_finish)


async def _send_until_stable(
    store: Store[S],
    key: K,
    key_state: _KeyState,
    value: T,
    revision: int,
    get_value_from_state: Callable[[S], T],
    send_value_to_server: Callable[[T, int, int, Callable[[int], None]], Awaitable[R | None]],
    get_server_revision_from_state: Callable[[K], int],
    apply_server_response_to_state: Callable[[S, R], S] | None,
    max_follow_up_requests: int,
) -> None:
    follow_ups = 0
    while True:
        inform = _Informer(store, key, key_state)
        try:
            response = await send_value_to_server(value, revision, store.device_id, inform)
        finally:
            inform.finished = True
        if store.is_closed:  # close() was called from inside this cycle: stop here
            raise asyncio.CancelledError
        informed = inform.informed
        if informed is None:
            raise MissingServerRevisionError(
                f"send_value_to_server returned without calling inform_server_revision() "
                f"for key {key!r}: call it with the server's revision after a successful request."
            )
        # A push since the last tap is the newest word: it already came from
        # the server, so sending our older tap again would overwrite it.
        if key_state.from_push or key_state.local_revision == revision:
            if response is not None and apply_server_response_to_state is not None:
                known = max(
                    key_state.server_revision,
                    _revision_from_state(get_server_revision_from_state, key),
                )
                if informed >= known:
                    store.emit(apply_server_response_to_state(store.state, response))
            # The emit may have re-entered with a tap on this key (a listener):
            # the lock is still ours, so that tap needs a follow-up.
            if key_state.from_push or key_state.local_revision == revision:
                return
        follow_ups += 1
        if max_follow_up_requests != -1 and follow_ups > max_follow_up_requests:
            raise FollowUpLimitError(key, max_follow_up_requests)
        revision = key_state.local_revision
        value = get_value_from_state(store.state)


class _Informer:
    """``inform_server_revision`` for one request: records what the server said.

    A slotted object rather than a closure over cells: every cycle in flight
    holds one, and many thousands of keys may be in flight.
    """

    __slots__ = ("finished", "informed", "key", "key_state", "store")

    def __init__(self, store: Store[Any], key: Hashable, key_state: _KeyState) -> None:
        self.store = store
        self.key = key
        self.key_state = key_state
        self.informed: int | None = None
        self.finished = False

    def __call__(self, server_revision: int) -> None:
        _require_int(server_revision, "inform_server_revision()'s argument")
        if self.finished:
            raise StateError("inform_server_revision() was called after its request had finished.")
        self.informed = server_revision
        if server_revision > self.key_state.server_revision:
            self.key_state.server_revision = server_revision
            self.store._status_changed(self.key)


def push(
    store: Store[S],
    *,
    key: K,
    push_metadata: PushMetadata,
    apply_server_push_to_state: Callable[[S, K, int], S | None],
    get_server_revision_from_state: Callable[[K], int],
) -> PushOutcome:
    store._check_thread()
    check_sync_arguments(
        key,
        0,
        apply_server_push_to_state=apply_server_push_to_state,
        get_server_revision_from_state=get_server_revision_from_state,
    )
    if not isinstance(push_metadata, PushMetadata):
        raise TypeError(f"push_metadata must be a PushMetadata, got {type(push_metadata).__name__}")
    if store.is_closed:
        raise StoreClosedError("Cannot apply a push: the store is closed.")
    key_state = store._key_state(key)
    known = max(
        key_state.server_revision, _revision_from_state(get_server_revision_from_state, key)
    )
    seeded = known != key_state.server_revision
    key_state.server_revision = known
    pushed = push_metadata.server_revision
    if pushed <= known:
        if seeded:
            store._status_changed(key)
        return PushOutcome.STALE
    if (
        push_metadata.device_id == store.device_id
        and push_metadata.local_revision < key_state.local_revision
    ):
        # Our own older write coming back: the state already shows a newer tap.
        key_state.server_revision = pushed
        store._status_changed(key)
        return PushOutcome.SELF_ECHO
    new_state = apply_server_push_to_state(store.state, key, pushed)
    from_push = key_state.from_push
    key_state.server_revision = pushed
    key_state.from_push = True
    if new_state is not None:
        try:
            store.emit(new_state)
        except BaseException:
            # on_change vetoed the push: it was not applied, so a replay must be.
            key_state.server_revision = known
            key_state.from_push = from_push
            raise
    store._status_changed(key)
    return PushOutcome.APPLIED


def _revision_from_state(get_server_revision_from_state: Callable[[K], int], key: K) -> int:
    return _require_int(
        get_server_revision_from_state(key), "get_server_revision_from_state()'s result"
    )
