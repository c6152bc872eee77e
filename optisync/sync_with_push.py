"""``optimistic_sync_with_push`` and ``server_push``: revisions decide the follow-ups.

Reached through :meth:`Store.optimistic_sync_with_push
<optisync.Store.optimistic_sync_with_push>` and :meth:`Store.server_push
<optisync.Store.server_push>`; this module holds their logic, on the
engine's interface.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, NamedTuple, TypeVar

from optisync._engine import KeyState, SyncEngine
from optisync._tasks import CycleResult
from optisync._types import OnFinish
from optisync._validate import check_call, check_callback, check_key
from optisync.errors import (
    ArgumentTypeError,
    FollowUpLimitError,
    MissingServerRevisionError,
    StateError,
    StoreClosedError,
)
from optisync.revisions import PushMetadata, PushOutcome, require_int, revision_from_state

__all__: list[str] = []

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")
K = TypeVar("K", bound=Hashable)

SendWithPush = Callable[[T, int, int, Callable[[int], None]], Awaitable[R | None]]


class PushSync(NamedTuple, Generic[S, T, R, K]):
    """The arguments of one ``optimistic_sync_with_push`` call that took a lock."""

    key: K
    value_to_apply: Callable[[], T]
    apply_optimistic_value_to_state: Callable[[S, T], S]
    get_value_from_state: Callable[[S], T]
    send_value_to_server: SendWithPush[T, R]
    get_server_revision_from_state: Callable[[K], int]
    apply_server_response_to_state: Callable[[S, R], S] | None
    on_finish: OnFinish[S] | None
    max_follow_up_requests: int


def start(engine: SyncEngine[S], call: PushSync[S, T, R, K]) -> CycleResult:
    """Start a lock cycle for a tap on a free key (the caller checked it is free)."""
    check_call(call)
    key = call.key
    key_state, value, revision = engine.take_lock(
        key,
        call.value_to_apply,
        call.apply_optimistic_value_to_state,
        seed_from=call.get_server_revision_from_state,
    )
    requests = _PushRequests(engine, call, key_state, value, revision)
    return engine.start_cycle(key, key_state, call.on_finish, requests)


class _PushRequests(Generic[S, T, R, K]):
    """One lock cycle: send, then follow up until the key's local revision is stable."""

    __slots__ = ("call", "engine", "follow_ups", "inform", "key_state", "revision", "value")

    def __init__(
        self,
        engine: SyncEngine[S],
        call: PushSync[S, T, R, K],
        key_state: KeyState,
        value: T,
        revision: int,
    ) -> None:
        self.engine = engine
        self.call = call
        self.key_state = key_state
        self.value: T | None = value
        self.revision = revision
        self.follow_ups = 0
        self.inform: _Informer | None = None

    def first(self) -> Awaitable[R | None]:
        value, self.value = self.value, None  # not kept while in flight
        return self._send(value)  # type: ignore[arg-type]

    def _send(self, value: T) -> Awaitable[R | None]:
        inform = self.inform = _Informer(self.engine, self.call.key, self.key_state)
        return self.call.send_value_to_server(
            value, self.revision, self.engine.host.device_id, inform
        )

    def request_done(self) -> None:
        if self.inform is not None:
            self.inform.finished = True

    def next(self, response: R | None) -> Awaitable[R | None] | None:
        engine, call, key_state = self.engine, self.call, self.key_state
        if engine.host.is_closed:  # close() was called from inside this cycle: stop here
            raise asyncio.CancelledError
        assert self.inform is not None
        informed = self.inform.informed
        if informed is None:
            raise MissingServerRevisionError(
                f"send_value_to_server returned without calling inform_server_revision() "
                f"for key {call.key!r}: call it with the server's revision after a "
                f"successful request."
            )
        # A push since the last tap is the newest word: it already came from
        # the server, so sending our older tap again would overwrite it.
        if key_state.from_push or key_state.local_revision == self.revision:
            if response is not None and call.apply_server_response_to_state is not None:
                _apply_response(engine, call, key_state, response, informed)
            # The emit may have re-entered with a tap on this key (a listener):
            # the lock is still ours, so that tap needs a follow-up.
            if key_state.from_push or key_state.local_revision == self.revision:
                return None
        self.follow_ups += 1
        limit = call.max_follow_up_requests
        if limit != -1 and self.follow_ups > limit:
            raise FollowUpLimitError(call.key, limit)
        self.revision = key_state.local_revision
        return self._send(call.get_value_from_state(engine.host.state))

    def failed(self, error: Exception) -> None:
        return None


