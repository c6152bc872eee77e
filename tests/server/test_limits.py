"""Issue 18: every frame pays, and a replay costs what the keys hold, not the log.

All clients here come from 127.0.0.1, so the per-address limits apply to all
of them: each test sets them low enough to show.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import optisync.server.server
from optisync.server import Limits, SyncServer
from tests.server.conftest import Connect, RawDevice

BAD_GET = '{"type": "get", "request_id": %d}'  # no key: missing_field
SLOW = {"messages_per_second": 0.001, "address_messages_per_second": 0.001}


async def answers(device: RawDevice, count: int) -> list[tuple[str, Any]]:
    """The next ``count`` answers as ``(code or type, request_id)``."""
    result = []
    for _ in range(count):
        message = await device.receive()
        result.append((message.get("code", message["type"]), message.get("request_id")))
    return result


async def read_forever(connection: ClientConnection) -> None:
    while True:
        await connection.recv()


async def closed_by_server(connection: ClientConnection) -> tuple[int, str]:
    """Read until the server closes; its close code and reason."""
    with pytest.raises(ConnectionClosed) as closed:
        await read_forever(connection)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def hello(url: str, device_id: int) -> tuple[ClientConnection, dict[str, Any]]:
    connection = await connect(url)
    await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))
    return connection, json.loads(await connection.recv())


# -- every frame pays -------------------------------------------------------------------


@pytest.mark.parametrize("limits", [Limits(burst=5, max_bad_frames=100, **SLOW)])
async def test_malformed_frames_spend_the_rate_limit_like_valid_ones(
    connect_device: Connect,
) -> None:
    device = await connect_device(1)
    for n in range(10):
        await device.send(BAD_GET % n)
    assert await answers(device, 10) == [("missing_field", n) for n in range(5)] + [
        ("rate_limited", n) for n in range(5, 10)
    ]


@pytest.mark.parametrize("limits", [Limits(burst=4, **SLOW)])
async def test_gets_past_the_burst_are_rate_limited(connect_device: Connect) -> None:
    device = await connect_device(1)
    for n in range(6):
        await device.send({"type": "get", "request_id": n, "key": "k"})
    assert [code for code, _ in await answers(device, 6)] == ["value"] * 4 + ["rate_limited"] * 2


@pytest.mark.parametrize("limits", [Limits(max_bad_frames=5)])
async def test_bad_frames_in_a_row_close_the_connection_1008(connect_device: Connect) -> None:
    device = await connect_device(1)
    for _ in range(4):
        await device.send("{not json")
    assert [code for code, _ in await answers(device, 4)] == ["bad_json"] * 4
    await device.get("k")  # a good message in between: the count starts over
    for n in range(4):
        await device.send(BAD_GET % n)
    assert [code for code, _ in await answers(device, 4)] == ["missing_field"] * 4
    await device.connection.send(b"binary")
    assert await closed_by_server(device.connection) == (1008, "too many bad messages in a row")


@pytest.mark.parametrize("limits", [Limits(max_bad_frames=3)])
async def test_every_bad_frame_is_answered_before_the_1008_close(connect_device: Connect) -> None:
    """The answers to the frames that closed it, the last one's too, go out ahead of the close."""
    device = await connect_device(1)
    for n in range(3):  # sent at once: the server reads and answers them in one turn
        await device.send(BAD_GET % n)
    assert await answers(device, 3) == [("missing_field", n) for n in range(3)]
    assert await closed_by_server(device.connection) == (1008, "too many bad messages in a row")


