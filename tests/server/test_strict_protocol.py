"""A real server refuses what the protocol does not allow, and numbers each refusal.

Each case was accepted (and committed) by ``python -m optisync.server`` when
probed with raw clients (issue 18, item 5): a binary frame, integers past
2**53, a control character inside a key, a field given twice, and errors
that dropped the frame's ``request_id``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from optisync.server import SqliteStorage, SyncServer
from optisync.transport import wire_key
from optisync.wire import MAX_NESTING
from tests.server.conftest import RawDevice, open_raw_device, serving

SET_7 = '{"type":"set","request_id":7,"key":%s,"value":%s,"local_revision":1}'


@pytest.fixture
async def memory_url(transport: str) -> AsyncIterator[str]:
    async with serving(SyncServer(SqliteStorage(":memory:")), transport) as url:
        yield url


@pytest.fixture
async def device(memory_url: str) -> AsyncIterator[RawDevice]:
    raw = await open_raw_device(memory_url, 1)
    yield raw
    await raw.connection.close()


async def refused(device: RawDevice, frame: str | bytes) -> dict[str, Any]:
    """The error ``frame`` gets, once the server shows it committed nothing."""
    await device.connection.send(frame)
    error = await device.receive_type("error")
    assert (await device.get("k"))["server_revision"] == -1  # nothing committed
    return error


async def test_a_binary_frame_is_refused_with_bad_message(device: RawDevice) -> None:
    error = await refused(device, (SET_7 % ('"k"', "1")).encode())
    assert (error["code"], error["request_id"]) == ("bad_message", 7)
    assert "text" in error["message"]
    assert (await device.set("k", 1))["server_revision"] == 1  # and a text frame still works


async def test_a_binary_hello_is_refused_and_the_connection_closed(memory_url: str) -> None:
    async with connect(memory_url) as connection:
        await connection.send(b'{"type":"hello","device_id":1,"since":0}')
        error = json.loads(await connection.recv())
        with pytest.raises(ConnectionClosed):
            await connection.recv()
        assert (error["code"], connection.close_code) == ("bad_message", 1008)


@pytest.mark.parametrize(
    "frame",
    [
        SET_7 % ('"k"', '[1, {"a": 18446744073709551617}]'),
        SET_7 % ('"k"', "-123456789012345678901234567890"),
        SET_7 % ('"k"', "9007199254740992"),
        (SET_7 % ('"k"', "1")).replace("}", ',"device_id":18446744073709551617}'),
    ],
)
async def test_an_integer_past_2_53_is_refused(device: RawDevice, frame: str) -> None:
    error = await refused(device, frame)
    assert (error["code"], error["request_id"]) == ("bad_field", 7)


async def test_a_key_with_a_control_character_inside_is_refused(device: RawDevice) -> None:
    error = await refused(device, SET_7 % (json.dumps("a\x00b"), "1"))
    assert (error["code"], error["request_id"]) == ("bad_field", 7)


@pytest.mark.parametrize("key", [("done", "a/b c#"), ("done", 7), ("ñ", "日本\x00\n")])
async def test_a_wire_key_is_accepted(device: RawDevice, key: tuple[str, Any]) -> None:
    ack = await device.set(wire_key(key), True)
    assert (ack["key"], ack["server_revision"]) == (wire_key(key), 1)


async def test_a_field_given_twice_is_refused(device: RawDevice) -> None:
    frame = (SET_7 % ('"k"', "1")).replace("}", ',"local_revision":2}')
    error = await refused(device, frame)
    assert (error["code"], error["request_id"]) == ("duplicate_field", 7)


async def test_a_name_twice_inside_the_value_is_the_values_own_last_one_wins(
    device: RawDevice,
) -> None:
    await device.connection.send(SET_7 % ('"k"', '{"local_revision":1,"local_revision":2}'))
    ack = await device.receive_type("ack")
    assert (ack["request_id"], ack["value"]) == (7, {"local_revision": 2})


EVERY_KIND = [
    (SET_7 % (json.dumps("a\tb"), "1"), "bad_field"),  # a bad key
    (SET_7 % ('"k"', "18446744073709551617"), "bad_field"),  # a big integer
    ((SET_7 % ('"k"', "1")).replace("}", ',"local_revision":2}'), "duplicate_field"),
    ((SET_7 % ('"k"', "1")).replace("}", ',"admin":true}'), "unknown_field"),
    ((SET_7 % ('"k"', "1")).replace("}", ',"device_id":"me"}'), "bad_field"),  # a bad type
    (SET_7 % ('"k"', "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)), "bad_field"),  # too deep
    (SET_7 % ('"k"', "[" * 5_000 + "]" * 5_000), "bad_field"),  # far too deep
    (SET_7 % ('"k"', '"\\ud800"'), "bad_field"),  # a lone surrogate
    ('{"type":"get","request_id":7}', "missing_field"),
    ('{"type":"drop","request_id":7}', "unknown_type"),
]


@pytest.mark.parametrize(("frame", "code"), EVERY_KIND)
async def test_every_kind_of_error_echoes_the_request_id(
    device: RawDevice, frame: str, code: str
) -> None:
    error = await refused(device, frame)
    assert (error["code"], error["request_id"]) == (code, 7)


async def test_a_first_message_that_is_not_a_hello_echoes_its_request_id(memory_url: str) -> None:
    async with connect(memory_url) as connection:
        await connection.send('{"type":"get","request_id":7,"key":"k"}')
        error = json.loads(await connection.recv())
        assert (error["code"], error["request_id"]) == ("bad_message", 7)
