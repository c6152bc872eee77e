"""The handshake reaches the authenticator on both transports; the endpoint mounts in an app.

The protocol, security and limits suites run on both transports through the
``server`` fixture (conftest.py); these are what only a mounted endpoint, or
the handshake, adds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from optisync.server import (
    AuthRefusedError,
    Grant,
    Handshake,
    SqliteStorage,
    SyncServer,
)
from optisync.wire import Hello
from tests.server.conftest import serving, uvicorn_serving

pytest.importorskip("starlette", reason="the asgi extra is not installed")
fastapi = pytest.importorskip("fastapi", reason="fastapi (the test extra) is not installed")

from optisync.server.asgi import SyncEndpoint  # noqa: E402

HELLO = {"type": "hello", "device_id": 1, "since": 0}


class Recording:
    """A HandshakeAuthenticator that admits a session cookie and keeps what it saw."""

    def __init__(self) -> None:
        self.seen: list[Handshake] = []

    async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant | None:
        self.seen.append(handshake)
        return Grant("alice") if handshake.cookies.get("session") == "s1" else None


RECORDING = Recording()


@pytest.mark.parametrize("authenticate", [RECORDING])
async def test_a_handshake_authenticator_sees_the_request_headers_cookies_and_query(
    server: tuple[SyncServer, str],
) -> None:
    sync_server, url = server
    RECORDING.seen.clear()
    headers = {"Authorization": "Bearer tok", "Cookie": "session=s1; theme=dark"}
    async with connect(f"{url}?room=7&room=8", additional_headers=headers) as connection:
        await connection.send(json.dumps(HELLO))
        assert json.loads(await connection.recv())["type"] == "welcome"
        # The connection keeps its handshake and the grant it was admitted with.
        peer = sync_server._peers[1]
        assert (peer.handshake, peer.grant.name) == (RECORDING.seen[0], "alice")
    [seen] = RECORDING.seen
    assert seen.bearer_token() == "tok"
    assert seen.cookies == {"session": "s1", "theme": "dark"}
    assert seen.query == {"room": "8"}  # the last of a repeated parameter
    assert (seen.path, seen.host) == (urlparse(url).path or "/", "127.0.0.1")


@pytest.mark.parametrize("authenticate", [RECORDING])
async def test_a_handshake_authenticator_that_returns_none_refuses_unauthorized(
    url: str,
) -> None:
    async with connect(url, additional_headers={"Cookie": "session=stolen"}) as connection:
        await connection.send(json.dumps(HELLO))
        error = json.loads(await connection.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await connection.recv()
    assert error["code"] == "unauthorized"
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "unauthorized")


async def _expired_hello(hello: Hello) -> Grant | None:
    raise AuthRefusedError("the token has expired", code="token_expired")


class _ExpiredHandshake:
    async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant | None:
        raise AuthRefusedError("the token has expired", code="token_expired")


@pytest.mark.parametrize("authenticate", [_expired_hello, _ExpiredHandshake()])
async def test_an_auth_refusal_sends_its_code_and_message_and_closes_1008_with_the_code(
    url: str,
) -> None:
    async with connect(url) as connection:
        await connection.send(json.dumps(HELLO))
        error = json.loads(await connection.recv())
        with pytest.raises(ConnectionClosed) as closed:
            await connection.recv()
    assert (error["code"], error["message"]) == ("token_expired", "the token has expired")
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token_expired")


async def test_only_the_allowed_origins_may_connect(transport: str) -> None:
    server = SyncServer(SqliteStorage(":memory:"), allowed_origins=["https://app.example"])
    async with serving(server, transport) as url:
        async with connect(url, origin="https://app.example") as connection:  # type: ignore[arg-type]
            await connection.send(json.dumps(HELLO))
            assert json.loads(await connection.recv())["type"] == "welcome"
        for origin in ("https://evil.example", None):
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, origin=origin)  # type: ignore[arg-type]
            assert refused.value.response.status_code == 403


# -- mounted in an app ---------------------------------------------------------------


async def commits(url: str) -> int:
    """A device's first write through ``url``: its server revision."""
    async with connect(url) as connection:
        await connection.send(json.dumps(HELLO))
        while json.loads(await connection.recv())["type"] != "ready":
            pass
        set_ = {"type": "set", "request_id": 1, "key": "k", "value": 1, "local_revision": 1}
        await connection.send(json.dumps(set_))
        while (answer := json.loads(await connection.recv()))["type"] != "ack":
            pass
        revision: int = answer["server_revision"]
        return revision


def _fastapi_app(endpoint: SyncEndpoint, how: str) -> Any:
    app = fastapi.FastAPI(lifespan=endpoint.lifespan)
    if how == "add_api_websocket_route":
        app.add_api_websocket_route("/sync", endpoint.serve)
    elif how == "mount":
        app.mount("/sync", endpoint)
    else:

        @app.websocket("/sync")
        async def sync(websocket: fastapi.WebSocket) -> None:
            await endpoint.serve(websocket)

    return app


@pytest.mark.parametrize(
    ("how", "path"),
    [
        ("add_api_websocket_route", "/sync"),
        ("mount", "/sync/"),  # a Mount matches the paths below it, not its own
        ("route calling serve", "/sync"),
    ],
)
async def test_a_fastapi_app_serves_sync_at_its_path(tmp_path: Path, how: str, path: str) -> None:
    endpoint = SyncEndpoint(SyncServer(SqliteStorage(tmp_path / "server.sqlite3")))
    async with uvicorn_serving(_fastapi_app(endpoint, how)) as port:
        assert await commits(f"ws://127.0.0.1:{port}{path}") == 1


async def test_the_endpoint_alone_is_an_app_with_its_own_lifespan(tmp_path: Path) -> None:
    endpoint = SyncEndpoint(SyncServer(SqliteStorage(tmp_path / "server.sqlite3")))
    async with uvicorn_serving(endpoint) as port:
        assert await commits(f"ws://127.0.0.1:{port}/any/path") == 1