def _apply_response(
    engine: SyncEngine[S],
    call: PushSync[S, T, R, K],
    key_state: KeyState,
    response: R,
    informed: int,
) -> None:
    """Apply a response, unless a newer server revision is known (it is stale)."""
    apply = call.apply_server_response_to_state
    assert apply is not None
    known = max(
        key_state.server_revision,
        revision_from_state(call.get_server_revision_from_state, call.key),
    )
    if informed >= known:
        engine.host.emit(apply(engine.host.state, response))


class _Informer:
    """``inform_server_revision`` for one request: records what the server said.

    A slotted object rather than a closure over cells: every cycle in flight
    holds one, and many thousands of keys may be in flight. It may be called
    once per request, with a revision of at least 0.
    """

    __slots__ = ("engine", "finished", "informed", "key", "key_state")

    def __init__(self, engine: SyncEngine[Any], key: Hashable, key_state: KeyState) -> None:
        self.engine = engine
        self.key = key
        self.key_state = key_state
        self.informed: int | None = None
        self.finished = False

    def __call__(self, server_revision: int) -> None:
        if type(server_revision) is not int or server_revision < 0:
            require_int(server_revision, "inform_server_revision()'s argument", minimum=0)
        if self.finished:
            raise StateError("inform_server_revision() was called after its request had finished.")
        if self.informed is not None:
            raise StateError(
                f"inform_server_revision() was called twice for one request of key "
                f"{self.key!r} (with {self.informed}, then {server_revision}): a request "
                f"has one server revision."
            )
        self.informed = server_revision
        if server_revision > self.key_state.server_revision:
            self.key_state.server_revision = server_revision
            self.engine.status_changed(self.key)


def push(
    engine: SyncEngine[S],
    key: K,
    push_metadata: PushMetadata,
    apply_server_push_to_state: Callable[[S, K, int], S | None],
    get_server_revision_from_state: Callable[[K], int],
) -> PushOutcome:
    """Apply a push unless it is stale or a self-echo (see :meth:`Store.server_push`)."""
    binding = engine.binding
    if binding.loop is None or binding.thread != threading.get_ident():
        binding.check_thread()
    check_key(key)
    _check_push_arguments(push_metadata, apply_server_push_to_state, get_server_revision_from_state)
    host = engine.host
    if host.is_closed:
        raise StoreClosedError("Cannot apply a push: the store is closed.")
    key_state = engine.key_state(key)
    seeded = engine.seed_server_revision(
        key, key_state, revision_from_state(get_server_revision_from_state, key)
    )
    known = key_state.server_revision
    pushed = push_metadata.server_revision
    if pushed <= known:
        if seeded:
            engine.status_changed(key)
        return PushOutcome.STALE
    local = key_state.local_revision
    if (
        push_metadata.device_id == host.device_id
        and push_metadata.local_revision < local
        and local > engine.local_revision_base
        and not key_state.from_push
    ):
        # Our own older write coming back: the state already shows a newer tap.
        # (Only a tap of this run is newer: a key this run never changed takes
        # the echo of an earlier run's write, which the server holds. And only
        # while the state shows that tap: if a push replaced it, this echo is
        # newer than that push, so it is the server's newest word.)
        key_state.server_revision = pushed
        engine.status_changed(key)
        return PushOutcome.SELF_ECHO
    new_state = apply_server_push_to_state(host.state, key, pushed)
    _apply_push(engine, key, key_state, new_state, pushed, known)
    return PushOutcome.APPLIED


def _apply_push(
    engine: SyncEngine[S],
    key: Hashable,
    key_state: KeyState,
    new_state: S | None,
    pushed: int,
    known: int,
) -> None:
    from_push = key_state.from_push
    key_state.server_revision = pushed
    key_state.from_push = True
    if new_state is not None:
        try:
            engine.host.emit(new_state)
        except BaseException:
            # on_change vetoed the push: it was not applied, so a replay must be.
            key_state.server_revision = known
            key_state.from_push = from_push
            raise
    engine.status_changed(key)


def _check_push_arguments(
    push_metadata: object,
    apply_server_push_to_state: object,
    get_server_revision_from_state: object,
) -> None:
    check_callback("apply_server_push_to_state", apply_server_push_to_state)
    check_callback("get_server_revision_from_state", get_server_revision_from_state)
    if not isinstance(push_metadata, PushMetadata):
        raise ArgumentTypeError(
            f"push_metadata must be a PushMetadata, got {type(push_metadata).__name__}"
        )