@pytest.mark.parametrize("limits", [Limits(max_bad_frames=3, abuse_penalty_seconds=600)])
@pytest.mark.parametrize("abuse", ["bad frames", "a frame over the limit"])
async def test_after_a_close_for_abuse_new_connections_of_that_address_wait_unread(
    connect_device: Connect, url: str, abuse: str
) -> None:
    flooder = await connect_device(1)
    if abuse == "bad frames":
        for n in range(3):
            await flooder.send(BAD_GET % n)
        expected = (1008, "too many bad messages in a row")
    else:
        await flooder.connection.send("x" * (Limits().max_frame_bytes + 1))
        expected = (1009, "")
    code, reason = await closed_by_server(flooder.connection)
    assert (code, reason[: len(expected[1])]) == expected
    # Its address reconnects: the hello waits, unread, for the penalty.
    held = await connect(url)
    await held.send(json.dumps({"type": "hello", "device_id": 2, "since": 0}))
    waiting = asyncio.ensure_future(held.recv())
    # Another address is served meanwhile, hello to ready.
    other = await connect(url, local_addr=("127.0.0.2", 0))
    await other.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
    assert json.loads(await other.recv())["type"] == "welcome"
    assert json.loads(await other.recv())["type"] == "ready"
    assert not waiting.done()  # 600 s of penalty: nothing for the flooder's address yet
    waiting.cancel()
    await held.close()
    await other.close()


async def strike(flooder: RawDevice) -> None:
    """Three bad frames (``max_bad_frames=3``): closed for abuse, its address struck."""
    for n in range(3):
        await flooder.send(BAD_GET % n)
    assert await closed_by_server(flooder.connection) == (1008, "too many bad messages in a row")


async def hello_only(url: str, device_id: int) -> ClientConnection:
    connection = await connect(url)
    await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))
    return connection


@pytest.mark.parametrize("limits", [Limits(max_bad_frames=3, abuse_penalty_seconds=0.2)])
async def test_past_the_penalty_a_struck_address_has_its_connections_read_one_at_a_time(
    connect_device: Connect, url: str
) -> None:
    await strike(await connect_device(1))
    first, second = await hello_only(url, 2), await hello_only(url, 3)
    waiting = asyncio.ensure_future(second.recv())
    assert json.loads(await first.recv())["type"] == "welcome"  # once the penalty ran out
    assert not waiting.done()  # its turn is a penalty after the first's
    assert json.loads(await waiting)["type"] == "welcome"
    await first.close()
    await second.close()


@pytest.mark.parametrize(
    "limits",
    [
        Limits(
            max_bad_frames=3,
            max_message_bytes=1024,
            max_frame_bytes=2048,  # a struck address keeps one frame's worth of burst
            address_receive_bytes_per_second=8192,
            abuse_penalty_seconds=600,
        )
    ],
)
async def test_after_a_close_for_abuse_the_open_connections_of_the_address_lose_its_burst(
    connect_device: Connect, url: str
) -> None:
    neighbour = await connect_device(1)
    for n in range(5):  # within the address's burst (8 MiB): read at once
        await neighbour.send({"type": "get", "request_id": n, "key": "k"})
    assert await answers(neighbour, 5) == [("value", n) for n in range(5)]
    await strike(await connect_device(2))
    for n in range(5, 8):
        await neighbour.send({"type": "get", "request_id": n, "key": "k"})
    # The frame's worth, then the sustained pace: the next 2 KiB take 0.25 s.
    assert await answers(neighbour, 2) == [("value", 5), ("value", 6)]
    third = asyncio.ensure_future(neighbour.receive())
    # Another address is served meanwhile, hello to ready.
    other = await connect(url, local_addr=("127.0.0.2", 0))
    await other.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
    assert json.loads(await other.recv())["type"] == "welcome"
    assert json.loads(await other.recv())["type"] == "ready"
    assert not third.done()
    third.cancel()
    await other.close()


