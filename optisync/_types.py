"""Type aliases shared by the store and the sync strategies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

S = TypeVar("S")

OnFinish: TypeAlias = Callable[[Exception | None], S | Awaitable[S | None] | None]
"""The type of ``on_finish``: ``(error or None) -> state or None``, sync or async.

It runs once per lock cycle, after the key's lock is released, with the
error that ended the cycle or ``None``; a state it returns is emitted.

Examples:
    >>> from optisync import OnFinish
    >>> def reload_on_error(error: BaseException | None) -> int | None:
    ...     return 0 if error is not None else None
    >>> handler: OnFinish[int] = reload_on_error
    >>> handler(ValueError("offline"))
    0
"""
