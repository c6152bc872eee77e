"""Row 2: the cost of a tap on a key whose request is in flight, against a bare emit.

The baseline is what an app without optisync would do: compute the new state
and ``emit`` it. The optisync side calls ``optimistic_sync_with_push`` on a
key that stays locked (its first request is held by the server), so each call
applies the change, counts a local revision and is coalesced. Both sides make
the same change with the same callbacks, in two variants:

* the README's ``Post`` (a frozen attrs class) toggled with ``attrs.evolve``,
  as an app would write it; ``attrs.evolve`` costs about a microsecond on
  both sides, which hides part of optisync's own cost in the ratio;
* an int state incremented, whose change costs next to nothing: the ratio
  shows optisync's own work per call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs

from optisync import Store

from ._common import (
    Row,
    fmt_ns,
    fmt_ratio,
    incremented,
    itself,
    median_ns_per_op,
    replaced,
    timed_ns,
    unknown_revision,
)

__all__ = ["INT", "OPS", "POST", "REPEATS", "Change", "Post", "measure", "measure_ns"]

OPS = 20_000
REPEATS = 9
TARGET = 1.5

S = TypeVar("S")


@attrs.frozen
class Post:
    """The README's state: a liked flag and its server revision."""

    liked: bool = False
    revision: int = -1


@attrs.frozen
class Change(Generic[S]):
    """A state, and the callbacks that compute, apply and read its next value."""

    name: str
    initial: S
    next_value: Callable[[S], Any]
    apply: Callable[[S, Any], S]
    value: Callable[[S], Any]


def _toggled(post: Post) -> bool:
    return not post.liked


def _with_liked(post: Post, liked: bool) -> Post:
    return attrs.evolve(post, liked=liked)


def _liked(post: Post) -> bool:
    return post.liked


POST: Change[Post] = Change("attrs state", Post(), _toggled, _with_liked, _liked)
INT: Change[int] = Change("int state", 0, incremented, replaced, itself)


async def measure_ns(
    change: Change[Any] = POST, ops: int = OPS, repeats: int = REPEATS
) -> tuple[float, float]:
    """Median ns per call: (optisync on a locked key, bare emit)."""
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(
        value: object, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        await held
        inform(1)

    next_value, apply = change.next_value, change.apply
    async with Store(change.initial, device_id=1) as store:

        def sync_tap() -> object:
            return store.optimistic_sync_with_push(
                key="liked",
                value_to_apply=lambda: next_value(store.state),
                apply_optimistic_value_to_state=apply,
                get_value_from_state=change.value,
                send_value_to_server=send,
                get_server_revision_from_state=unknown_revision,
            )

        def run_sync() -> None:
            for _ in range(ops):
                sync_tap()

        def run_emit() -> None:
            for _ in range(ops):
                store.emit(apply(store.state, next_value(store.state)))

        sync_tap()  # takes the lock; the held request keeps it
        await asyncio.sleep(0)  # the request is now in flight
        if not store.is_syncing("liked"):
            raise AssertionError("the key should be locked")
        sync_samples, emit_samples = [], []
        for _ in range(repeats):  # interleaved, so drift hits both sides alike
            sync_samples.append(timed_ns(run_sync))
            emit_samples.append(timed_ns(run_emit))
        held.set_result(None)
    return median_ns_per_op(sync_samples, ops), median_ns_per_op(emit_samples, ops)


def measure(ops: int = OPS, repeats: int = REPEATS) -> list[Row]:
    """The hot-path rows: the attrs state, then the int state."""
    rows = []
    for change in (POST, INT):
        sync_ns, emit_ns = asyncio.run(measure_ns(change, ops, repeats))
        ratio = sync_ns / emit_ns
        rows.append(
            Row(
                number="2",
                measure=change.name,
                optisync=fmt_ns(sync_ns),
                baseline=f"{fmt_ns(emit_ns)} (emit)",
                ratio=fmt_ratio(ratio),
                target=f"<= {TARGET}x",
                met=ratio <= TARGET,
            )
        )
    return rows
