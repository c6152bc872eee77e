"""Argument checks shared by the sync strategies: fail at call time, before any change."""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["check_sync_arguments"]

_OPTIONAL = frozenset(
    {"apply_server_response_to_state", "on_finish", "if_should_send_another_request"}
)


def check_sync_arguments(key: Hashable, max_follow_up_requests: int, **callbacks: object) -> None:
    """Raise TypeError/ValueError for a bad key, limit or callback."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(f"key must be hashable, got {type(key).__name__}: {key!r}") from None
    if not isinstance(max_follow_up_requests, int) or isinstance(max_follow_up_requests, bool):
        raise TypeError(
            f"max_follow_up_requests must be an int, got {type(max_follow_up_requests).__name__}"
        )
    if max_follow_up_requests < -1:
        raise ValueError(
            f"max_follow_up_requests must be >= 0, or -1 for no limit; got {max_follow_up_requests}"
        )
    for name, callback in callbacks.items():
        if callback is None and name in _OPTIONAL:
            continue
        if not callable(callback):
            raise TypeError(f"{name} must be callable, got {type(callback).__name__}")
