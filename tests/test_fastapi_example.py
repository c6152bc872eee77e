"""examples.fastapi_todo under uvicorn in its own process, with two users' devices.

Alice's token (from the app's ``/login``) grants ``user/alice/`` and
``team/``: every path to Bob's keys is tried (get, set, delete, replay,
push, subscribe) and none gives her anything. The shared list converges, a
delete reaches a device that was offline during it, an expired token is
refused, a refreshed one keeps its connection, and ``/metrics`` counts the
commits.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the examples extra (FastAPI) is not installed")
pytest.importorskip("uvicorn", reason="the examples extra (uvicorn) is not installed")

import jwt
from websockets.asyncio.client import ClientConnection, connect

from examples.fastapi_todo.__main__ import commits_counted
from examples.fastapi_todo.app import AUDIENCE, ISSUER
from examples.fastapi_todo.lists import log_in, open_lists, sync_url
from optisync import Store
from optisync.client import SyncClient, Traced
from optisync.transport import SyncRequest
from optisync.wire import Authed

SECRET = "a-test-secret-of-enough-length-for-hs256"
TOKEN_SECONDS = 4.0
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``uvicorn examples.fastapi_todo.app:app`` in a process, on a socket bound here.

    The socket listens before uvicorn starts: the first request waits in its
    backlog until the app is ready, so nothing polls.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    database = tmp_path_factory.mktemp("fastapi") / "server.sqlite3"
    environment = {
        **os.environ,
        "OPTISYNC_TODO_SECRET": SECRET,
        "OPTISYNC_TODO_DATABASE": str(database),
        "OPTISYNC_TODO_TOKEN_SECONDS": str(TOKEN_SECONDS),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    command = [
        sys.executable, "-m", "uvicorn", "examples.fastapi_todo.app:app",
        "--fd", str(listener.fileno()), "--log-level", "warning",
        "--ws-per-message-deflate", "false",
    ]  # fmt: skip
    with subprocess.Popen(command, env=environment, pass_fds=[listener.fileno()]) as process:
        listener.close()  # uvicorn holds its copy
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)


async def raw_device(base_url: str, token: str, device_id: int, **hello: Any) -> RawDevice:
    connection = await connect(sync_url(base_url))
    device = RawDevice(connection)
    await device.send(
        {"type": "hello", "device_id": device_id, "since": 0, "token": token, **hello}
    )
    device.first = await device.receive()
    if device.first["type"] == "welcome":
        while (message := await device.receive())["type"] == "push":
            device.replayed.append(message["key"])
    return device


class RawDevice:
    """A protocol connection with no library: what an attacker holding a token can send."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.first: dict[str, Any] = {}
        self.replayed: list[str] = []
        self.pushed: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(await self.connection.recv())
        return message

    async def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message``; its answer (pushes meanwhile are kept in ``pushed``)."""
        await self.send(message)
        while (reply := await self.receive())["type"] == "push":
            self.pushed.append(reply["key"])
        return reply


async def test_alice_gets_nothing_of_bobs_keys_by_any_path(base_url: str, tmp_path: Path) -> None:
    async with open_lists(base_url, "bob", "builder", str(tmp_path / "bob.sqlite3")) as bob:
        await bob.store.mine.set("b1", "fix the bike")
        await bob.store.shared.set("s1", "bread")
        await bob.caught_up()
        alice = await raw_device(base_url, await log_in(base_url, "alice", "wonderland"), 900001)
        try:
            assert alice.first["type"] == "welcome"
            # Replay: the shared key, not Bob's.
            assert alice.replayed == ["team/shared/s1"]
            # get, set and delete of Bob's key.
            for message in (
                {"type": "get", "request_id": 1, "key": "user/bob/mine/b1"},
                {"type": "set", "request_id": 2, "key": "user/bob/mine/b1", "value": "mine now",
                 "local_revision": 1},
                {"type": "delete", "request_id": 3, "key": "user/bob/mine/b1", "local_revision": 2},
            ):  # fmt: skip
                reply = await alice.answer(message)
                assert (reply["type"], reply["code"]) == ("error", "forbidden"), reply
            # A subscription to Bob's prefix is answered, and brings nothing of his.
            subscribed = await alice.answer(
                {"type": "subscribe", "request_id": 4, "prefixes": ["user/bob/", "team/"]}
            )
            assert subscribed["type"] == "subscribed", subscribed
            # Pushes: Bob writes his key, then a shared one; Alice gets the shared one only.
            await bob.store.mine.set("b2", "oil the chain")
            await bob.store.shared.set("s2", "cheese")
            push = await alice.receive()
            assert (push["type"], push["key"]) == ("push", "team/shared/s2")
            assert not [key for key in alice.pushed if key.startswith("user/bob/")]
            # Bob's list is as he left it.
            await bob.caught_up()
            assert bob.store.state.mine == {"b1": "fix the bike", "b2": "oil the chain"}
        finally:
            await alice.connection.close()


async def test_the_shared_list_converges_and_a_delete_reaches_an_offline_device(
    base_url: str, tmp_path: Path
) -> None:
    alice_file, bob_file = str(tmp_path / "alice.sqlite3"), str(tmp_path / "bob.sqlite3")
    async with (
        open_lists(base_url, "alice", "wonderland", alice_file) as alice,
        open_lists(base_url, "bob", "builder", bob_file) as bob,
    ):
        await alice.store.shared.set("milk", "milk")
        await bob.store.shared.set("eggs", "eggs")
        await alice.store.mine.set("call", "call mum")
        await alice.caught_up()
        await bob.caught_up()
        await alice.caught_up()  # Bob's write, pushed after Alice's first catch-up
        assert alice.store.state.shared == bob.store.state.shared
        assert {"milk", "eggs"} <= set(bob.store.state.shared)
        assert "call" not in bob.store.state.mine
    async with open_lists(base_url, "alice", "wonderland", alice_file) as alice:
        await alice.store.shared.delete("milk")  # Bob's device is closed
        await alice.caught_up()
        assert "milk" not in alice.store.state.shared
    async with open_lists(base_url, "bob", "builder", bob_file) as bob:
        assert "milk" in bob.store.state.shared  # saved before the delete
        await bob.caught_up()
        assert "milk" not in bob.store.state.shared
        assert "eggs" in bob.store.state.shared


async def test_an_expired_token_is_refused_with_token_expired(base_url: str) -> None:
    now = time.time()
    claims = {"sub": "alice", "aud": AUDIENCE, "iss": ISSUER, "iat": int(now) - 120,
              "exp": now - 60, "sync": {"read": ["team/"], "write": ["team/"]}}  # fmt: skip
    expired = jwt.encode(claims, SECRET, algorithm="HS256")
    device = await raw_device(base_url, expired, 900002)
    assert (device.first["type"], device.first["code"]) == ("error", "token_expired")
    await device.connection.wait_closed()
    assert (device.connection.close_code, device.connection.close_reason) == (
        1008,
        "token_expired",
    )


async def test_a_foreign_token_is_refused_with_unauthorized(base_url: str) -> None:
    claims = {"sub": "alice", "aud": "another-app", "iss": ISSUER, "exp": time.time() + 60}
    device = await raw_device(base_url, jwt.encode(claims, SECRET, algorithm="HS256"), 900003)
    assert (device.first["type"], device.first["code"]) == ("error", "unauthorized")
    await device.connection.wait_closed()
    assert device.connection.close_code == 1008


async def test_a_refreshed_token_keeps_the_connection_past_the_first_ones_expiry(
    base_url: str, tmp_path: Path
) -> None:
    issued = time.time()
    refreshed = asyncio.Event()
    statuses: list[bool] = []

    def trace(traced: Traced) -> None:
        if traced.direction == "received" and isinstance(traced.message, Authed):
            refreshed.set()

    async def token() -> str:
        return await log_in(base_url, "alice", "wonderland")

    store: Store[dict[str, Any]] = Store({}, device_id=900004)
    async with store, SyncClient(store, sync_url(base_url), token=token, trace=trace) as client:
        await client.wait_online()
        client.subscribe_status(statuses.append)
        await refreshed.wait()  # the client sent auth on the open connection
        # Past the first token's expiry (a clock condition, not a synchronisation).
        await asyncio.sleep(max(0.0, issued + TOKEN_SECONDS - time.time()) + 0.2)
        request = SyncRequest("team/after-expiry", 1, store.device_id)
        ack = await client.send("team/after-expiry", "still here", request)
        assert ack.value == "still here"
        assert statuses == []  # never went offline: the same connection all along


async def test_metrics_count_the_commits_made(base_url: str, tmp_path: Path) -> None:
    before = await commits_counted(base_url)
    async with open_lists(base_url, "bob", "builder", str(tmp_path / "bob2.sqlite3")) as bob:
        for n in range(3):
            await bob.store.mine.set(f"m{n}", f"task {n}")
        await bob.store.mine.delete("m0")
        await bob.caught_up()
    assert await commits_counted(base_url) == before + 4


def test_the_demo_runs_as_a_module() -> None:
    """``python -m examples.fastapi_todo``, word for word as docs/fastapi.md runs it."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "examples.fastapi_todo"],
        capture_output=True, text=True, timeout=120, env=environment, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "  alice  mine: ['call mum']  shared: ['bread', 'cheese']" in lines
    assert "  bob    mine: ['fix the bike']  shared: ['cheese']" in lines
    assert lines[-1] == "/metrics: optisync_commits_total 5"
