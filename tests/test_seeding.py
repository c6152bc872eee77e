"""A call that takes a key's lock seeds the key's server revision from the state."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import attrs
import pytest
from fakes import KEY, Doc, DocStore, FakeServer

from optisync import PushMetadata, PushOutcome, Store


async def test_the_server_revision_is_known_right_after_the_first_call(
    server: FakeServer,
) -> None:
    async with DocStore(server) as store:
        store.emit(Doc(liked=False, revision=100))  # restored from disk after a restart
        done = store.toggle()
        assert store.server_revision(KEY) == 100
        (await server.request(1)).respond(True, server_revision=101)
        await done
        assert store.server_revision(KEY) == 101


async def test_a_stale_push_that_cannot_read_the_state_is_ignored_after_a_restart(
    server: FakeServer,
) -> None:
    async with DocStore(server) as store:
        store.emit(Doc(liked=True, revision=100))  # restored from disk after a restart
        done = store.toggle()  # liked=False, the first request after the restart
        request = await server.request(1)
        # A late push of revision 50, handled by code that cannot read the state.
        stale = store.server_push(
            key=KEY,
            push_metadata=PushMetadata(server_revision=50, local_revision=9, device_id=2),
            apply_server_push_to_state=lambda s, k, r: attrs.evolve(s, liked=True, revision=r),
            get_server_revision_from_state=lambda key: -1,
        )
        assert stale is PushOutcome.STALE
        assert store.state == Doc(liked=False, revision=100)
        assert store.server_revision(KEY) == 100
        request.respond(False, server_revision=101)
        await done
        assert store.state.liked is False


@attrs.frozen
class Items:
    liked: dict[str, bool] = attrs.field(factory=dict)
    revisions: dict[str, int] = attrs.field(factory=dict)


class ItemStore(Store[Items]):
    def __init__(self, server: FakeServer, state: Items) -> None:
        super().__init__(state, device_id=1)
        self.server = server

    def toggle(self, item: str) -> Awaitable[None]:
        return self.optimistic_sync_with_push(
            key=("like", item),
            value_to_apply=lambda: not self.state.liked.get(item, False),
            apply_optimistic_value_to_state=lambda s, v: attrs.evolve(
                s, liked={**s.liked, item: v}
            ),
            get_value_from_state=lambda s: s.liked.get(item, False),
            send_value_to_server=self.server.send,
            get_server_revision_from_state=lambda key: self.state.revisions.get(key[1], -1),
        )


async def test_each_item_key_is_seeded_from_its_own_stored_revision(server: FakeServer) -> None:
    state = Items(liked={"a": False, "b": True}, revisions={"a": 7, "b": 30})
    async with ItemStore(server, state) as store:
        done = store.toggle("a")
        assert store.server_revision(("like", "a")) == 7
        assert store.server_revision(("like", "b")) == -1  # not touched by a's call
        (await server.request(1)).respond(True, server_revision=31)
        await done
        other = store.toggle("b")
        assert store.server_revision(("like", "b")) == 30
        (await server.request(2)).respond(False, server_revision=32)
        await other


async def test_a_stored_revision_older_than_the_known_one_lowers_nothing(
    server: FakeServer,
) -> None:
    async with DocStore(server) as store:
        assert store.push(True, server_revision=40) is PushOutcome.APPLIED
        store.emit(Doc(liked=True, revision=3))  # an older snapshot written back
        done = store.toggle()
        assert store.server_revision(KEY) == 40
        (await server.request(1)).respond(False, server_revision=41)
        await done


@pytest.mark.parametrize(
    ("revision", "error"),
    [(LookupError("no revision"), LookupError), (-2, ValueError), ("7", TypeError)],
)
async def test_a_bad_stored_revision_fails_the_call_before_anything_changes(
    server: FakeServer, revision: Any, error: type[Exception]
) -> None:
    def get_revision(key: object) -> Any:
        if isinstance(revision, Exception):
            raise revision
        return revision

    async with DocStore(server) as store:
        with pytest.raises(error):
            store.toggle(get_server_revision_from_state=get_revision)
        assert store.state == Doc()
        assert store.local_revision(KEY) == 0
        assert not store.is_syncing(KEY)
        assert server.requests == []
