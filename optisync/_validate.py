"""Argument checks shared by the sync strategies: fail at call time, before any change."""

from __future__ import annotations

from collections.abc import Hashable

import attrs

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
    """Raise TypeError for a key that is not hashable."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"key must be hashable, got {type(key).__name__}: {key!r}") from None


def check_call(call: attrs.AttrsInstance) -> None:
    """Raise TypeError/ValueError for a bad key, limit or callback of one sync call.

    Every field of ``call`` but ``key`` and ``max_follow_up_requests`` is a
    callback; those named in ``_OPTIONAL`` may be None.
    """
    for field in attrs.fields(type(call)):
        value = getattr(call, field.name)
        if field.name == "key":
            check_key(value)
        elif field.name == "max_follow_up_requests":
            _check_limit(value)
        else:
            check_callback(field.name, value)


def check_callback(name: str, callback: object) -> None:
    if callback is None and name in _OPTIONAL:
        return
    if not callable(callback):
        raise TypeError(f"{name} must be callable, got {type(callback).__name__}")


def _check_limit(max_follow_up_requests: object) -> None:
    if not isinstance(max_follow_up_requests, int) or isinstance(max_follow_up_requests, bool):
        raise TypeError(
            f"max_follow_up_requests must be an int, got {type(max_follow_up_requests).__name__}"
        )
    if max_follow_up_requests < -1:
        raise ValueError(
            f"max_follow_up_requests must be >= 0, or -1 for no limit; got {max_follow_up_requests}"
        )
