"""The JSON protocol between the live server and its devices.

Every message is one WebSocket text frame holding one JSON object whose
``"type"`` names the message. Decoding is strict: a message with bad JSON,
a missing, unknown or mistyped field, too many bytes or too deep a nesting raises
:class:`ProtocolError`, whose ``code`` the server sends back in an ``error``.

Example:
    >>> from examples.live.protocol import SetMessage, decode_client_message, encode
    >>> text = encode(SetMessage(request_id=1, item="like", value=True,
    ...                          local_revision=1, device_id=7))
    >>> text
    '{"type":"set","request_id":1,"item":"like","value":true,"local_revision":1,"device_id":7}'
    >>> decode_client_message(text).value
    True
    >>> decode_client_message('{"type":"set"}')
    Traceback (most recent call last):
    ...
    examples.live.protocol.ProtocolError: missing_field: set needs request_id
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

import attrs

__all__ = [
    "MAX_ITEM_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "MAX_SAFE_INT",
    "MAX_VALUE_BYTES",
    "AckMessage",
    "ClientMessage",
    "ErrorMessage",
    "GetMessage",
    "HelloMessage",
    "JsonValue",
    "Message",
    "ProtocolError",
    "PushMessage",
    "ReadyMessage",
    "ServerMessage",
    "SetMessage",
    "ValueMessage",
    "canonical_json",
    "decode_client_message",
    "decode_server_message",
    "encode",
    "is_valid_item",
    "nesting_depth",
]

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"

#: Largest message (in UTF-8 bytes) the protocol accepts; larger ones get ``too_large``.
MAX_MESSAGE_BYTES: Final = 16 * 1024
#: Largest value (its canonical JSON, in UTF-8 bytes) a device sends; a set stays well
#: under MAX_MESSAGE_BYTES with it.
MAX_VALUE_BYTES: Final = 8 * 1024
#: Deepest nesting of arrays and objects in a message, its own object included (so a
#: value nests at most 31 deep). Checked before parsing, so that every Python refuses
#: the same messages: ``json``'s own limit depends on the interpreter (3.11 refuses
#: 1,000 levels, 3.13 accepts 5,000).
MAX_NESTING: Final = 32
#: Longest item name, in characters.
MAX_ITEM_CHARS: Final = 200
#: Ids and revisions stay below 2**53 so that JavaScript clients read them exactly.
MAX_SAFE_INT: Final = 2**53 - 1


class ProtocolError(ValueError):
    """A message that breaks the protocol.

    Attributes:
        code: a short machine-readable reason (``bad_json``, ``too_large``,
            ``not_text``, ``bad_message``, ``unknown_type``, ``missing_field``,
            ``unknown_field``, ``bad_field``).
        detail: a sentence for humans.
        request_id: the message's ``request_id`` when it had a valid one,
            so that the sender can fail that request at once.

    Example:
        >>> from examples.live.protocol import ProtocolError, decode_client_message
        >>> try:
        ...     decode_client_message("{not json")
        ... except ProtocolError as error:
        ...     print(error.code)
        bad_json
    """

    def __init__(self, code: str, detail: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


# -- messages ----------------------------------------------------------------


@attrs.frozen
class HelloMessage:
    """Client to server, first on every connection: replay every change after ``since``.

    ``since`` is the newest revision the device received in a push (0: none).

    Example:
        >>> from examples.live.protocol import HelloMessage, encode
        >>> encode(HelloMessage(since=0))
        '{"type":"hello","since":0}'
    """

    since: int


@attrs.frozen
class SetMessage:
    """Client to server: write ``value`` to ``item``; answered by an ``ack`` (or ``error``).

    Example:
        >>> from examples.live.protocol import SetMessage
        >>> SetMessage(request_id=1, item="like", value=True, local_revision=1, device_id=7).item
        'like'
    """

    request_id: int
    item: str
    value: JsonValue
    local_revision: int
    device_id: int


@attrs.frozen
class GetMessage:
    """Client to server: read ``item``; answered by a ``value``. Used to reload after a failure.

    Example:
        >>> from examples.live.protocol import GetMessage, encode
        >>> encode(GetMessage(request_id=3, item="like"))
        '{"type":"get","request_id":3,"item":"like"}'
    """

    request_id: int
    item: str


@attrs.frozen
class AckMessage:
    """Server to writer: the ``set`` with ``request_id`` is committed at ``server_revision``.

    Example:
        >>> from examples.live.protocol import AckMessage
        >>> AckMessage(request_id=1, item="like", value=True, server_revision=4).server_revision
        4
    """

    request_id: int
    item: str
    value: JsonValue
    server_revision: int


@attrs.frozen
class PushMessage:
    """Server to every subscribed device (the writer too): a committed change.

    Example:
        >>> from examples.live.protocol import PushMessage
        >>> push = PushMessage(item="like", value=False, server_revision=5,
        ...                    local_revision=2, device_id=9)
        >>> push.device_id
        9
    """

    item: str
    value: JsonValue
    server_revision: int
    local_revision: int
    device_id: int


@attrs.frozen
class ReadyMessage:
    """Server to client after the replay that answers ``hello``: it is up to date.

    Example:
        >>> from examples.live.protocol import ReadyMessage, encode
        >>> encode(ReadyMessage(server_revision=12))
        '{"type":"ready","server_revision":12}'
    """

    server_revision: int


@attrs.frozen
class ValueMessage:
    """Server to client, answering ``get``: the item's value and revision (-1: never written).

    Example:
        >>> from examples.live.protocol import ValueMessage
        >>> ValueMessage(request_id=3, item="new", value=None, server_revision=-1).value is None
        True
    """

    request_id: int
    item: str
    value: JsonValue
    server_revision: int


@attrs.frozen
class ErrorMessage:
    """Server to client: a message was refused; nothing changed.

    Example:
        >>> from examples.live.protocol import ErrorMessage, encode
        >>> encode(ErrorMessage(request_id=None, code="bad_json", message="not JSON"))
        '{"type":"error","request_id":null,"code":"bad_json","message":"not JSON"}'
    """

    request_id: int | None
    code: str
    message: str


ClientMessage: TypeAlias = HelloMessage | SetMessage | GetMessage
ServerMessage: TypeAlias = AckMessage | PushMessage | ReadyMessage | ValueMessage | ErrorMessage
Message: TypeAlias = ClientMessage | ServerMessage

_TYPE_NAMES: Final[dict[type[Any], str]] = {
    HelloMessage: "hello",
    SetMessage: "set",
    GetMessage: "get",
    AckMessage: "ack",
    PushMessage: "push",
    ReadyMessage: "ready",
    ValueMessage: "value",
    ErrorMessage: "error",
}


def encode(message: Message) -> str:
    """The JSON text of ``message`` (compact, ``"type"`` first).

    Example:
        >>> from examples.live.protocol import ReadyMessage, encode
        >>> encode(ReadyMessage(server_revision=3))
        '{"type":"ready","server_revision":3}'
    """
    fields = {"type": _TYPE_NAMES[type(message)], **attrs.asdict(message, recurse=False)}
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: JsonValue) -> str:
    """One spelling per JSON value (sorted keys, no spaces): how values are stored and compared.

    Example:
        >>> from examples.live.protocol import canonical_json
        >>> canonical_json({"b": 1, "a": [True, None]})
        '{"a":[true,null],"b":1}'
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


