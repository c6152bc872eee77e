"""Every hole an adversarial run of the example server found stays closed."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import io
import json
import logging
import queue
import random
import socket
import struct
import subprocess
import termios
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlparse

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from optisync.server import Grant, Limits, SqliteStorage, SyncServer, require_token
from optisync.server.__main__ import DroppingQueueHandler, DropReportingHandler
from optisync.wire import Hello
from tests.server.conftest import Connect, open_raw_device, server_process

SET_TEXT = '{"type": "set", "request_id": 4, "key": %s, "value": %s, "local_revision": 1}'
SET = {"type": "set", "request_id": 1, "key": "k", "value": 1, "local_revision": 1}


async def head(server: tuple[SyncServer, str]) -> int:
    return await server[0].storage.head()


async def refusal_of(url: str, first: object) -> tuple[dict[str, object], int | None]:
    """The error a connection gets for ``first`` message, and its close code."""
    async with connect(url) as connection:
        await connection.send(first if isinstance(first, str) else json.dumps(first))
        error = json.loads(await connection.recv())
        with pytest.raises(ConnectionClosed):
            await connection.recv()
        return error, connection.close_code


# -- malformed messages ---------------------------------------------------------

MALFORMED = [
    ("{not json", "bad_json", None),
    ("[1, 2]", "bad_message", None),
    ('{"request_id": 4}', "bad_message", 4),
    ('{"type": "drop", "request_id": 4}', "unknown_type", 4),
    ('{"type": "get", "request_id": 4}', "missing_field", 4),
    ('{"type": "get", "request_id": 4, "key": "k", "admin": true}', "unknown_field", 4),
    ('{"type": "get", "request_id": "4", "key": "k"}', "bad_field", None),
    ('{"type": "get", "request_id": -1, "key": "k"}', "bad_field", None),
    ('{"type": "get", "request_id": 4, "key": ""}', "bad_field", 4),
    ('{"type": "get", "request_id": 4, "key": " k"}', "bad_field", 4),
    ('{"type": "get", "request_id": 4, "key": "a\\nb"}', "bad_field", 4),
    (SET_TEXT % ('"k"', "1e999"), "bad_field", 4),
    (SET_TEXT % ('"k"', "NaN"), "bad_json", None),
    (SET_TEXT % ('"k"', '"\\ud800"'), "bad_field", 4),
    (SET_TEXT % ('"k\\udc00"', "1"), "bad_field", 4),
    (SET_TEXT.replace("4", '"4"') % ('"k"', '"\\ud800"'), "bad_field", None),
    ((SET_TEXT % ('"k"', '"\\ud800"'))[:-1], "bad_json", None),
    (SET_TEXT % ('"k"', "[" * 5_000 + "]" * 5_000), "bad_field", 4),
    ('{"type": "hello", "device_id": 1, "since": 0}', "bad_message", None),
    ("[" * 10_000 + "]" * 10_000, "bad_message", None),
]  # fmt: skip


@pytest.mark.parametrize(("text", "code", "request_id"), MALFORMED)
async def test_a_malformed_message_gets_its_error_code_and_changes_nothing(
    server: tuple[SyncServer, str], connect_device: Connect, text: str, code: str, request_id: int
) -> None:
    device = await connect_device(1)
    await device.set("k", "before")
    revision = await head(server)
    await device.send(text)
    error = await device.receive_type("error")
    assert (error["code"], error["request_id"]) == (code, request_id)
    assert await head(server) == revision
    assert (await device.get("k"))["value"] == "before"  # and the connection still works


async def test_a_message_over_the_size_limit_gets_too_large(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(1)
    await device.send({**SET, "request_id": 6, "value": "x" * (64 * 1024)})
    error = await device.receive_type("error")
    assert (error["code"], error["request_id"]) == ("too_large", 6)
    assert await head(server) == 0


async def test_a_frame_over_the_frame_limit_closes_the_connection(
    connect_device: Connect,
) -> None:
    device = await connect_device(1)
    await device.send({**SET, "value": "x" * (2 * 1024 * 1024)})
    with pytest.raises(ConnectionClosed):
        await device.receive()
    assert device.connection.close_code == 1009


async def test_a_first_message_that_is_not_a_hello_is_refused(url: str) -> None:
    error, close_code = await refusal_of(url, SET)
    assert (error["code"], close_code) == ("bad_message", 1008)


async def test_a_hello_of_another_protocol_version_is_refused(url: str) -> None:
    error, _ = await refusal_of(url, {"type": "hello", "device_id": 1, "since": 0, "protocol": 2})
    assert error["code"] == "bad_version"


async def test_device_id_zero_is_reserved_for_writes_from_outside(url: str) -> None:
    error, _ = await refusal_of(url, {"type": "hello", "device_id": 0, "since": 0})
    assert error["code"] == "bad_field"


# -- authentication, authorization, device ids -------------------------------------


@pytest.mark.parametrize("authenticate", [require_token("s3cret")])
async def test_a_hello_without_the_token_is_refused(url: str) -> None:
    for hello in (
        {"type": "hello", "device_id": 1, "since": 0},
        {"type": "hello", "device_id": 1, "since": 0, "token": "guess"},
    ):
        error, close_code = await refusal_of(url, hello)
        assert (error["code"], close_code) == ("unauthorized", 1008)


@pytest.mark.parametrize("authenticate", [require_token("s3cret")])
async def test_a_hello_with_the_token_is_admitted(connect_device: Connect) -> None:
    device = await connect_device(1, token="s3cret")
    assert (await device.set("k", 1))["server_revision"] == 1


async def _own_keys_only(hello: Hello) -> Grant:
    prefix = f"user{hello.device_id}:"
    return Grant(f"user{hello.device_id}", can_read=lambda key: key.startswith(prefix),
                 can_write=lambda key: key.startswith(prefix))  # fmt: skip


@pytest.mark.parametrize("authenticate", [_own_keys_only])
async def test_a_write_to_a_key_the_grant_forbids_is_refused(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(1)
    await device.send({**SET, "key": "user2:color"})
    assert (await device.receive_type("error"))["code"] == "forbidden"
    assert await head(server) == 0


@pytest.mark.parametrize("authenticate", [_own_keys_only])
async def test_keys_a_grant_may_not_read_are_never_pushed_replayed_or_read(
    connect_device: Connect,
) -> None:
    one, two = await connect_device(1), await connect_device(2)
    await one.set("user1:secret", "one's")
    await two.set("user2:color", "blue")
    assert [push["key"] for push in two.pushes] == ["user2:color"]
    late = await connect_device(3)
    assert late.replayed == []
    await two.send({"type": "get", "request_id": 9, "key": "user1:secret"})
    assert (await two.receive_type("error"))["code"] == "forbidden"


async def test_a_set_with_another_device_id_is_refused(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(1)
    await device.send({**SET, "device_id": 2})
    assert (await device.receive_type("error"))["code"] == "forbidden"
    assert await head(server) == 0


async def test_a_set_is_recorded_under_the_connection_device_id(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(7)
    await device.send({**SET, "device_id": 7})
    await device.receive_type("ack")
    change = await server[0].storage.read("k")
    assert change is not None
    assert change.device_id == 7


async def test_a_second_live_connection_may_not_claim_the_same_device_id(
    url: str, connect_device: Connect
) -> None:
    await connect_device(5)
    error, close_code = await refusal_of(url, {"type": "hello", "device_id": 5, "since": 0})
    assert (error["code"], close_code) == ("device_in_use", 1008)


async def test_a_web_page_origin_is_refused(url: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403


# -- limits --------------------------------------------------------------------------


@pytest.mark.parametrize("limits", [Limits(messages_per_second=0.001, burst=3)])
async def test_a_flood_past_the_rate_is_refused_and_changes_nothing(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    device = await connect_device(1)
    for n in range(10):
        await device.send({**SET, "request_id": n})
    answers = [await device.receive_type(kind) for kind in ["ack"] * 3 + ["error"] * 7]
    assert [a["request_id"] for a in answers] == list(range(10))
    assert {a["code"] for a in answers[3:]} == {"rate_limited"}
    assert await head(server) == 3


def incompressible(length: int) -> str:
    """Text that permessage-deflate cannot shrink much: the bytes on the wire are real."""
    return base64.b64encode(random.Random(length).randbytes(length))[:length].decode()


def _stalled_socket(url: str) -> socket.socket:
    """A TCP connection with a tiny receive buffer: the kernel holds little for it."""
    address = urlparse(url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname, address.port))
    return sock


@pytest.mark.parametrize("limits", [Limits(send_buffer_bytes=256 * 1024, burst=10_000)])
async def test_a_device_that_never_reads_is_cut_and_the_others_go_on(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    sync_server, url = server
    writer, watcher = await connect_device(1), await connect_device(2)
    stalled = await connect(url, sock=_stalled_socket(url), max_queue=1, close_timeout=0.1)
    await stalled.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
    assert json.loads(await stalled.recv())["type"] == "welcome"
    writes = 0
    while sync_server.connection_count == 3:  # each round trip is the event that advances
        writes += 1
        assert writes < 2_000, "the stalled device was never cut"
        await writer.set(f"k{writes % 10}", incompressible(30_000))
    # The watcher got every push, in order, while the stalled device was cut.
    revisions = [(await watcher.receive())["server_revision"] for _ in range(writes)]
    assert revisions == list(range(1, writes + 1))
    await stalled.close()


@pytest.mark.parametrize("limits", [Limits(send_buffer_bytes=128 * 1024, replay_page=50)])
async def test_a_device_that_never_reads_its_replay_stalls_only_itself(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    sync_server, url = server
    for n in range(400):
        value = b'"%s"' % incompressible(3_000).encode()
        await sync_server.storage.commit(f"k{n}", value, local_revision=1, device_id=9)
    stalled = await connect(url, sock=_stalled_socket(url), max_queue=1, close_timeout=0.1)
    await stalled.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
    other = await connect_device(4)
    assert len(other.replayed) == 400
    assert (await other.set("after", 1))["server_revision"] == 401
    await stalled.close()


@pytest.mark.parametrize("limits", [Limits(send_buffer_bytes=4 * 1024)])
async def test_a_replay_page_larger_than_the_send_buffer_cuts_only_that_device_1013(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    sync_server, url = server
    value = b'"%s"' % incompressible(8 * 1024).encode()
    await sync_server.storage.commit("big", value, local_revision=1, device_id=9)
    async with connect(url) as replaying:
        await replaying.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
        assert json.loads(await replaying.recv())["type"] == "welcome"
        with pytest.raises(ConnectionClosed) as closed:
            await replaying.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1013, "send queue full")
    # The server goes on: a device that replays from the head is served.
    caught_up = await connect_device(4, since=1)
    assert (await caught_up.set("after", 1))["server_revision"] == 2


# -- the server's identity -------------------------------------------------------------


async def test_a_device_ahead_of_the_database_is_told_to_reset_and_replays_all(
    connect_device: Connect,
) -> None:
    writer = await connect_device(1)
    await writer.set("a", 1)
    await writer.set("b", 2)
    restored_device = await connect_device(2, since=50, generation=writer.welcome["generation"])
    assert restored_device.welcome["reset"] is True
    assert [p["server_revision"] for p in restored_device.replayed] == [1, 2]


async def test_a_device_from_another_database_is_told_to_reset(connect_device: Connect) -> None:
    writer = await connect_device(1)
    await writer.set("a", 1)
    other = await connect_device(2, since=1, generation="f" * 32)
    assert other.welcome["reset"] is True
    assert len(other.replayed) == 1


async def test_the_generation_stays_the_same_across_restarts(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "g.sqlite3") as first:
        generation = first.generation
    async with SqliteStorage(tmp_path / "g.sqlite3") as again:
        assert again.generation == generation
    async with SqliteStorage(tmp_path / "other.sqlite3") as other:
        assert other.generation != generation


# -- logging ---------------------------------------------------------------------------


async def test_the_server_logs_through_logging(url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="optisync.server")
    await refusal_of(url, SET)
    assert any(r.name == "optisync.server" and "refused" in r.message for r in caplog.records)


def test_a_full_log_queue_drops_records_and_the_next_line_out_counts_them() -> None:
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=2)
    handler = DroppingQueueHandler(records)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    for n in range(5):
        handler.emit(logging.makeLogRecord({"msg": f"line {n}", "levelname": "INFO"}))
    assert (records.qsize(), handler.dropped) == (2, 3)
    out = io.StringIO()
    writer = DropReportingHandler(out, handler)
    while not records.empty():
        writer.handle(records.get_nowait())
    handler.emit(logging.makeLogRecord({"msg": "line 5", "levelname": "INFO"}))
    writer.handle(records.get_nowait())
    assert out.getvalue().splitlines() == [
        "WARNING 3 log records dropped: the log output was not read",
        "INFO line 0",
        "INFO line 1",
        "INFO line 5",
    ]


@pytest.mark.timeout(120)  # a guard against a hung server, not a timing assertion
async def test_a_server_whose_output_pipes_are_never_read_keeps_answering() -> None:
    # 3,000 sets, each logged several times: the log is many times a pipe's size.
    # One device at a time, each within its burst: nothing is rate limited.
    # (In memory: this is about the log, not the disk.)
    devices, writes = 15, 200
    with server_process(
        "--database", ":memory:", "--log-level", "debug", stderr=subprocess.PIPE
    ) as (process, url):
        assert process.stderr is not None
        for device_id in range(1, devices + 1):
            device = await open_raw_device(url, device_id)
            for n in range(1, writes + 1):
                await device.send({**SET, "request_id": n, "value": n})
            acks = [await device.receive_type("ack") for _ in range(writes)]
            assert [ack["request_id"] for ack in acks] == list(range(1, writes + 1))
            await device.connection.close()
        # The log really backed up: the stderr pipe is full, nobody drains it.
        capacity = fcntl.fcntl(process.stderr, fcntl.F_GETPIPE_SZ)
        unread = struct.unpack("i", fcntl.ioctl(process.stderr, termios.FIONREAD, b"\0" * 4))[0]
        assert unread > capacity - 4096, (unread, capacity)
        last = await open_raw_device(url, devices + 1)
        assert (await last.get("k"))["server_revision"] == devices * writes
        await last.connection.close()
        # Read at last, the log says how many lines it had to drop.
        report = await asyncio.to_thread(_first_line_with, process.stderr, "records dropped")
        assert int(report.split(":")[-2].split()[0]) > 0, report


def _first_line_with(lines: Iterable[str], text: str) -> str:
    return next(line for line in lines if text in line)
