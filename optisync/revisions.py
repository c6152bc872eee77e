"""Revisions and device ids: the metadata that lets devices converge.

Each key has two revision counters:

* the *local revision* counts the user's changes on this device (every call of
  ``optimistic_sync_with_push`` adds one);
* the *server revision* is the server's monotonically increasing version of
  the key, learnt from responses (``inform_server_revision``) and pushes.

A push carries both, plus the id of the device that made the change, in a
:class:`PushMetadata`.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable

import attrs

__all__ = [
    "PushMetadata",
    "PushOutcome",
    "default_device_id",
    "set_device_id_provider",
]


def _strict_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    if not _is_int(value):
        raise TypeError(f"{attribute.name} must be an int, got {type(value).__name__}: {value!r}")


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is never a meaningful revision or id.
    return isinstance(value, int) and not isinstance(value, bool)


def _require_int(value: object, what: str) -> int:
    """Return ``value`` if it is an int (not a bool), else raise TypeError."""
    if not _is_int(value):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}: {value!r}")
    return value  # type: ignore[return-value]


@attrs.frozen
class PushMetadata:
    """What the server says about a pushed change.

    Attributes:
        server_revision: the server's revision of the key after this change.
        local_revision: the local revision the writing device sent with it.
        device_id: the id of the device that wrote it.

    Examples:
        >>> from optisync import PushMetadata
        >>> PushMetadata(server_revision=7, local_revision=2, device_id=42)
        PushMetadata(server_revision=7, local_revision=2, device_id=42)
        >>> PushMetadata(server_revision="7", local_revision=2, device_id=42)
        Traceback (most recent call last):
        ...
        TypeError: server_revision must be an int, got str: '7'
    """

    server_revision: int = attrs.field(validator=_strict_int)
    local_revision: int = attrs.field(validator=_strict_int)
    device_id: int = attrs.field(validator=_strict_int)


class PushOutcome(enum.Enum):
    """What :meth:`Store.server_push <optisync.Store.server_push>` did with a push.

    Examples:
        >>> from optisync import PushOutcome
        >>> PushOutcome.APPLIED.value
        'applied'
    """

    APPLIED = "applied"
    """The push was newer than anything known: it was applied to the state."""
    STALE = "stale"
    """The push was not newer than the known server revision: ignored."""
    SELF_ECHO = "self_echo"
    """An echo of an older change of this device: only its revision was kept."""


_default_id: int | None = None
_provider: Callable[[], int] | None = None


def default_device_id() -> int:
    """Return this process's random device id, made on first use.

    Examples:
        >>> from optisync import default_device_id
        >>> default_device_id() == default_device_id()
        True
    """
    global _default_id
    if _default_id is None:
        # 53 bits: exact in JSON numbers and JavaScript clients.
        _default_id = secrets.randbits(53)
    return _default_id


def set_device_id_provider(provider: Callable[[], int] | None) -> None:
    """Choose where stores made from now on get their device id.

    ``provider`` is called once per new :class:`~optisync.Store` that is not
    given ``device_id=`` explicitly; pass ``None`` to go back to
    :func:`default_device_id`. This is optisync's only global setting, meant
    for an id persisted across app restarts.

    Examples:
        >>> import optisync
        >>> optisync.set_device_id_provider(lambda: 1234)
        >>> optisync.Store(0).device_id
        1234
        >>> optisync.set_device_id_provider(None)
    """
    global _provider
    if provider is not None and not callable(provider):
        raise TypeError(f"provider must be callable or None, got {type(provider).__name__}")
    _provider = provider


def _next_device_id() -> int:
    """The device id for a store made now (the provider's, or the default)."""
    if _provider is None:
        return default_device_id()
    return _require_int(_provider(), "the device id provider's result")


class _KeyState:
    """Per-key bookkeeping of one store. Internal: read it through the Store."""

    __slots__ = ("from_push", "local_revision", "locked", "server_revision")

    def __init__(self) -> None:
        self.local_revision = 0
        self.server_revision = -1
        self.from_push = False
        self.locked = False