# -- decoding ----------------------------------------------------------------

_Check: TypeAlias = Callable[[object], bool]


def _is_safe_int(value: object) -> bool:
    return type(value) is int and 0 <= value <= MAX_SAFE_INT


def _is_revision(value: object) -> bool:
    return type(value) is int and -1 <= value <= MAX_SAFE_INT


def is_valid_item(value: object) -> bool:
    """Whether ``value`` is a valid item name: 1 to 200 printable characters, no outer spaces.

    Example:
        >>> from examples.live.protocol import is_valid_item
        >>> is_valid_item("like"), is_valid_item(" like"), is_valid_item("")
        (True, False, False)
    """
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_ITEM_CHARS
        and value.isprintable()
        and value.strip() == value
    )


def _is_any(value: object) -> bool:
    # json.loads only builds JSON values; the message bounds their size and nesting.
    return True


def _is_optional_id(value: object) -> bool:
    return value is None or _is_safe_int(value)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


# For each message type: its class and, for each field, a check of the value.
_Schema: TypeAlias = tuple[type[Any], dict[str, _Check]]

_CLIENT_SCHEMAS: Final[dict[str, _Schema]] = {
    "hello": (HelloMessage, {"since": _is_safe_int}),
    "set": (
        SetMessage,
        {
            "request_id": _is_safe_int,
            "item": is_valid_item,
            "value": _is_any,
            "local_revision": _is_safe_int,
            "device_id": _is_safe_int,
        },
    ),
    "get": (GetMessage, {"request_id": _is_safe_int, "item": is_valid_item}),
}

