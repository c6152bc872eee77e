"""Row 2: the cost of a tap on a key whose request is in flight, against a bare emit.

Both sides make the same change to the same state with the same callbacks:
the README's ``Post`` (a frozen attrs class) toggled with ``attrs.evolve``.
The baseline is what an app without optisync would do: compute the new state
and ``emit`` it. The optisync side calls ``optimistic_sync_with_push`` on a
key that stays locked (its first request is held by the server), so each call
applies the change, counts a local revision and is coalesced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

import attrs

from optisync import Store

from ._common import Row, fmt_ns, fmt_ratio, median_ns_per_op, timed_ns

__all__ = ["OPS", "REPEATS", "Post", "measure", "measure_ns"]

OPS = 20_000
REPEATS = 9
TARGET = 1.5


@attrs.frozen
class Post:
    """The README's state: a liked flag and its server revision."""

    liked: bool = False
    revision: int = -1


def _toggled(post: Post) -> bool:
    return not post.liked


def _with_liked(post: Post, liked: bool) -> Post:
    return attrs.evolve(post, liked=liked)


def _liked(post: Post) -> bool:
    return post.liked


def _revision(key: Hashable) -> int:
    return -1


async def measure_ns(ops: int = OPS, repeats: int = REPEATS) -> tuple[float, float]:
    """Median ns per call: (optisync on a locked key, bare emit)."""
    held: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(
        value: bool, local_revision: int, device_id: int, inform: Callable[[int], None]
    ) -> None:
        await held
        inform(1)

    async with Store(Post(), device_id=1) as store:

        def sync_tap() -> object:
            return store.optimistic_sync_with_push(
                key="liked",
                value_to_apply=lambda: _toggled(store.state),
                apply_optimistic_value_to_state=_with_liked,
                get_value_from_state=_liked,
                send_value_to_server=send,
                get_server_revision_from_state=_revision,
            )

        def emit_tap() -> None:
            store.emit(_with_liked(store.state, _toggled(store.state)))

        def run_sync() -> None:
            for _ in range(ops):
                sync_tap()

        def run_emit() -> None:
            for _ in range(ops):
                emit_tap()

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
    """The hot-path row."""
    sync_ns, emit_ns = asyncio.run(measure_ns(ops, repeats))
    ratio = sync_ns / emit_ns
    return [
        Row(
            number="2",
            measure="hot path: a call on a locked key vs a bare emit",
            optisync=fmt_ns(sync_ns),
            baseline=f"{fmt_ns(emit_ns)} (emit)",
            ratio=fmt_ratio(ratio),
            target=f"<= {TARGET}x",
            met=ratio <= TARGET,
        )
    ]
