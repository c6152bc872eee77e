"""Malformed and hostile messages: an error reply each, and nothing changes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from live_support import HANG_GUARD, DeviceFactory, nested_lists, wait_converged
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError

from examples.live.protocol import (
    MAX_NESTING,
    MAX_SAFE_INT,
    AckMessage,
    ErrorMessage,
    ProtocolError,
    SetMessage,
    decode_client_message,
    decode_server_message,
)
from examples.live.server import LiveServer


def set_message(**changes: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "type": "set",
        "request_id": 7,
        "item": "like",
        "value": True,
        "local_revision": 1,
        "device_id": 42,
    }
    message.update(changes)
    return message


def text(fields: dict[str, Any]) -> str:
    return json.dumps(fields)


def without(name: str) -> dict[str, Any]:
    message = set_message()
    del message[name]
    return message


VALID_SET = text(set_message())
NESTED = VALID_SET.replace("true", "[" * 5000 + "]" * 5000)

# (payload, error code): one of each kind of bad message.
MALFORMED: dict[str, tuple[str | bytes, str]] = {
    "not JSON": ("{not json", "bad_json"),
    "truncated JSON": (VALID_SET[:-1], "bad_json"),
    "a JSON array": ("[1, 2]", "bad_message"),
    "a JSON string": ('"set"', "bad_message"),
    "no type": ('{"since": 0}', "bad_message"),
    "a number as type": ('{"type": 5}', "bad_message"),
    "an unknown type": ('{"type": "delete", "item": "like"}', "unknown_type"),
    "an unknown field": (text(set_message(admin=True)), "unknown_field"),
    "a missing field": (text(without("device_id")), "missing_field"),
    "a string revision": (text(set_message(local_revision="1")), "bad_field"),
    "a bool device id": (text(set_message(device_id=True)), "bad_field"),
    "a float request id": (text(set_message(request_id=1.5)), "bad_field"),
    "a negative revision": (text(set_message(local_revision=-1)), "bad_field"),
    "an id above 2**53": (text(set_message(device_id=MAX_SAFE_INT + 1)), "bad_field"),
    "an int of 5000 digits": (
        VALID_SET.replace('"device_id": 42', '"device_id": ' + "9" * 5000),
        "bad_json",
    ),
    "an empty item": (text(set_message(item="")), "bad_field"),
    "an item of 201 characters": (text(set_message(item="x" * 201)), "bad_field"),
    "a control character in the item": (text(set_message(item="a\nb")), "bad_field"),
    "a null item": (text(set_message(item=None)), "bad_field"),
    "NaN": (VALID_SET.replace("true", "NaN"), "bad_json"),
    "an infinite number": (VALID_SET.replace("true", "1e999"), "bad_json"),
    "a repeated key": (
        VALID_SET.replace('"item": "like"', '"item": "like", "item": "x"'),
        "bad_json",
    ),
    "arrays nested 5000 deep": (NESTED, "bad_json"),
    "a 100 KiB value": (text(set_message(value="x" * 100_000)), "too_large"),
    "20 KiB of UTF-8 in 7000 characters": (text(set_message(value="\u20ac" * 7000)), "too_large"),
    "a binary frame": (VALID_SET.encode(), "not_text"),
    "a hello with a string cursor": ('{"type": "hello", "since": "0"}', "bad_field"),
    "a get without an item": ('{"type": "get", "request_id": 1}', "missing_field"),
}


async def receive_error(connection: ClientConnection) -> ErrorMessage:
    message = decode_server_message(await connection.recv())
    assert isinstance(message, ErrorMessage), message
    return message


@pytest.mark.parametrize(("payload", "code"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_message_gets_an_error_reply_and_changes_nothing(
    server: LiveServer, make_device: DeviceFactory, payload: str | bytes, code: str
) -> None:
    watcher = make_device(server.url)
    await watcher.wait_ready()
    async with connect(server.url) as hostile:
        await hostile.send(payload)
        error = await receive_error(hostile)
        assert error.code == code
        assert server.database.change_count() == 0

        # The connection and the server still work, and the watcher's first
        # push is this valid set: the bad message pushed nothing.
        await hostile.send(VALID_SET)
        ack = decode_server_message(await hostile.recv())
        assert isinstance(ack, AckMessage)
        assert ack.server_revision == 1
    await wait_converged([watcher], server.database)
    assert [push.server_revision for push, _ in watcher.pushes] == [1]
    assert watcher.server_errors == []


async def test_an_error_reply_names_the_request_when_its_id_was_valid(
    server: LiveServer,
) -> None:
    async with connect(server.url) as hostile:
        await hostile.send(text(set_message(request_id=99, local_revision="1")))
        error = await receive_error(hostile)
    assert (error.request_id, error.code) == (99, "bad_field")


async def test_a_frame_above_the_websocket_limit_closes_that_connection_only(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    watcher = make_device(server.url)
    await watcher.wait_ready()
    async with connect(server.url, max_size=None, close_timeout=HANG_GUARD) as hostile:
        await hostile.send("x" * (2 * 1024 * 1024))
        with pytest.raises(ConnectionClosedError) as closed:
            await hostile.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009  # message too big

    await watcher.set_value("like", True)
    await wait_converged([watcher], server.database)
    assert server.database.change_count() == 1


def test_decoding_refuses_what_the_server_refuses_without_a_server() -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_client_message(text(set_message(value=float("inf"))).replace("Infinity", "1e999"))
    assert refused.value.code == "bad_json"
    assert decode_client_message(VALID_SET) == decode_client_message(VALID_SET)


def test_a_value_nested_as_deep_as_the_limit_allows_is_accepted() -> None:
    deepest = nested_lists(MAX_NESTING - 1)  # the message's own object is one level more
    message = decode_client_message(text(set_message(value=deepest)))
    assert isinstance(message, SetMessage)
    assert message.value == deepest


def test_a_value_nested_one_level_past_the_limit_is_refused_on_every_python() -> None:
    # json.loads alone accepts this on every Python; its own limit differs by version.
    with pytest.raises(ProtocolError, match="nest") as refused:
        decode_client_message(text(set_message(value=nested_lists(MAX_NESTING))))
    assert refused.value.code == "bad_json"


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    brackets = '[{"\\' * MAX_NESTING  # quotes and backslashes escaped too
    message = decode_client_message(text(set_message(value=brackets)))
    assert isinstance(message, SetMessage)
    assert message.value == brackets
