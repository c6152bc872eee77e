"""Core bugs the reliability suite found, each as its smallest reproduction.

They were reported with ``xfail(strict=True)`` markers and fixed in the core
(commits a4c4330 and 6c80fc2); they stay here as regression tests.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from optisync import Store


def tap(store: Store[int], send: Any, on_finish: Any = None) -> Any:
    return store.optimistic_sync_with_push(
        key="k",
        value_to_apply=lambda: store.state + 1,
        apply_optimistic_value_to_state=lambda state, value: value,
        get_value_from_state=lambda state: state,
        send_value_to_server=send,
        get_server_revision_from_state=lambda key: -1,
        on_finish=on_finish,
    )


async def informs(value: int, local_revision: int, device_id: int, inform: Any) -> int:
    inform(1)
    return value


async def test_close_right_after_a_tap_frees_the_key() -> None:
    store: Store[int] = Store(0, device_id=1)
    tap(store, informs)
    await store.close()
    assert not store.is_syncing("k")


class Recording(Store[int]):
    def __init__(self) -> None:
        super().__init__(0, device_id=1)
        self.reported: list[BaseException] = []

    def on_error(self, error: BaseException) -> None:
        self.reported.append(error)


async def test_an_error_a_caller_received_does_not_also_go_to_on_error() -> None:
    store = Recording()
    failure = ValueError("server down")

    async def fails_at_once(value: int, local_revision: int, device_id: int, inform: Any) -> int:
        raise failure

    result = tap(store, fails_at_once)
    caller_got: list[BaseException] = []

    async def caller() -> None:
        try:
            await result
        except ValueError as error:
            caller_got.append(error)

    await asyncio.create_task(caller())
    await asyncio.sleep(0)  # _cycle_done has run
    assert caller_got == [failure]
    assert store.reported == []
    await store.close()


async def test_a_cancelled_error_from_send_with_the_store_open_reaches_on_finish() -> None:
    store: Store[int] = Store(0, device_id=1)
    finished: list[BaseException | None] = []

    async def cancelled_inside(value: int, local_revision: int, device_id: int, inform: Any) -> int:
        await asyncio.sleep(0)
        raise asyncio.CancelledError  # e.g. an HTTP client's own task was cancelled

    result = tap(store, cancelled_inside, on_finish=finished.append)
    with contextlib.suppress(BaseException):  # only on_finish matters here
        await result
    assert not store.is_closed
    assert len(finished) == 1
    await store.close()
