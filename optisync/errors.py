"""Errors raised by optisync.

Every error optisync raises on its own account is a :class:`StateError`, which
is a :class:`RuntimeError`, so ``except RuntimeError`` catches them all.
Errors raised by your own callbacks reach you unchanged.
"""

from __future__ import annotations

__all__ = [
    "CommandInProgressError",
    "FollowUpLimitError",
    "MissingServerRevisionError",
    "RequestCancelledError",
    "StateError",
    "StoreClosedError",
    "WrongThreadError",
]


class StateError(RuntimeError):
    """A store was used in a way its current state does not allow.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.StateError, RuntimeError)
        True
    """


class StoreClosedError(StateError):
    """The store is closed: it no longer emits states or starts syncs.

    Examples:
        >>> import asyncio, optisync
        >>> async def main() -> None:
        ...     store = optisync.Store(0)
        ...     await store.close()
        ...     try:
        ...         store.emit(1)
        ...     except optisync.StoreClosedError as error:
        ...         print(error)
        >>> asyncio.run(main())
        Cannot emit a new state: the store is closed.
    """


class MissingServerRevisionError(StateError):
    """``send_value_to_server`` returned without calling ``inform_server_revision()``.

    ``optimistic_sync_with_push`` cannot tell a stale response from a fresh one
    without the server's revision, so it treats the request as failed.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.MissingServerRevisionError, RuntimeError)
        True
    """


class FollowUpLimitError(StateError):
    """A lock cycle needed more follow-up requests than ``max_follow_up_requests``.

    The key is unlocked and ``on_finish`` has run by the time you see this.

    Examples:
        >>> import optisync
        >>> "Too many follow-up requests" in str(optisync.FollowUpLimitError("k", 3))
        True
    """

    def __init__(self, key: object, limit: int) -> None:
        super().__init__(
            f"Too many follow-up requests for key {key!r}: "
            f"more than max_follow_up_requests={limit} in one lock cycle."
        )
        self.key = key
        self.limit = limit


class RequestCancelledError(StateError):
    """A sync's callback raised ``asyncio.CancelledError`` though nobody cancelled the sync.

    For example an HTTP client whose own task was cancelled under the request.
    The request counts as failed: ``on_finish`` gets this error, and so does the
    awaiting caller (whose own task is not cancelled). The original
    ``CancelledError`` is its ``__cause__``. Only ``close()`` (or the loop
    shutting down) cancels a sync.

    Examples:
        >>> import asyncio, optisync
        >>> async def main() -> None:
        ...     async with optisync.Store(0) as store:
        ...         async def send(value: int) -> None:
        ...             raise asyncio.CancelledError  # from inside the client
        ...         try:
        ...             await store.optimistic_sync(
        ...                 key="n", value_to_apply=lambda: 1,
        ...                 apply_optimistic_value_to_state=lambda s, v: v,
        ...                 get_value_from_state=lambda s: s, send_value_to_server=send)
        ...         except optisync.RequestCancelledError as error:
        ...             print(type(error.__cause__).__name__)
        >>> asyncio.run(main())
        CancelledError
    """

    def __init__(self, key: object) -> None:
        super().__init__(
            f"A callback of the sync of key {key!r} raised asyncio.CancelledError, "
            "though the sync was not cancelled: the request failed."
        )
        self.key = key


class WrongThreadError(StateError):
    """A store method was called from a thread other than its event loop's.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.WrongThreadError, RuntimeError)
        True
    """


class CommandInProgressError(StateError):
    """A key is busy with an ``optimistic_command`` that has not finished.

    Raised at call time, before anything changes, by a second
    ``optimistic_command`` on the key (a double tap on "send" must not send
    twice), by a command on a key a sync holds, and by a sync call on a key
    a command holds. Disable the button
    while :meth:`Store.is_syncing <optisync.Store.is_syncing>` says so.

    Examples:
        >>> import optisync
        >>> print(optisync.CommandInProgressError(("add", 1)))
        Key ('add', 1) is busy with an optimistic_command (or a sync) that has not finished.
    """

    def __init__(self, key: object) -> None:
        super().__init__(
            f"Key {key!r} is busy with an optimistic_command (or a sync) that has not finished."
        )
        self.key = key
