"""Errors raised by optisync.

Every error optisync raises on its own account is a :class:`StateError`, which
is a :class:`RuntimeError`, so ``except RuntimeError`` catches them all.
Errors raised by your own callbacks reach you unchanged.
"""

from __future__ import annotations

__all__ = [
    "FollowUpLimitError",
    "MissingServerRevisionError",
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


class WrongThreadError(StateError):
    """A store method was called from a thread other than its event loop's.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.WrongThreadError, RuntimeError)
        True
    """
