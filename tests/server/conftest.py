"""A server on loopback and raw protocol clients that speak to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from optisync.server import Limits, SqliteStorage, SyncServer
from optisync.server.security import Authenticator, allow_anyone


class RawDevice:
    """A protocol client with no library: sends JSON, reads JSON, in order."""

    def __init__(self, connection: ClientConnection, device_id: int) -> None:
        self.connection = connection
        self.device_id = device_id
        self.welcome: dict[str, Any] = {}
        self.replayed: list[dict[str, Any]] = []
        self.pushes: list[dict[str, Any]] = []  # live pushes skipped by receive_type
        self._next_id = 0

    async def send(self, message: dict[str, Any] | str) -> None:
        await self.connection.send(message if isinstance(message, str) else json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self.connection.recv())
        return result

    async def receive_type(self, kind: str) -> dict[str, Any]:
        """The next message of ``kind``; fails on any other message but pushes."""
        while True:
            message = await self.receive()
            if message["type"] == kind:
                return message
            assert message["type"] == "push", message
            self.pushes.append(message)

    async def set(self, key: str, value: Any, local_revision: int = 1) -> dict[str, Any]:
        self._next_id += 1
        await self.send(
            {
                "type": "set",
                "request_id": self._next_id,
                "key": key,
                "value": value,
                "local_revision": local_revision,
            }
        )
        return await self.receive_type("ack")

    async def get(self, key: str) -> dict[str, Any]:
        self._next_id += 1
        await self.send({"type": "get", "request_id": self._next_id, "key": key})
        return await self.receive_type("value")


Connect = Callable[..., Awaitable[RawDevice]]


@pytest.fixture
def limits() -> Limits:
    return Limits()


@pytest.fixture
def authenticate() -> Authenticator:
    return allow_anyone


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "server.sqlite3"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "standalone_only(reason): runs on the standalone server only (the asgi variant skips)",
    )


TRANSPORTS = ["standalone", "asgi"]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """What serves the test's server: websockets' own (``standalone``), or uvicorn (``asgi``).

    A test marked ``standalone_only(reason=...)`` skips its asgi variant.
    """
    marker = request.node.get_closest_marker("standalone_only")
    if request.param == "asgi" and marker is not None:
        pytest.skip(f"standalone only: {marker.kwargs['reason']}")
    return str(request.param)


@contextlib.asynccontextmanager
async def serving(
    sync_server: SyncServer, transport: str, path: str = "/sync"
) -> AsyncIterator[str]:
    """``sync_server`` served by ``transport`` on loopback; yields its URL."""
    if transport == "standalone":
        async with sync_server.run(port=0) as url:
            yield url
    else:
        async with asgi_server(sync_server, path) as url:
            yield url


@pytest.fixture
async def server(
    transport: str, database: Path, limits: Limits, authenticate: Authenticator
) -> AsyncIterator[tuple[SyncServer, str]]:
    """A server on loopback and its URL, on each transport (the ``transport`` fixture)."""
    sync_server = SyncServer(SqliteStorage(database), limits=limits, authenticate=authenticate)
    async with serving(sync_server, transport) as url:
        yield sync_server, url


@contextlib.asynccontextmanager
async def asgi_server(sync_server: SyncServer, path: str = "/sync") -> AsyncIterator[str]:
    """``sync_server`` mounted at ``path`` in a Starlette app under uvicorn; yields its URL."""
    pytest.importorskip("starlette", reason="the asgi extra is not installed")
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute

    from optisync.server.asgi import SyncEndpoint

    endpoint = SyncEndpoint(sync_server)
    app = Starlette(routes=[WebSocketRoute(path, endpoint)], lifespan=endpoint.lifespan)
    async with uvicorn_serving(app) as port:
        yield f"ws://127.0.0.1:{port}{path}"


@contextlib.asynccontextmanager
async def uvicorn_serving(app: Any) -> AsyncIterator[int]:
    """The ASGI ``app`` under uvicorn on 127.0.0.1, its lifespan run; yields its port.

    Started and stopped through uvicorn's ``Server.startup`` and a shutdown
    that waits for the connections' tasks (no polling): ``startup`` returns
    once the app's lifespan ran and the socket listens.
    """
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn (the test extra) is not installed")
    # Deflate off, as the standalone server's default; uvicorn's own frame limit
    # left at 16 MiB: the endpoint's max_frame_bytes check is what is tested.
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning",
        ws_per_message_deflate=False,
    )  # fmt: skip
    config.load()
    served = uvicorn.Server(config)
    served.lifespan = config.lifespan_class(config)
    await served.startup()
    try:
        yield served.servers[0].sockets[0].getsockname()[1]
    finally:
        for listener in served.servers:
            listener.close()
        for connection in list(served.server_state.connections):
            connection.shutdown()
        if served.server_state.tasks:
            await asyncio.wait(list(served.server_state.tasks), timeout=10)
        await served.lifespan.shutdown()


@pytest.fixture
def url(server: tuple[SyncServer, str]) -> str:
    return server[1]


@pytest.fixture
async def connect_device(url: str) -> AsyncIterator[Connect]:
    """``await connect_device(device_id, since=0, **hello)``: a device past its replay."""
    opened: list[ClientConnection] = []

    async def open_device(device_id: int, since: int = 0, **hello: Any) -> RawDevice:
        connection = await connect(url)
        opened.append(connection)
        device = RawDevice(connection, device_id)
        await device.send({"type": "hello", "device_id": device_id, "since": since, **hello})
        device.welcome = await device.receive()
        assert device.welcome["type"] == "welcome", device.welcome
        while (message := await device.receive())["type"] == "push":
            device.replayed.append(message)
        assert message["type"] == "ready", message
        return device

    yield open_device
    for connection in opened:
        await connection.close()


# -- server processes and PostgreSQL ----------------------------------------------

POSTGRES_VARIABLE = "OPTISYNC_TEST_POSTGRES_DSN"
POSTGRES_SKIP_REASON = (
    f"PostgreSQL tests skipped: ${POSTGRES_VARIABLE} is not set "
    "(source .ci/postgres.sh to install and start a server)"
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say in the default output why the PostgreSQL tests did not run."""
    if not os.environ.get(POSTGRES_VARIABLE):
        terminalreporter.write_line(POSTGRES_SKIP_REASON, yellow=True)


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    dsn = os.environ.get(POSTGRES_VARIABLE)
    if not dsn:
        pytest.skip(POSTGRES_SKIP_REASON)
    import psycopg
    from psycopg import sql

    name = f"optisync_test_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield psycopg.conninfo.make_conninfo(dsn, dbname=name)
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def server_process(
    *arguments: str, stderr: int = subprocess.DEVNULL
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``python -m optisync.server *arguments --port 0``; yields the process and its URL."""
    command = [sys.executable, "-m", "optisync.server", *arguments, "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("ws://"), f"the server did not start: {url!r}"
            yield process, url
        finally:
            process.kill()


async def open_raw_device(url: str, device_id: int, since: int = 0) -> RawDevice:
    """A raw device on ``url``, past its welcome and replay."""
    device = RawDevice(await connect(url), device_id)
    await device.send({"type": "hello", "device_id": device_id, "since": since})
    device.welcome = await device.receive()
    while (message := await device.receive())["type"] == "push":
        device.replayed.append(message)
    return device
