"""Persistence: state, revisions, device id and outbox survive a restart, and a kill."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest

from optisync import PushMetadata, PushOutcome, Store
from optisync.fields import SyncedMapWithPush, SyncRequest
from optisync.persistence import (
    LOCAL_REVISIONS_PER_RUN,
    AttrsCodec,
    JsonCodec,
    Persistence,
    Snapshot,
    SqliteSnapshotStorage,
    open_sqlite,
)


@attrs.frozen
class Post:
    title: str
    liked: bool = False


@attrs.frozen
class Feed:
    posts: dict[str, Post] = attrs.field(factory=dict)

    def set_liked(self, post: str, liked: bool) -> Feed:
        return attrs.evolve(
            self, posts={**self.posts, post: attrs.evolve(self.posts[post], liked=liked)}
        )


INITIAL = Feed({"a": Post("A"), "b": Post("B")})


class Server:
    def __init__(self) -> None:
        self.revision = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.writes: list[tuple[str, bool]] = []

    async def write(self, post: str, liked: bool) -> int:
        await self.gate.wait()
        self.revision += 1
        self.writes.append((post, liked))
        return self.revision


class FeedStore(Store[Feed]):
    liked = SyncedMapWithPush[Feed, str, bool](
        lambda state, post: state.posts[post].liked,
        lambda state, post, liked: state.set_liked(post, liked),
    )

    def __init__(self, saved: Persistence[Feed], server: Server) -> None:
        super().__init__(saved.state, device_id=saved.device_id)
        self.server = server

    @liked.sender
    async def send_liked(self, post: str, liked: bool, request: SyncRequest) -> int:
        return await self.server.write(post, liked)


async def start(path: Path, server: Server) -> tuple[Persistence[Feed], FeedStore]:
    saved = await open_sqlite(path, AttrsCodec(Feed), initial=INITIAL)
    store = FeedStore(saved, server)
    saved.attach(store)
    return saved, store


async def stop(saved: Persistence[Feed], store: FeedStore) -> None:
    await store.close()
    await saved.close()


async def until_synced(store: Store[Feed], key: object) -> None:
    synced = asyncio.Event()
    stop = store.subscribe_sync_status(lambda _: None if store.is_syncing(key) else synced.set())
    if store.is_syncing(key):
        await synced.wait()
    stop()


async def test_state_revisions_and_device_id_survive_a_restart(tmp_path: Path) -> None:
    path, server = tmp_path / "device.sqlite3", Server()
    saved, store = await start(path, server)
    first_id = store.device_id
    await store.liked.set("a", True)
    other = PushMetadata(server_revision=9, local_revision=1, device_id=first_id + 1)
    store.liked.push("b", True, other)
    await stop(saved, store)

    saved, store = await start(path, server)
    assert store.device_id == first_id
    assert store.state == INITIAL.set_liked("a", True).set_liked("b", True)
    assert (store.liked.server_revision("a"), store.liked.server_revision("b")) == (1, 9)
    # A replay of the push, after reconnecting, is recognised as stale.
    assert store.liked.push("b", False, other) is PushOutcome.STALE
    assert store.liked["b"] is True
    await stop(saved, store)


async def test_a_new_file_gets_a_device_id_that_is_saved_at_once(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    saved = await open_sqlite(path, JsonCodec(), initial=0, new_device_id=lambda: 77)
    await saved.close()  # nothing was attached or changed
    again = await open_sqlite(path, JsonCodec(), initial=0, new_device_id=lambda: 78)
    assert again.device_id == 77
    await again.close()


async def test_the_device_secret_is_made_with_the_id_and_kept_for_good(tmp_path: Path) -> None:
    path = tmp_path / "device.sqlite3"
    first = await open_sqlite(path, JsonCodec(), initial=0)
    secret = first.device_secret
    assert len(secret) == 43  # secrets.token_urlsafe(32): 256 bits
    await first.close()
    again = await open_sqlite(path, JsonCodec(), initial=0)
    assert again.device_secret == secret
    other = await open_sqlite(tmp_path / "other.sqlite3", JsonCodec(), initial=0)
    assert other.device_secret != secret  # one per device
    await again.close()
    await other.close()


async def test_a_change_in_flight_is_saved_in_the_outbox_and_resent_after_a_restart(
    tmp_path: Path,
) -> None:
    path, server = tmp_path / "device.sqlite3", Server()
    server.gate.clear()  # the server never answers in this run
    saved, store = await start(path, server)
    store.liked.set("a", True)
    await saved.flush()
    snapshot = await saved.storage.load()
    assert snapshot is not None
    assert snapshot.outbox == frozenset({'["liked", "a"]'})
    await stop(saved, store)  # the app quits with the request unanswered

    server.gate.set()
    saved, store = await start(path, server)
    assert saved.restored_outbox == frozenset({'["liked", "a"]'})
    assert store.liked.is_pending("a")
    await until_synced(store, store.liked.key("a"))
    assert server.writes == [("a", True)]
    await saved.flush()
    snapshot = await saved.storage.load()
    assert snapshot is not None
    assert snapshot.outbox == frozenset()
    assert snapshot.server_revisions == {'["liked", "a"]': 1}
    await stop(saved, store)


async def test_an_item_id_that_json_cannot_keep_is_reported_with_its_name(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    class Grid(Store[dict[tuple[int, int], bool]]):
        cell = SyncedMapWithPush[dict[tuple[int, int], bool], tuple[int, int], bool](
            lambda state, cell: state.get(cell, False),
            lambda state, cell, on: {**state, cell: on},
        )

        def on_error(self, error: BaseException) -> None:
            errors.append(error)

    saved = await open_sqlite(tmp_path / "grid.sqlite3", JsonCodec(), initial={})
    store = Grid({}, device_id=saved.device_id)
    saved.attach(store)
    meta = PushMetadata(server_revision=1, local_revision=1, device_id=saved.device_id + 1)
    store.cell.push((1, 2), True, meta)
    await saved.flush()
    assert errors
    assert all(isinstance(error, TypeError) for error in errors)
    assert "item (1, 2) of field 'cell'" in str(errors[0])
    await store.close()
    await saved.close()


async def test_attaching_a_second_store_is_refused(tmp_path: Path) -> None:
    saved = await open_sqlite(tmp_path / "x.sqlite3", JsonCodec(), initial=0)
    saved.attach(Store(0, device_id=saved.device_id))
    with pytest.raises(RuntimeError, match="already attached"):
        saved.attach(Store(0, device_id=saved.device_id))
    await saved.close()


def test_the_attrs_codec_round_trips_nested_attrs_classes() -> None:
    codec = AttrsCodec(Feed)
    state = INITIAL.set_liked("b", True)
    assert codec.decode(codec.encode(state)) == state


async def test_a_closed_storage_refuses_to_save(tmp_path: Path) -> None:
    storage = SqliteSnapshotStorage(tmp_path / "x.sqlite3")
    await storage.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await storage.save(Snapshot(1, b"0", {}, frozenset()))


# -- a kill at any point -------------------------------------------------------------

_WRITER = """
    import asyncio, sys
    from optisync.persistence import Snapshot, SqliteSnapshotStorage

    async def main() -> None:
        storage = SqliteSnapshotStorage(sys.argv[1])
        for n in range(1, 20_001):  # bounded: the parent kills it long before
            keys = {f'["k", {i}]': n for i in range(50)}
            await storage.save(Snapshot(7, str(n).encode(), keys, frozenset({f'["k", {n % 50}]'})))
            print(n, flush=True)

    asyncio.run(main())
