"""Argument checks shared by the sync strategies: fail at call time, before any change."""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterator
from typing import Protocol

from optisync.errors import ArgumentTypeError, InvalidArgumentError

__all__ = ["check_call", "check_callback", "check_key"]

# Callbacks a caller may leave out (None).
_OPTIONAL = frozenset(
    {
        "apply_server_response_to_state",
        "if_should_send_another_request",
        "on_finish",
        "reload_from_server",
        "rollback_state",
    }
)


def check_key(key: Hashable) -> None:
    """Raise ArgumentTypeError (a TypeError) for a key that is not hashable."""
    try:
        hash(key)
    except TypeError:
        raise ArgumentTypeError(
            f"key must be hashable, got {type(key).__name__}: {key!r}"
        ) from None


class Call(Protocol):
    """A strategy's record of one call: a NamedTuple of its arguments."""

    @property
    def _fields(self) -> tuple[str, ...]: ...

    def __getitem__(self, index: int) -> object: ...

    def __iter__(self) -> Iterator[object]: ...


class _Spec:
    """Which fields of one record type are callbacks, found once per type."""

    __slots__ = ("limit", "optional", "required")

    def __init__(self, fields: tuple[str, ...]) -> None:
        callbacks = [(i, name) for i, name in enumerate(fields) if name not in _NOT_CALLBACKS]
        required = [i for i, name in callbacks if name not in _OPTIONAL]
        optional = [i for i, name in callbacks if name in _OPTIONAL]
        self.required = _picker(required)
        self.optional = _picker(optional)
        limit = fields.index("max_follow_up_requests") if "max_follow_up_requests" in fields else -1
        self.limit = limit


def _picker(indexes: list[int]) -> Callable[[Call], tuple[object, ...]]:
    """A C-speed getter of the fields at ``indexes``, always as a tuple."""
    if len(indexes) == 1:
        (index,) = indexes
        return lambda call: (call[index],)
    return operator.itemgetter(*indexes)


_NOT_CALLBACKS = frozenset({"key", "max_follow_up_requests"})
_SPECS: dict[type, _Spec] = {}


def check_call(call: Call) -> None:
    """Raise ArgumentTypeError/InvalidArgumentError for a bad limit or callback of one sync call.

    Every field of ``call`` but ``key`` and ``max_follow_up_requests`` is a
    callback; those named in ``_OPTIONAL`` may be None. (The key was hashed
    already by the store's look-up.) The common, valid case runs in C.
    """
    spec = _SPECS.get(type(call))
    if spec is None:
        spec = _SPECS[type(call)] = _Spec(call._fields)
    if spec.limit >= 0:
        limit = call[spec.limit]
        if type(limit) is not int or limit < -1:
            _check_limit(limit)
    if all(map(callable, spec.required(call))):
        for value in spec.optional(call):
            if value is not None and not callable(value):
                break
        else:
            return
    for name, value in zip(call._fields, call, strict=True):
        if name not in _NOT_CALLBACKS:
            check_callback(name, value)


def check_callback(name: str, callback: object) -> None:
    if callback is None and name in _OPTIONAL:
        return
    if not callable(callback):
        raise ArgumentTypeError(f"{name} must be callable, got {type(callback).__name__}")


def _check_limit(max_follow_up_requests: object) -> None:
    if not isinstance(max_follow_up_requests, int) or isinstance(max_follow_up_requests, bool):
        raise ArgumentTypeError(
            f"max_follow_up_requests must be an int, got {type(max_follow_up_requests).__name__}"
        )
    if max_follow_up_requests < -1:
        raise InvalidArgumentError(
            f"max_follow_up_requests must be >= 0, or -1 for no limit; got {max_follow_up_requests}"
        )
