"""The offline outbox: unreachable is not failed; the latest value gets through, once per key.

Every test runs on virtual time (``optisync.testing.run``): backoffs of
minutes cost nothing, and the order of events is the loop's, not the clock's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from optisync import PushMetadata, PushOutcome, Store, StoreClosedError, testing
from optisync.fields import SyncedMapWithPush, SyncRequest
from optisync.outbox import Backoff, Outbox
from optisync.persistence import JsonCodec, open_sqlite

NO_JITTER = Backoff(initial=1.0, maximum=60.0, jitter=0.0)


class FlakyServer:
    """Refuses connections while ``down``; records every write it takes."""

    def __init__(self) -> None:
        self.down = False
        self.refuse_with: Exception | None = None
        self.attempts = 0
        self.writes: list[tuple[str, bool]] = []
        self.attempted = asyncio.Event()

    async def write(self, item: str, liked: bool) -> int:
        self.attempts += 1
        self.attempted.set()
        await asyncio.sleep(0.1)  # latency, on virtual time
        if self.down:
            raise ConnectionRefusedError("the server is unreachable")
        if self.refuse_with is not None:
            raise self.refuse_with
        self.writes.append((item, liked))
        return len(self.writes)


class Likes(Store[dict[str, bool]]):
    liked = SyncedMapWithPush[dict[str, bool], str, bool](
        lambda state, item: state.get(item, False),
        lambda state, item, liked: {**state, item: liked},
    )

    def __init__(self, server: FlakyServer, state: dict[str, bool] | None = None, **kw: Any):
        super().__init__({} if state is None else state, **kw)
        self.server = server
        self.finished: list[Exception | None] = []

    @liked.sender
    async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int:
        return await self.server.write(item, liked)

    @liked.reloader
    async def fetch_liked(self, item: str) -> bool:
        return False


def run(scenario: Coroutine[Any, Any, None]) -> None:
    testing.run(scenario)


async def sleep_until(condition: Any, event: asyncio.Event) -> None:
    while not condition():
        event.clear()
        await event.wait()


def test_an_unreachable_server_keeps_the_change_on_screen_and_pending() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        async with Likes(server) as store:
            outbox = Outbox(store, backoff=NO_JITTER)
            store.liked.set("post", True)
            await sleep_until(lambda: server.attempts >= 3, server.attempted)
            assert store.liked["post"] is True  # not rolled back, not reloaded
            assert outbox.pending_keys() == {("liked", "post")}
            assert outbox.unreachable_keys() == {("liked", "post")}
            server.down = False
            await outbox.synced()
            assert server.writes == [("post", True)]
            assert outbox.unreachable_keys() == frozenset()

    run(scenario())


def test_taps_while_unreachable_coalesce_and_the_latest_value_is_what_is_resent() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        async with Likes(server) as store:
            outbox = Outbox(store, backoff=NO_JITTER)
            store.liked.set("post", True)  # attempt 1 sends True, and fails
            for liked in (False, True, False):
                store.liked.set("post", liked)
            assert len(outbox.pending_keys()) == 1  # one entry per key, however many taps
            await sleep_until(lambda: server.attempts >= 2, server.attempted)
            server.down = False
            await outbox.synced()
            assert server.writes[0] == ("post", False)  # the retry sent the latest value
            assert set(server.writes) == {("post", False)}
            assert store.liked["post"] is False

    run(scenario())


def test_a_refusal_is_not_retried_and_ends_in_the_reloader() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.refuse_with = PermissionError("read-only post")
        async with Likes(server) as store:
            Outbox(store, backoff=NO_JITTER)
            with pytest.raises(PermissionError):
                await store.liked.set("post", True)
            assert server.attempts == 1
            assert store.liked["post"] is False  # the reloader's value

    run(scenario())


def test_waits_between_attempts_follow_the_backoff() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        loop = asyncio.get_running_loop()
        starts: list[float] = []
        async with Likes(server) as store:
            Outbox(store, backoff=Backoff(initial=1.0, maximum=4.0, jitter=0.0))
            store.liked.set("post", True)
            while len(starts) < 5:
                await sleep_until(lambda: server.attempts > len(starts), server.attempted)
                starts.append(loop.time())
        gaps = [round(b - a, 6) for a, b in itertools.pairwise(starts)]
        # each gap: the failed attempt's latency (0.1) plus the backoff wait
        assert gaps == [1.1, 2.1, 4.1, 4.1]

    run(scenario())


def test_set_reachable_false_holds_the_sends_and_true_sends_them_at_once() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        async with Likes(server) as store:
            outbox = Outbox(store, backoff=Backoff(initial=3600.0, jitter=0.0))
            outbox.set_reachable(False)
            store.liked.set("post", True)
            store.liked.set("photo", True)
            await asyncio.sleep(10)
            assert server.attempts == 0
            assert outbox.unreachable_keys() == {("liked", "post"), ("liked", "photo")}
            outbox.set_reachable(True)
            await outbox.synced()
            assert sorted(server.writes) == [("photo", True), ("post", True)]

    run(scenario())


def test_retry_now_cuts_a_long_backoff_short() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        async with Likes(server) as store:
            hour = Backoff(initial=3600.0, maximum=3600.0, jitter=0.0)
            outbox = Outbox(store, backoff=hour)
            in_backoff = asyncio.Event()
            outbox.subscribe(lambda: in_backoff.set())  # marked just before the first wait
            store.liked.set("post", True)
            await in_backoff.wait()
            server.down = False
            outbox.retry_now()
            await outbox.synced()
            assert server.attempts == 2
            assert asyncio.get_running_loop().time() < 3600  # the hour-long wait was cut

    run(scenario())


def test_the_unreachable_listener_hears_going_offline_and_back() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        async with Likes(server) as store:
            outbox = Outbox(store, backoff=NO_JITTER)
            seen: list[bool] = []
            outbox.subscribe(lambda: seen.append(bool(outbox.unreachable_keys())))
            store.liked.set("post", True)
            await sleep_until(lambda: server.attempts >= 2, server.attempted)
            server.down = False
            await outbox.synced()
            assert seen == [True, False]

    run(scenario())


def test_synced_raises_when_the_store_closes_first() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        server.down = True
        store = Likes(server)
        outbox = Outbox(store, backoff=NO_JITTER)
        store.liked.set("post", True)
        waiting = asyncio.create_task(outbox.synced())
        await sleep_until(lambda: server.attempts >= 1, server.attempted)
        await store.close()
        with pytest.raises(StoreClosedError):
            await waiting

    run(scenario())


def test_a_second_outbox_for_one_store_is_refused() -> None:
    store = Likes(FlakyServer())
    Outbox(store)
    with pytest.raises(RuntimeError, match="already has an outbox"):
        Outbox(store)


def test_backoff_refuses_a_negative_or_non_numeric_wait() -> None:
    with pytest.raises(ValueError, match="maximum must be >= 0"):
        Backoff(maximum=-1.0)
    with pytest.raises(TypeError, match="jitter must be a number"):
        Backoff(jitter="1")  # type: ignore[arg-type]


def test_a_change_made_offline_survives_a_restart_made_offline(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    server = FlakyServer()
    server.down = True

    async def first_run() -> None:
        saved = await open_sqlite(path, JsonCodec(), initial={})
        store = Likes(server, saved.state, device_id=saved.device_id)
        Outbox(store, backoff=NO_JITTER)
        saved.attach(store)
        store.liked.set("post", True)
        await sleep_until(lambda: server.attempts >= 2, server.attempted)
        await store.close()  # the app is killed while offline
        await saved.close()

    async def second_run() -> None:
        server.attempted = asyncio.Event()  # this run's loop
        saved = await open_sqlite(path, JsonCodec(), initial={})
        store = Likes(server, saved.state, device_id=saved.device_id)
        outbox = Outbox(store, backoff=NO_JITTER)
        saved.attach(store)
        assert store.liked["post"] is True
        assert outbox.pending_keys() == {("liked", "post")}
        await sleep_until(lambda: bool(outbox.unreachable_keys()), server.attempted)
        server.down = False  # back online
        await outbox.synced()
        await store.close()
        await saved.close()

    run(first_run())
    assert server.writes == []
    run(second_run())
    assert server.writes == [("post", True)]


# -- a push while a change waits -------------------------------------------------------


async def waiting(outbox: Outbox) -> None:
    """Return once a key waits between attempts (its failed attempt is over)."""
    marked = asyncio.Event()
    stop = outbox.subscribe(marked.set)
    try:
        while not outbox.unreachable_keys():
            marked.clear()
            await marked.wait()
    finally:
        stop()


def other_device(store: Store[Any], server_revision: int) -> PushMetadata:
    return PushMetadata(server_revision, local_revision=0, device_id=store.device_id + 1)


@contextlib.asynccontextmanager
async def a_waiting_change_then_a_push(
    server: FlakyServer, *, transport_offline: bool = False
) -> AsyncIterator[tuple[Likes, Outbox]]:
    """liked=True waits for the server; then another device's liked=False is pushed."""
    async with Likes(server) as store:
        outbox = Outbox(store, backoff=NO_JITTER)
        if transport_offline:
            outbox.set_reachable(False)  # no attempt is made at all
        else:
            server.down = True  # attempts fail
        store.liked.set("post", True)
        await waiting(outbox)
        outcome = store.liked.push("post", False, other_device(store, server_revision=7))
        assert outcome is PushOutcome.APPLIED
        yield store, outbox


