"""The seed's like button: ItemStore against an in-process fake server.

Run it with ``python -m examples.like_button``. It plays the two flows of the
guide and prints what the user sees, what is sent, and what the server holds:

1. like, unlike, like while request 1 is in flight: 2 requests;
2. like, unlike, then a push from another device: 1 request.

The fake server holds every response until the script releases it, so the
timeline is the same on every run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

import attrs

from optisync import PushMetadata, Store

OTHER_DEVICE = 99


@attrs.frozen
class ItemState:
    """What the app shows: liked flags by item, and server revisions by key."""

    liked: dict[str, bool] = attrs.field(factory=dict)
    revisions: dict[Hashable, int] = attrs.field(factory=dict)

    def set_liked(self, item_id: str, liked: bool) -> ItemState:
        return attrs.evolve(self, liked={**self.liked, item_id: liked})

    def set_revision(self, key: Hashable, revision: int) -> ItemState:
        return attrs.evolve(self, revisions={**self.revisions, key: revision})


@attrs.frozen
class SetLikedResponse:
    liked: bool
    server_revision: int


@attrs.frozen
class LikePush:
    item_id: str
    liked: bool
    server_revision: int
    local_revision: int
    device_id: int


class FakeServer:
    """Commits at once, answers when released; pushes are delivered by hand."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.liked: dict[str, bool] = {}
        self.revision = 0
        self.requests = 0
        self._held: list[asyncio.Future[None]] = []

    def commit(self, item_id: str, liked: bool, local_revision: int, device_id: int) -> LikePush:
        self.revision += 1
        self.liked[item_id] = liked
        return LikePush(item_id, liked, self.revision, local_revision, device_id)

    async def set_liked(
        self, item_id: str, liked: bool, *, local_revision: int, device_id: int
    ) -> SetLikedResponse:
        self.requests += 1
        number = self.requests
        push = self.commit(item_id, liked, local_revision, device_id)
        self.say(
            f"    server: request {number} set liked={liked} "
            f"(local_revision={local_revision}) -> server_revision={push.server_revision}"
        )
        held = asyncio.get_running_loop().create_future()
        self._held.append(held)
        await held
        return SetLikedResponse(liked, push.server_revision)

    async def release_next_response(self) -> None:
        """Let the oldest held response reach the client, and let it react."""
        self._held.pop(0).set_result(None)
        for _ in range(5):  # a few loop turns: the response, the follow-up send
            await asyncio.sleep(0)


class ItemStore(Store[ItemState]):
    """The seed's ItemCubit: toggle_like and handle_like_push."""

    def __init__(self, api: FakeServer, *, device_id: int | None = None) -> None:
        super().__init__(ItemState(), device_id=device_id)
        self.api = api

    def toggle_like(self, item_id: str) -> Awaitable[None]:
        async def send(
            liked: bool, local_revision: int, device_id: int, inform: Callable[[int], None]
        ) -> bool:
            response = await self.api.set_liked(
                item_id, liked, local_revision=local_revision, device_id=device_id
            )
            inform(response.server_revision)
            return response.liked

        return self.optimistic_sync_with_push(
            key=("toggle_like", item_id),
            value_to_apply=lambda: not self.state.liked.get(item_id, False),
            apply_optimistic_value_to_state=lambda state, liked: state.set_liked(item_id, liked),
            get_value_from_state=lambda state: state.liked.get(item_id, False),
            get_server_revision_from_state=lambda key: self.state.revisions.get(key, -1),
            send_value_to_server=send,
            apply_server_response_to_state=lambda state, liked: state.set_liked(item_id, liked),
        )

    def handle_like_push(self, push: LikePush) -> None:
        key = ("toggle_like", push.item_id)
        self.server_push(
            key=key,
            push_metadata=PushMetadata(
                server_revision=push.server_revision,
                local_revision=push.local_revision,
                device_id=push.device_id,
            ),
            get_server_revision_from_state=lambda key: self.state.revisions.get(key, -1),
            apply_server_push_to_state=lambda state, key, revision: state.set_liked(
                push.item_id, push.liked
            ).set_revision(key, revision),
        )


def describe(store: ItemStore, item_id: str) -> str:
    key = ("toggle_like", item_id)
    liked = store.state.liked.get(item_id, False)
    return f"state liked={liked!s:<5} local_revision={store.local_revision(key)}"


async def flow_coalescing(say: Callable[[str], None]) -> int:
    say("Flow 1: LIKE, UNLIKE, LIKE while request 1 is in flight")
    server = FakeServer(say)
    async with ItemStore(server, device_id=1) as store:
        first = store.toggle_like("post")
        say(f"  tap LIKE    -> {describe(store, 'post')}  (lock taken, request 1 sent)")
        await asyncio.sleep(0)  # the sync task sends request 1
        store.toggle_like("post")
        say(f"  tap UNLIKE  -> {describe(store, 'post')}  (locked: no request)")
        store.toggle_like("post")
        say(f"  tap LIKE    -> {describe(store, 'post')}  (locked: no request)")
        say("  request 1 completes: revision 1 < 3, follow-up sends the state's value")
        await server.release_next_response()
        say("  request 2 completes: revision 3 == 3, stable, lock released")
        await server.release_next_response()
        await first
        say(f"  end: {describe(store, 'post')}, server liked={server.liked['post']}")
    say(f"  requests sent: {server.requests}")
    return server.requests


async def flow_push(say: Callable[[str], None]) -> int:
    say("Flow 2: LIKE, UNLIKE, then a push from another device")
    server = FakeServer(say)
    async with ItemStore(server, device_id=1) as store:
        first = store.toggle_like("post")
        say(f"  tap LIKE    -> {describe(store, 'post')}  (lock taken, request 1 sent)")
        await asyncio.sleep(0)
        store.toggle_like("post")
        say(f"  tap UNLIKE  -> {describe(store, 'post')}  (locked: no request)")
        push = server.commit("post", False, local_revision=1, device_id=OTHER_DEVICE)
        revision = push.server_revision
        say(f"    server: device {OTHER_DEVICE} set liked=False -> server_revision={revision}")
        store.handle_like_push(push)
        say(f"  PUSH liked=False (server_revision={revision}) -> {describe(store, 'post')}")
        say("  request 1 completes: last change was a push, no follow-up; its response")
        say("  (server_revision=1) is older than the push's (2), so it is not applied")
        await server.release_next_response()
        await first
        say(f"  end: {describe(store, 'post')}, server liked={server.liked['post']}")
    say(f"  requests sent: {server.requests}")
    return server.requests


async def main() -> None:
    await flow_coalescing(print)
    print()
    await flow_push(print)


if __name__ == "__main__":
    asyncio.run(main())