async def test_a_message_over_the_size_limit_is_refused_before_it_is_parsed(
    connect_device: Connect, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[int] = []
    decode = optisync.server.server.decode_client

    def counting_decode(frame: str | bytes, **options: Any) -> Any:
        decoded.append(len(frame))
        return decode(frame, **options)

    device = await connect_device(1)
    monkeypatch.setattr(optisync.server.server, "decode_client", counting_decode)
    # 102 KB of valid JSON: over the message limit, under the frame limit (128 KiB).
    value = "[" + ",".join(['{"a": [1, 2, 3]}'] * 6_000) + "]"
    await device.send(f'{{"type": "set", "request_id": 6, "key": "k", "value": {value}}}')
    assert await answers(device, 1) == [("too_large", 6)]
    assert decoded == []
    assert (await device.get("k"))["value"] is None  # and the connection still works


# -- per remote address -----------------------------------------------------------------


@pytest.mark.parametrize("limits", [Limits(burst=5, address_burst=8, **SLOW)])
async def test_a_second_connection_from_the_same_address_gets_no_fresh_burst(
    connect_device: Connect,
) -> None:
    first = await connect_device(1)  # its hello: 1 of the address's 8
    for n in range(6):
        await first.send({"type": "get", "request_id": n, "key": "k"})
    assert [code for code, _ in await answers(first, 6)] == ["value"] * 5 + ["rate_limited"]
    second = await connect_device(2)  # 7 of 8
    for n in range(3):
        await second.send({"type": "get", "request_id": n, "key": "k"})
    assert [code for code, _ in await answers(second, 3)] == ["value"] + ["rate_limited"] * 2


@pytest.mark.parametrize("limits", [Limits(address_burst=3, **SLOW)])
async def test_hellos_past_the_address_burst_are_refused_rate_limited_1013(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    for device_id in (1, 2, 3):
        await connect_device(device_id)
    connection, error = await hello(server[1], 4)
    assert (error["type"], error["code"]) == ("error", "rate_limited")
    assert await closed_by_server(connection) == (1013, "rate_limited")
    assert server[0].connection_count == 3


@pytest.mark.parametrize("limits", [Limits(max_connections_per_address=2)])
async def test_connections_past_the_per_address_cap_are_refused_1013(
    server: tuple[SyncServer, str], connect_device: Connect
) -> None:
    await connect_device(1)
    await connect_device(2)
    async with connect(server[1]) as third:
        code_and_reason = await closed_by_server(third)
    assert code_and_reason == (1013, "too many connections from this address")
    assert server[0].connection_count == 2


# -- a replay costs what the keys hold ----------------------------------------------------


async def replay_frames(url: str, device_id: int, since: int) -> tuple[list[str], dict[str, Any]]:
    """The raw push frames of a replay, and its ``ready``."""
    async with connect(url) as connection:
        await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": since}))
        assert json.loads(await connection.recv())["type"] == "welcome"
        frames = []
        while (message := json.loads(frame := str(await connection.recv())))["type"] == "push":
            frames.append(frame)
        return frames, message


async def test_a_replay_sends_each_keys_newest_change_once(
    server: tuple[SyncServer, str],
) -> None:
    sync_server, url = server
    value = b'"%s"' % (b"x" * 1_000)
    for n in range(1, 201):  # 200 writes to 5 keys, by device 9
        await sync_server.storage.commit(f"k{n % 5}", value, local_revision=n, device_id=9)
    frames, ready = await replay_frames(url, 9, since=0)
    pushes = [json.loads(frame) for frame in frames]
    # Each push is its key's own newest change, the writer's metadata included.
    assert [
        (p["key"], p["server_revision"], p["local_revision"], p["device_id"]) for p in pushes
    ] == [(f"k{n % 5}", n, n, 9) for n in range(196, 201)]
    assert sum(map(len, frames)) < 5 * (len(value) + 200)  # not 200 values
    assert ready["server_revision"] == 200  # the cursor ends at the head


async def test_a_replay_since_a_cursor_sends_only_the_keys_changed_after_it(
    server: tuple[SyncServer, str],
) -> None:
    sync_server, url = server
    for n, key in enumerate("abcabcab", start=1):  # newest: c at 6, a at 7, b at 8
        await sync_server.storage.commit(key, b"%d" % n, local_revision=n, device_id=9)
    frames, ready = await replay_frames(url, 1, since=3)
    pushes = [json.loads(frame) for frame in frames]
    assert [(p["key"], p["value"], p["server_revision"]) for p in pushes] == [
        ("c", 6, 6),
        ("a", 7, 7),
        ("b", 8, 8),
    ]
    assert [(p["local_revision"], p["device_id"]) for p in pushes] == [(0, 0)] * 3  # not its own
    assert ready["server_revision"] == 8
