"""Type aliases shared by the store and the sync strategies."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeAlias, TypeVar

S = TypeVar("S")

#: ``on_finish(error_or_None)``, sync or async; a returned state is emitted.
OnFinish: TypeAlias = Callable[[BaseException | None], S | Awaitable[S | None] | None]
