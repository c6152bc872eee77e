"""A device id can't be claimed: the first hello with a secret binds it, later ones prove it.

The finding this answers: with a shared token, anyone could connect with a
device id that was not connected at that moment. Writing as device A with
``local_revision=0``, the attacker left A diverged for good: A's replay took
the forged push for its own echo and kept its value, while the server and
every other device held the forged one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from examples.live.network import Link
from optisync import Store
from optisync.client import ServerRefusedError, SyncClient
from optisync.errors import InvalidArgumentError
from optisync.fields import SyncedMapWithPush
from optisync.outbox import Backoff, Outbox
from optisync.persistence import JsonCodec, Persistence, open_sqlite
from optisync.server import SqliteStorage, SyncServer
from optisync.transport import wire_key
from tests.server.conftest import server_process, serving

TOKEN = "shared-by-every-device"
Counts = dict[str, Any]


class Phone(Store[Counts]):
    counts = SyncedMapWithPush[Counts, str, Any](
        lambda state, key: state.get(key, 0), lambda state, key, value: {**state, key: value}
    )


async def hello(url: str, device_id: int, **fields: Any) -> dict[str, Any]:
    """A raw hello (no library): the server's first answer, and the connection closed."""
    async with connect(url) as connection:
        message = {"type": "hello", "device_id": device_id, "since": 0, "token": TOKEN, **fields}
        await connection.send(json.dumps(message))
        answer: dict[str, Any] = json.loads(await connection.recv())
        return answer


class PersistedPhone:
    """Device A as an app builds it: persisted, with an outbox, on the real client."""

    def __init__(self, saved: Persistence[Counts], url: str) -> None:
        self.saved = saved
        self.phone = Phone(saved.state, device_id=saved.device_id)
        self.outbox = Outbox(self.phone, backoff=Backoff(initial=0.01, jitter=0.0))
        self.client = SyncClient(self.phone, url, token=TOKEN)
        saved.attach(self.phone)  # hands the saved device secret to the client
        self.client.start()

    async def close(self) -> None:
        await self.client.close()
        await self.phone.close()
        await self.saved.close()


@contextlib.asynccontextmanager
async def persisted_phone(path: Path, url: str) -> AsyncIterator[PersistedPhone]:
    device = PersistedPhone(await open_sqlite(path, JsonCodec(), initial={}), url)
    try:
        yield device
    finally:
        await device.close()


def database_value(database: Path, key: str) -> Any:
    with contextlib.closing(sqlite3.connect(database)) as db:
        row = db.execute(
            "SELECT c.value FROM optisync_keys k JOIN optisync_changes c ON c.revision = k.revision"
            " WHERE k.key = ?",
            (wire_key(("counts", key)),),
        ).fetchone()
    return None if row is None else json.loads(row[0])


async def test_a_forged_hello_is_refused_and_a_forged_write_ends_converged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPTISYNC_SERVER_TOKEN", TOKEN)
    database = tmp_path / "server.sqlite3"
    with server_process("--database", str(database)) as (_, url):
        port = int(url.rsplit(":", 1)[1])
        async with (
            Link(lambda: port) as link,
            persisted_phone(tmp_path / "a.sqlite3", link.url) as a,
        ):
            a.phone.counts.set("color", "red")
            await a.outbox.synced()  # A's id is bound to A's secret now
            device_a = a.phone.device_id
            link.down()  # A goes offline, and taps there
            a.phone.counts.set("size", 3)
            # The attacker holds the token and A's device id, not A's secret.
            refused = [
                await hello(url, device_a),
                await hello(url, device_a, device_secret=secrets.token_urlsafe(32)),
            ]
            assert [answer.get("code") for answer in refused] == ["device_unproven"] * 2
            # So it writes as a device of its own: an honest write, the server's word.
            async with connect(url) as attacker:
                await attacker.send(
                    json.dumps({"type": "hello", "device_id": 666, "since": 0, "token": TOKEN})
                )
                while json.loads(await attacker.recv())["type"] != "ready":
                    pass
                forged = {"type": "set", "request_id": 1, "key": wire_key(("counts", "color"))}
                await attacker.send(json.dumps({**forged, "value": "FORGED", "local_revision": 0}))
                while json.loads(await attacker.recv())["type"] != "ack":
                    pass
            link.up()
            await a.outbox.synced()
            await a.client.caught_up()
            # A took the forged write as another device's, and sent its offline tap.
            assert a.phone.counts["color"] == "FORGED"
            assert a.phone.counts["size"] == 3
        # Another device, and the database, hold what A holds.
        store_b = Phone({}, device_id=2)
        async with store_b, SyncClient(store_b, url, token=TOKEN) as b:
            await b.caught_up()
            assert (store_b.counts["color"], store_b.counts["size"]) == ("FORGED", 3)
    assert (database_value(database, "color"), database_value(database, "size")) == ("FORGED", 3)