def test_a_push_after_the_last_tap_ends_the_wait_without_sending_anything() -> None:
    # The seed's rule for a follow-up holds for a retry: a push since the last tap is
    # the server's newer word. Sending the state now would write the other device's
    # value as this one's, over anything written after it.
    async def scenario() -> None:
        server = FlakyServer()
        async with a_waiting_change_then_a_push(server) as (store, outbox):
            server.down = False
            await outbox.synced()
            assert server.writes == []
            assert store.liked["post"] is False
            assert store.liked.server_revision("post") == 7

    run(scenario())


def test_a_push_while_the_transport_says_offline_also_ends_the_wait() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        async with a_waiting_change_then_a_push(server, transport_offline=True) as (store, outbox):
            outbox.set_reachable(True)
            await outbox.synced()
            assert (server.attempts, server.writes) == (0, [])
            assert store.liked["post"] is False

    run(scenario())


def test_a_tap_after_that_push_is_sent_when_the_server_is_back() -> None:
    async def scenario() -> None:
        server = FlakyServer()
        async with a_waiting_change_then_a_push(server) as (store, outbox):
            store.liked.set("post", True)  # the user taps again, after the push
            server.down = False
            await outbox.synced()
            # (The retry sends the latest value; the cycle's follow-up may repeat it.)
            assert set(server.writes) == {("post", True)}
            assert store.liked["post"] is True

    run(scenario())


# -- the runnable proof ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_offline_example_exits_0_with_every_phone_equal_to_the_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.offline"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every phone equals the server: True" in result.stdout
    assert "A's last tap (liked=False) won as last write wins says: True" in result.stdout
    assert "A: {'post': False} pending=['post']  (restored from its file)" in result.stdout


def test_the_offline_examples_check_fails_when_a_phone_differs() -> None:
    from examples import offline

    async def scenario() -> bool:
        server = testing.SimulatedServer()
        network = testing.SimulatedNetwork(server)
        a = offline.Device("A", offline.Radio(network.device(1)), print, saved=None)
        b = offline.Device("B", offline.Radio(network.device(2)), print, saved=None)
        server.write("post", True, local_revision=1, device_id=1)  # A's tap, won
        await network.settle()
        a.store.emit({})  # but A shows nothing
        ok = offline._check(server, [a, b], last_tap=True, say=lambda line: None)
        await a.stop()
        await b.stop()
        return ok

    assert testing.run(scenario()) is False
