"""SyncClient with a token provider: a fresh token at each connect and before expiry.

Against a real server with :class:`~optisync.server.jwt.JwtAuth` (HS256, no
leeway) and tokens living one to two seconds: a refresh keeps the same
connection past the first token's expiry; an expiry without a refresh, or a
refused refresh, stops the client with a :class:`ServerRefusedError` naming
the code.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest

from optisync import Store
from optisync.client import ServerRefusedError, SyncClient, Traced
from optisync.server import SqliteStorage, SyncServer
from optisync.server.jwt import JwtAuth
from optisync.transport import SyncRequest
from optisync.wire import Authed

SECRET = "test-secret-of-at-least-thirty-two-bytes"
EVERYTHING = {"read": [""], "write": [""]}


def token(sub: str = "alice", exp: float | None = None) -> str:
    expires = exp if exp is not None else int(time.time()) + 300
    return jwt.encode({"sub": sub, "exp": expires, "sync": EVERYTHING}, SECRET)


def short_exp() -> int:
    """An ``exp`` one to two seconds ahead."""
    return math.ceil(time.time()) + 1


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    auth = JwtAuth(secret=SECRET, leeway=0)
    async with SyncServer(SqliteStorage(tmp_path / "s.sqlite3"), authenticate=auth).run(
        port=0
    ) as served:
        yield served


class Provider:
    """Hands out the tokens it was given, in order, and counts the calls."""

    def __init__(self, *tokens: str) -> None:
        self.tokens = list(tokens)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return self.tokens.pop(0)


async def test_a_token_provider_refreshes_before_expiry_on_the_same_connection(url: str) -> None:
    first_exp = short_exp()
    provider = Provider(token(exp=first_exp), token())
    authed = asyncio.Event()
    statuses: list[bool] = []

    def trace(traced: Traced) -> None:
        if isinstance(traced.message, Authed):
            authed.set()

    client = SyncClient(Store({}, device_id=1), url, token=provider, trace=trace)
    client.subscribe_status(statuses.append)
    async with client:
        await client.wait_online()
        await authed.wait()  # halfway through the first token's life
        await asyncio.sleep(max(0.0, first_exp - time.time()) + 0.2)  # past its expiry
        ack = await client.send("n", 1, SyncRequest("n", 1, 1))
        assert (ack.server_revision, provider.calls, statuses) == (1, 2, [True])


async def test_a_str_token_that_expires_stops_the_client_with_token_expired(url: str) -> None:
    offline = asyncio.Event()
    client = SyncClient(Store({}, device_id=1), url, token=token(exp=short_exp()))
    client.subscribe_status(lambda online: None if online else offline.set())
    client.start()
    await client.wait_online()
    await offline.wait()
    with pytest.raises(ServerRefusedError) as caught:
        await client.wait_online()
    assert caught.value.code == "token_expired"
    with pytest.raises(ServerRefusedError):
        await client.close()


async def test_a_refresh_for_another_user_is_refused_and_stops_the_client(url: str) -> None:
    provider = Provider(token(exp=short_exp()), token("mallory"))
    offline = asyncio.Event()
    client = SyncClient(Store({}, device_id=1), url, token=provider)
    client.subscribe_status(lambda online: None if online else offline.set())
    client.start()
    await client.wait_online()
    await offline.wait()
    with pytest.raises(ServerRefusedError, match="another principal") as caught:
        await client.wait_online()
    assert (caught.value.code, provider.calls) == ("unauthorized", 2)
    with pytest.raises(ServerRefusedError):
        await client.close()


async def test_a_refused_token_at_connect_names_its_code(url: str) -> None:
    client = SyncClient(Store({}, device_id=1), url, token=token(exp=int(time.time()) - 60))
    client.start()
    with pytest.raises(ServerRefusedError) as caught:
        await client.wait_online()
    assert caught.value.code == "token_expired"
    with pytest.raises(ServerRefusedError):
        await client.close()