async def test_a_restarted_device_proves_its_id_with_the_secret_it_saved(
    tmp_path: Path, transport: str
) -> None:
    async with serving(SyncServer(SqliteStorage(tmp_path / "server.sqlite3")), transport) as url:
        for tap in (1, 2, 3):  # three runs of one device, from its file
            async with persisted_phone(tmp_path / "a.sqlite3", url) as a:
                a.phone.counts.set("taps", tap)
                await a.outbox.synced()
                assert a.client.last_error is None


async def test_a_client_claiming_a_bound_id_with_another_secret_is_refused_for_good(
    tmp_path: Path, transport: str
) -> None:
    async with serving(SyncServer(SqliteStorage(tmp_path / "server.sqlite3")), transport) as url:
        async with persisted_phone(tmp_path / "a.sqlite3", url) as a:
            await a.client.wait_online()
            device_id = a.phone.device_id
        thief = SyncClient(Store[Counts]({}, device_id=device_id), url, token=TOKEN)
        thief.use_device_secret(secrets.token_urlsafe(32))
        with pytest.raises(ServerRefusedError, match="device_unproven") as refused:
            async with thief:
                await thief.wait_online()
        assert "or use a new device id" in str(refused.value)


async def test_an_older_client_without_a_secret_may_use_only_an_unbound_id(
    tmp_path: Path, transport: str
) -> None:
    async with serving(SyncServer(SqliteStorage(tmp_path / "server.sqlite3")), transport) as url:
        assert (await hello(url, 5))["type"] == "welcome"  # nothing is bound to 5
        mine = secrets.token_urlsafe(32)
        assert (await hello(url, 5, device_secret=mine))["type"] == "welcome"  # binds 5
        assert (await hello(url, 5))["code"] == "device_unproven"
        assert (await hello(url, 5, device_secret=mine))["type"] == "welcome"


async def test_a_server_that_requires_secrets_refuses_a_hello_without_one(
    tmp_path: Path, transport: str
) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "server.sqlite3"), require_device_secret=True)
    async with serving(server, transport) as url:
        refused = await hello(url, 5)
        assert (refused["type"], refused["code"]) == ("error", "device_unproven")
        assert "requires a device secret" in refused["message"]
        assert (await hello(url, 5, device_secret=secrets.token_urlsafe(32)))["type"] == "welcome"


@pytest.mark.parametrize("secret", ["short", "x" * 129, "has spaces in it!!", 12345678901234567])
async def test_a_malformed_secret_is_refused_as_a_bad_field(transport: str, secret: Any) -> None:
    async with serving(SyncServer(SqliteStorage(":memory:")), transport) as url:
        refused = await hello(url, 5, device_secret=secret)
        assert (refused["type"], refused["code"]) == ("error", "bad_field")


def test_the_command_line_can_require_device_secrets(tmp_path: Path) -> None:
    import asyncio

    database = str(tmp_path / "server.sqlite3")
    with server_process("--database", database, "--require-device-secret") as (_, url):
        refused = asyncio.run(hello(url, 5))
    assert refused["code"] == "device_unproven"


def test_a_storage_written_before_device_secrets_is_refused_with_what_it_lacks() -> None:
    class OldStorage(SqliteStorage):
        claim_device = None  # type: ignore[assignment]

    with pytest.raises(InvalidArgumentError, match="OldStorage lacks claim_device"):
        SyncServer(OldStorage(":memory:"))
