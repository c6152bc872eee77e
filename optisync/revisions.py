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
import warnings
from collections.abc import Callable, Hashable
from typing import TypeVar

import attrs

from optisync.errors import ArgumentTypeError, InvalidArgumentError

K = TypeVar("K", bound=Hashable)

__all__ = [
    "PushMetadata",
    "PushOutcome",
    "default_device_id",
    "set_device_id_provider",
]


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True is never a meaningful revision or id.
    return isinstance(value, int) and not isinstance(value, bool)


def require_int(value: object, what: str, *, minimum: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises ArgumentTypeError (a TypeError) for a wrong type and
    InvalidArgumentError (a ValueError) for a value out of range.
    """
    if not _is_int(value):
        raise ArgumentTypeError(f"{what} must be an int, got {type(value).__name__}: {value!r}")
    number: int = value  # type: ignore[assignment]
    if minimum is not None and number < minimum:
        meaning = " (-1 means unknown)" if minimum == -1 else ""
        raise InvalidArgumentError(f"{what} must be >= {minimum}{meaning}, got {number}")
    return number


def revision_from_state(get_server_revision_from_state: Callable[[K], int], key: K) -> int:
    """The server revision the state holds for ``key``: an int, -1 when unknown."""
    revision = get_server_revision_from_state(key)
    if type(revision) is int and revision >= -1:
        return revision
    return require_int(revision, "get_server_revision_from_state()'s result", minimum=-1)


def _non_negative_int(instance: object, attribute: attrs.Attribute[int], value: object) -> None:
    require_int(value, attribute.name, minimum=0)


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
        optisync.errors.ArgumentTypeError: server_revision must be an int, got str: '7'

    Each field is an int of at least 0: a pushed change always has a server
    revision; a change no device made (say, by an admin) may carry a local
    revision and a device id of 0.
    """

    server_revision: int = attrs.field(validator=_non_negative_int)
    local_revision: int = attrs.field(validator=_non_negative_int)
    device_id: int = attrs.field(validator=_non_negative_int)


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


_process_id: int | None = None
_provider: Callable[[], int] | None = None


def random_device_id() -> int:
    """A new random device id: 53 bits, exact in JSON numbers and JavaScript clients."""
    return secrets.randbits(53)


def random_device_secret() -> str:
    """A new device secret: 256 random bits, URL-safe base64 (43 characters).

    Sent in every hello; the server binds the device id to it at the first one.
    """
    return secrets.token_urlsafe(32)


def default_device_id() -> int:
    """Deprecated: one random device id per process, made on first use.

    Stores no longer use it: each :class:`~optisync.Store` made without
    ``device_id=`` and without a provider gets a random id of its own, so
    two stores in one process (two devices in a test or a demo) never take
    each other's writes for their own echoes. Persist an id and pass it with
    :func:`set_device_id_provider` or ``Store(..., device_id=...)``.

    Examples:
        >>> import warnings
        >>> from optisync import default_device_id
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     default_device_id() == default_device_id()
        True
    """
    warnings.warn(
        "default_device_id() is deprecated: each Store now gets a random device id of its "
        "own; use Store.device_id, or set_device_id_provider() for a persisted id.",
        DeprecationWarning,
        stacklevel=2,
    )
    global _process_id
    if _process_id is None:
        _process_id = random_device_id()
    return _process_id


def set_device_id_provider(provider: Callable[[], int] | None) -> None:
    """Choose where stores made from now on get their device id.

    ``provider`` is called once per new :class:`~optisync.Store` that is not
    given ``device_id=`` explicitly; pass ``None`` to go back to the default,
    a random id per store. This is optisync's only global setting, meant
    for an id persisted across app restarts.

    Examples:
        >>> import optisync
        >>> optisync.set_device_id_provider(lambda: 1234)
        >>> optisync.Store(0).device_id
        1234
        >>> optisync.set_device_id_provider(None)
        >>> optisync.Store(0).device_id != optisync.Store(0).device_id
        True
    """
    global _provider
    if provider is not None and not callable(provider):
        raise ArgumentTypeError(f"provider must be callable or None, got {type(provider).__name__}")
    _provider = provider


def new_device_id() -> int:
    """The device id for a store made now: the provider's, or a random one."""
    if _provider is None:
        return random_device_id()
    return require_int(_provider(), "the device id provider's result", minimum=0)
