"""optisync: optimistic state for asyncio apps, kept in sync with a pushing server.

Examples:
    >>> import optisync
    >>> store = optisync.Store({"liked": False})
    >>> store.state
    {'liked': False}
"""

from optisync._stream import StateStream
from optisync._types import OnFinish
from optisync.command import roll_back_unless_moved_on
from optisync.errors import (
    AlreadyAttachedError,
    AlreadyOpenError,
    ArgumentTypeError,
    BlockingOnLoopThreadError,
    CallTimeoutError,
    ClosedError,
    CommandInProgressError,
    FollowUpLimitError,
    InvalidArgumentError,
    MissingServerRevisionError,
    NotOpenError,
    OptisyncError,
    RequestCancelledError,
    StateError,
    StoreClosedError,
    TransportError,
    WrongThreadError,
)
from optisync.revisions import PushMetadata, PushOutcome, default_device_id, set_device_id_provider
from optisync.store import Store
from optisync.transport import DELETED, Deleted

__all__ = [
    "DELETED",
    "Deleted",
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
    "OnFinish",
    "PushMetadata",
    "PushOutcome",
    "RequestCancelledError",
    "StateError",
    "StateStream",
    "Store",
    "StoreClosedError",
    "WrongThreadError",
    "default_device_id",
    "roll_back_unless_moved_on",
    "set_device_id_provider",
    "AlreadyOpenError",
    "BlockingOnLoopThreadError",
    "CallTimeoutError",
]

__version__ = "0.1.0"