"""


@pytest.mark.parametrize("kill_after", [1, 25, 200])
def test_a_kill_mid_writes_leaves_the_last_committed_snapshot_whole(
    tmp_path: Path, kill_after: int
) -> None:
    script, path = tmp_path / "writer.py", tmp_path / "crash.sqlite3"
    script.write_text(textwrap.dedent(_WRITER), encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    committed = 0
    while committed < kill_after:
        line = child.stdout.readline()
        assert line, "the writer ended before it was killed"
        committed = int(line)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    async def load() -> Snapshot | None:
        storage = SqliteSnapshotStorage(path)
        try:
            return await storage.load()
        finally:
            await storage.close()

    snapshot = asyncio.run(load())
    assert snapshot is not None
    n = int(snapshot.state)
    assert n >= committed  # nothing reported as committed is lost
    assert set(snapshot.server_revisions.values()) == {n}  # one commit, whole
    assert snapshot.outbox == frozenset({f'["k", {n % 50}]'})


async def test_a_saved_change_of_an_item_gone_from_the_state_is_reported_not_fatal(
    tmp_path: Path,
) -> None:
    path, server = tmp_path / "device.sqlite3", Server()
    server.gate.clear()
    saved, store = await start(path, server)
    store.liked.set("a", True)
    store.liked.set("b", True)
    await saved.flush()
    await stop(saved, store)

    errors: list[BaseException] = []

    class Forgetful(FeedStore):
        def on_error(self, error: BaseException) -> None:
            errors.append(error)

    server.gate.set()
    saved = await open_sqlite(path, AttrsCodec(Feed), initial=INITIAL)
    gone = Feed({"b": saved.state.posts["b"]})  # post "a" was deleted meanwhile
    store = Forgetful(saved, server)
    store.emit(gone)
    saved.attach(store)
    assert [type(error) for error in errors] == [KeyError]
    await until_synced(store, store.liked.key("b"))
    assert server.writes == [("b", True)]
    await stop(saved, store)


# -- local revisions across runs ----------------------------------------------------


class EchoingStore(Store[dict[str, bool]]):
    """A device whose sender records each request and waits for the test to answer it."""

    liked = SyncedMapWithPush[dict[str, bool], str, bool](
        lambda state, post: state.get(post, False),
        lambda state, post, liked: {**state, post: liked},
    )

    def __init__(self, saved: Persistence[dict[str, bool]]) -> None:
        super().__init__(saved.state, device_id=saved.device_id)
        self.requests: list[SyncRequest] = []
        self.answer = asyncio.Event()

    @liked.sender
    async def send_liked(self, post: str, liked: bool, request: SyncRequest) -> int:
        self.requests.append(request)
        await self.answer.wait()
        return 100 + len(self.requests)


async def test_each_open_raises_the_local_revision_base_and_saves_it_at_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "device.sqlite3"
    bases = []
    for _ in range(3):
        saved = await open_sqlite(path, JsonCodec(), initial={})
        bases.append(saved.local_revision_base)
        # Saved by open itself: a run that crashes before its first save still moved it.
        snapshot = await saved.storage.load()
        assert snapshot is not None
        assert snapshot.local_revision_base == saved.local_revision_base
        await saved.close()
    assert bases == [0, LOCAL_REVISIONS_PER_RUN, 2 * LOCAL_REVISIONS_PER_RUN]


async def test_the_echo_of_a_write_sent_before_a_restart_does_not_undo_the_newer_tap(
    tmp_path: Path,
) -> None:
    # Run 1 sends liked=True; the server commits it but the answer never comes back.
    # The user taps again (liked=False) and the app restarts before anything answers.
    path = tmp_path / "device.sqlite3"
    saved = await open_sqlite(path, JsonCodec(), initial={})
    store = EchoingStore(saved)
    saved.attach(store)
    store.liked.set("a", True)
    await asyncio.sleep(0)
    store.liked.set("a", False)
    [sent_before] = store.requests
    await store.close()
    await saved.close()

    # Run 2 restores liked=False and resends it; then the server's push of run 1's
    # write (its own device id, its local revision) arrives.
    saved = await open_sqlite(path, JsonCodec(), initial={})
    store = EchoingStore(saved)
    saved.attach(store)
    await asyncio.sleep(0)
    [resent] = store.requests
    assert resent.local_revision > sent_before.local_revision
    echo = PushMetadata(
        server_revision=50, local_revision=sent_before.local_revision, device_id=store.device_id
    )
    assert store.liked.push("a", True, echo) is PushOutcome.SELF_ECHO
    assert store.liked["a"] is False
    store.answer.set()
    await until_synced(store, store.liked.key("a"))
    assert store.liked["a"] is False
    await store.close()
    await saved.close()


async def test_attach_starts_the_store_at_the_persisted_base_or_says_how_to_build_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "device.sqlite3"
    await (await open_sqlite(path, JsonCodec(), initial=0)).close()
    saved = await open_sqlite(path, JsonCodec(), initial=0)
    store = Store(0, device_id=saved.device_id)
    saved.attach(store)
    assert store.local_revision_base == LOCAL_REVISIONS_PER_RUN
    assert store.local_revision("k") == LOCAL_REVISIONS_PER_RUN
    await saved.close()

    saved = await open_sqlite(path, JsonCodec(), initial=0)
    with pytest.raises(ValueError, match=r"local_revision_base=saved\.local_revision_base"):
        saved.attach(Store(0, device_id=saved.device_id, local_revision_base=5))
    same = Store(0, device_id=saved.device_id, local_revision_base=saved.local_revision_base)
    saved.attach(same)  # the persisted base, given explicitly, is fine
    await saved.close()

    saved = await open_sqlite(path, JsonCodec(), initial=0)
    changed = Store(0, device_id=saved.device_id)
    async with changed:

        async def send(value: int) -> None:
            pass

        await changed.optimistic_sync(
            key="k",
            value_to_apply=lambda: 1,
            apply_optimistic_value_to_state=lambda state, value: value,
            get_value_from_state=lambda state: state,
            send_value_to_server=send,
        )
        with pytest.raises(RuntimeError, match="already made a change"):
            saved.attach(changed)
    await saved.close()


async def test_a_file_from_before_the_local_revision_base_opens_and_gets_one(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path)
    connection.executescript(
        """
        CREATE TABLE optisync_snapshot (
            id INTEGER PRIMARY KEY CHECK (id = 1), device_id INTEGER NOT NULL, state BLOB NOT NULL
        );
        CREATE TABLE optisync_revisions (key TEXT PRIMARY KEY, revision INTEGER NOT NULL);
        CREATE TABLE optisync_outbox (key TEXT PRIMARY KEY);
        INSERT INTO optisync_revisions VALUES ('["liked", "a"]', 4);
        """
    )
    connection.execute("INSERT INTO optisync_snapshot VALUES (1, 31, ?)", (b'{"a": true}',))
    connection.commit()
    connection.close()
    saved = await open_sqlite(path, JsonCodec(), initial={})
    assert (saved.device_id, saved.state) == (31, {"a": True})
    assert saved.local_revision_base == LOCAL_REVISIONS_PER_RUN
    secret = saved.device_secret  # a file from before secrets gets one at its first open
    assert len(secret) == 43
    await saved.close()
    reopened = await open_sqlite(path, JsonCodec(), initial={})
    assert reopened.device_secret == secret
    await reopened.close()


def test_a_storage_opened_two_million_times_refuses_to_pass_two_to_the_53() -> None:
    from optisync.persistence import _next_base

    last = 2**53 - 1 - 2 * LOCAL_REVISIONS_PER_RUN
    assert _next_base(last) == last + LOCAL_REVISIONS_PER_RUN
    with pytest.raises(RuntimeError, match="start a new storage"):
        _next_base(last + 1)