_SERVER_SCHEMAS: Final[dict[str, _Schema]] = {
    "ack": (
        AckMessage,
        {
            "request_id": _is_safe_int,
            "item": is_valid_item,
            "value": _is_any,
            "server_revision": _is_safe_int,
        },
    ),
    "push": (
        PushMessage,
        {
            "item": is_valid_item,
            "value": _is_any,
            "server_revision": _is_safe_int,
            "local_revision": _is_safe_int,
            "device_id": _is_safe_int,
        },
    ),
    "ready": (ReadyMessage, {"server_revision": _is_safe_int}),
    "value": (
        ValueMessage,
        {
            "request_id": _is_safe_int,
            "item": is_valid_item,
            "value": _is_any,
            "server_revision": _is_revision,
        },
    ),
    "error": (
        ErrorMessage,
        {"request_id": _is_optional_id, "code": _is_str, "message": _is_str},
    ),
}

_FIELD_HINTS: Final[dict[str, str]] = {
    "since": "an integer from 0 to 2**53-1",
    "request_id": "an integer from 0 to 2**53-1",
    "local_revision": "an integer from 0 to 2**53-1",
    "device_id": "an integer from 0 to 2**53-1",
    "server_revision": "an integer from -1 to 2**53-1",
    "item": f"a printable string of 1 to {MAX_ITEM_CHARS} characters without outer spaces",
}


def decode_client_message(data: str | bytes) -> ClientMessage:
    """Decode and check one message a client sent.

    Raises:
        ProtocolError: the message breaks the protocol.

    Example:
        >>> from examples.live.protocol import decode_client_message
        >>> decode_client_message('{"type":"hello","since":4}')
        HelloMessage(since=4)
    """
    message: ClientMessage = _decode(data, _CLIENT_SCHEMAS)
    return message


def decode_server_message(data: str | bytes) -> ServerMessage:
    """Decode and check one message the server sent.

    Raises:
        ProtocolError: the message breaks the protocol.

    Example:
        >>> from examples.live.protocol import decode_server_message
        >>> decode_server_message('{"type":"ready","server_revision":9}')
        ReadyMessage(server_revision=9)
    """
    message: ServerMessage = _decode(data, _SERVER_SCHEMAS)
    return message


def _decode(data: str | bytes, schemas: Mapping[str, _Schema]) -> Any:
    if not isinstance(data, str):
        raise ProtocolError("not_text", "messages are JSON in text frames, not binary frames")
    # A str of n characters holds at least n UTF-8 bytes: reject huge ones before encoding.
    if len(data) > MAX_MESSAGE_BYTES or len(data.encode()) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", f"a message may hold at most {MAX_MESSAGE_BYTES} bytes")
    if nesting_depth(data) > MAX_NESTING:
        raise ProtocolError("bad_json", f"arrays and objects may nest at most {MAX_NESTING} deep")
    fields = _parse_json(data)
    if not isinstance(fields, dict):
        raise ProtocolError("bad_message", "a message is a JSON object")
    request_id = fields.get("request_id")
    known_id = request_id if _is_safe_int(request_id) else None
    kind = fields.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", 'a message needs a string "type"', known_id)
    schema = schemas.get(kind)
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}", known_id)
    cls, checks = schema
    unknown = sorted(name for name in fields if name != "type" and name not in checks)
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise ProtocolError("unknown_field", f"{kind} has no field {names}", known_id)
    values: dict[str, object] = {}
    for name, check in checks.items():
        if name not in fields:
            raise ProtocolError("missing_field", f"{kind} needs {name}", known_id)
        value = fields[name]
        if not check(value):
            hint = _FIELD_HINTS.get(name, "of another type")
            raise ProtocolError("bad_field", f"{kind}.{name} must be {hint}", known_id)
        values[name] = value
    return cls(**values)


def _parse_json(text: str) -> object:
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_keys,
        )
    except ProtocolError:
        raise
    except ValueError as error:  # bad syntax, huge ints
        raise ProtocolError("bad_json", f"not valid JSON ({type(error).__name__})") from None


# A string (its escapes included), or one bracket outside strings.
_STRING_OR_BRACKET: Final = re.compile(r'"(?:[^"\\]|\\.)*"|(?P<open>[\[{])|(?P<close>[\]}])')


def nesting_depth(text: str) -> int:
    """How deep arrays and objects nest in JSON ``text``, brackets inside strings aside.

    It reads the text without parsing it, so it also measures text that
    ``json.loads`` would refuse, or could not parse without running out of
    stack.

    Example:
        >>> from examples.live.protocol import nesting_depth
        >>> nesting_depth('{"a": [[1], "]]]"]}'), nesting_depth("true")
        (3, 0)
    """
    depth = deepest = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        if match["open"] is not None:
            depth += 1
            deepest = max(deepest, depth)
        elif match["close"] is not None:
            depth -= 1
    return deepest


def _refuse_constant(name: str) -> object:
    raise ProtocolError("bad_json", f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ProtocolError("bad_json", "numbers must be finite")
    return number


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ProtocolError("bad_json", "an object repeats a key")
    return result
