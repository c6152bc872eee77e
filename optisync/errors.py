"""Errors raised by optisync: one root, :class:`OptisyncError`.

Every error optisync raises on its own account is an :class:`OptisyncError`,
so ``except optisync.OptisyncError`` catches them all. Each one also derives
from the built-in exception a caller would catch without knowing optisync:

* :class:`StateError` (a ``RuntimeError``): an object was used in a way its
  current state does not allow; :class:`ClosedError`, :class:`NotOpenError`
  and :class:`AlreadyAttachedError` name the common cases;
* :class:`InvalidArgumentError` (a ``ValueError``) and
  :class:`ArgumentTypeError` (a ``TypeError``): a call's argument was refused;
* a transport's :class:`TransportError` (a ``ConnectionError``): the server
  could not be reached, or the connection dropped.

Errors raised by your own callbacks reach you unchanged.

Example:
    >>> import optisync
    >>> issubclass(optisync.StoreClosedError, optisync.OptisyncError)
    True
    >>> issubclass(optisync.StoreClosedError, RuntimeError)
    True
"""

from __future__ import annotations

__all__ = [
    "AlreadyAttachedError",
    "ArgumentTypeError",
    "ClosedError",
    "CommandInProgressError",
    "InvalidArgumentError",
    "NotOpenError",
    "OptisyncError",
    "TransportError",
    "FollowUpLimitError",
    "MissingServerRevisionError",
    "RequestCancelledError",
    "StateError",
    "StoreClosedError",
    "WrongThreadError",
    "AlreadyOpenError",
    "BlockingOnLoopThreadError",
    "CallTimeoutError",
]


class OptisyncError(Exception):
    """The root of every error optisync raises on purpose.

    Examples:
        >>> import optisync
        >>> try:
        ...     optisync.Store(0, device_id=-1)
        ... except optisync.OptisyncError as error:
        ...     print(type(error).__name__, isinstance(error, ValueError))
        InvalidArgumentError True
    """


class StateError(OptisyncError, RuntimeError):
    """An object was used in a way its current state does not allow.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.StateError, RuntimeError)
        True
    """


class InvalidArgumentError(OptisyncError, ValueError):
    """An argument has the right type but a value optisync refuses (a negative id, say).

    Examples:
        >>> import optisync
        >>> issubclass(optisync.InvalidArgumentError, ValueError)
        True
    """


class ArgumentTypeError(OptisyncError, TypeError):
    """An argument has a type optisync does not take (a callback that is not callable, say).

    Examples:
        >>> import optisync
        >>> try:
        ...     optisync.Store(0).subscribe("not a function")
        ... except TypeError as error:
        ...     print(type(error).__name__)
        ArgumentTypeError
    """


class ClosedError(StateError):
    """The object (a store, a client, a storage, a link) was closed; open a new one.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.StoreClosedError, optisync.ClosedError)
        True
    """


class NotOpenError(StateError):
    """The object must be opened (or started) before this call.

    Examples:
        >>> import optisync
        >>> print(optisync.NotOpenError("the storage is not open: await open() first"))
        the storage is not open: await open() first
    """


class AlreadyAttachedError(StateError):
    """The object is already attached to a store (or the store already has one).

    A store has at most one outbox, one persistence and one transport.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.AlreadyAttachedError, RuntimeError)
        True
    """


class TransportError(OptisyncError, ConnectionError):
    """The server could not be reached, or the connection dropped during a request.

    A ``ConnectionError``: a declared field's store with an
    :class:`~optisync.outbox.Outbox` keeps the change and sends it again
    later. Whether a request that failed this way was committed is told by
    the server's replay once the transport is back online.

    Examples:
        >>> import optisync
        >>> isinstance(optisync.TransportError("offline"), ConnectionError)
        True
    """


class StoreClosedError(ClosedError):
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


class AlreadyOpenError(StateError):
    """The object (a server's storage, say) is already open; open it once.

    Examples:
        >>> import optisync
        >>> issubclass(optisync.AlreadyOpenError, RuntimeError)
        True
    """


class BlockingOnLoopThreadError(StateError):
    """A call that blocks until the store's loop runs it was made on that loop's own thread.

    The loop could never run the call while its thread waits for it, so
    :meth:`ThreadBridge.run <optisync.threads.ThreadBridge.run>` refuses at
    once instead of hanging. On the loop's thread, call the store directly
    (or ``await asyncio.wrap_future(bridge.submit(...))``).

    Examples:
        >>> import optisync
        >>> issubclass(optisync.BlockingOnLoopThreadError, RuntimeError)
        True
    """


class CallTimeoutError(OptisyncError, TimeoutError):
    """A call handed to the store's loop did not finish within its timeout.

    A call the loop had not started yet is dropped and never runs; one
    already running goes on (its outcome is then nobody's).

    Examples:
        >>> import optisync
        >>> issubclass(optisync.CallTimeoutError, TimeoutError)
        True
    """
