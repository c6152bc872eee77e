"""The device side: one user's todo list and the shared one, synced through the web app.

A store with two declared fields bound to scopes: ``mine`` under
``user/<name>/``, ``shared`` under ``team/``. Served by the library's
client, the device subscribes to just those two prefixes; the server's
grants (from the user's JWT) would refuse anything else anyway.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any

import attrs

from optisync import Store
from optisync.device import Device, open_device
from optisync.fields import SyncedMapWithPush
from optisync.persistence import AttrsCodec


@attrs.frozen
class Lists:
    """Item id -> title, for the user's own list and the shared one."""

    mine: dict[str, str] = attrs.field(factory=dict)
    shared: dict[str, str] = attrs.field(factory=dict)


def _without(items: dict[str, str], item: str) -> dict[str, str]:
    return {key: title for key, title in items.items() if key != item}


class ListsStore(Store[Lists]):
    mine = SyncedMapWithPush[Lists, str, str](
        lambda lists, item: lists.mine[item],
        lambda lists, item, title: attrs.evolve(lists, mine={**lists.mine, item: title}),
        remove=lambda lists, item: attrs.evolve(lists, mine=_without(lists.mine, item)),
        contains=lambda lists, item: item in lists.mine,
        scope=lambda store: f"user/{store.user}/",
    )
    shared = SyncedMapWithPush[Lists, str, str](
        lambda lists, item: lists.shared[item],
        lambda lists, item, title: attrs.evolve(lists, shared={**lists.shared, item: title}),
        remove=lambda lists, item: attrs.evolve(lists, shared=_without(lists.shared, item)),
        contains=lambda lists, item: item in lists.shared,
        scope="team/",
    )

    def __init__(self, state: Lists, *, user: str, device_id: int) -> None:
        self.user = user  # before the fields are served: their scope reads it
        super().__init__(state, device_id=device_id)


def sync_url(base_url: str) -> str:
    """The WebSocket URL of the app's sync endpoint: ``http://host`` -> ``ws://host/sync``."""
    return base_url.replace("http", "ws", 1).rstrip("/") + "/sync"


async def log_in(base_url: str, user: str, password: str) -> str:
    """``POST /login`` and return the access token (off the event loop: urllib blocks)."""
    body = json.dumps({"username": user, "password": password}).encode()
    request = urllib.request.Request(
        base_url.rstrip("/") + "/login", body, {"Content-Type": "application/json"}
    )

    def post() -> Any:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    answer = await asyncio.to_thread(post)
    return str(answer["access_token"])


def token_provider(base_url: str, user: str, password: str) -> Callable[[], Awaitable[str]]:
    """A fresh token at each connect and before the current one expires.

    A real app would use a refresh token instead of keeping the password.
    """
    return partial(log_in, base_url, user, password)


def open_lists(
    base_url: str, user: str, password: str, path: str
) -> AbstractAsyncContextManager[Device[ListsStore]]:
    """The user's device, saved at ``path``, synced through the app at ``base_url``."""
    return open_device(
        partial(ListsStore, user=user),
        sync_url(base_url),
        path,
        AttrsCodec(Lists),
        Lists(),
        token=token_provider(base_url, user, password),
    )
