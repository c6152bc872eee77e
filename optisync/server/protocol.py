"""The wire protocol, as the server uses it: ``optisync.wire`` plus what only a server needs.

The messages, their codec and limits live in ``optisync.wire`` (below
both the client and the server); this module re-exports them and adds
``canonical_json``, the one spelling the server stores values in.

Example:
    >>> from optisync.server.protocol import Set, decode_client, encode
    >>> encode(Set(request_id=1, key="like", value=True, local_revision=1))
    b'{"type":"set","request_id":1,"key":"like","value":true,"local_revision":1,"device_id":null}'
    >>> decode_client(b'{"type":"get","request_id":2,"key":"like"}')
    Get(request_id=2, key='like')
    >>> decode_client(b'{"type":"gte"}')
    Traceback (most recent call last):
    ...
    optisync.wire.ProtocolError: unknown_type: Invalid value 'gte' - at `$.type`
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import msgspec

from optisync.wire import (
    Committed,
    Error,
    Get,
    Hello,
    ProtocolError,
    Push,
    Ready,
    Set,
    Value,
    Welcome,
    decode_client,
    decode_server,
    encode,
)

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_NESTING",
    "MAX_SAFE_INT",
    "PROTOCOL_VERSION",
    "ClientMessage",
    "Committed",
    "Error",
    "Get",
    "Hello",
    "ProtocolError",
    "Push",
    "Ready",
    "ServerMessage",
    "Set",
    "Value",
    "Welcome",
    "canonical_json",
    "decode_client",
    "decode_server",
    "encode",
]

# The wire's constants and unions, spelled out here too (with a docstring each,
# for the API reference); tests/test_client_wire.py checks they equal the wire's.
PROTOCOL_VERSION: Final = 1
"""The protocol version a hello must name.

Example:
    >>> from optisync.server.protocol import PROTOCOL_VERSION
    >>> PROTOCOL_VERSION
    1
"""
MAX_SAFE_INT: Final = 2**53 - 1
"""Ids and revisions stay below 2**53, for JavaScript clients.

Example:
    >>> from optisync.server.protocol import MAX_SAFE_INT
    >>> MAX_SAFE_INT == 2**53 - 1
    True
"""
MAX_NESTING: Final = 32
"""The deepest a message may nest arrays and objects, its own object included.

Example:
    >>> from optisync.server.protocol import MAX_NESTING
    >>> MAX_NESTING
    32
"""
MAX_KEY_CHARS: Final = 200
"""Longest key, in characters.

Example:
    >>> from optisync.server.protocol import MAX_KEY_CHARS
    >>> MAX_KEY_CHARS
    200
"""
ClientMessage: TypeAlias = Hello | Set | Get
"""A message a device sends: a hello, a write or a read.

Example:
    >>> from optisync.server.protocol import ClientMessage, Get
    >>> Get in ClientMessage.__args__
    True
"""
ServerMessage: TypeAlias = Welcome | Committed | Push | Ready | Value | Error
"""A message the server sends: a welcome, a committed write, a push, ready, a value or an error.

Example:
    >>> from optisync.server.protocol import Push, ServerMessage
    >>> Push in ServerMessage.__args__
    True
"""


def canonical_json(value: Any) -> bytes:
    """One spelling per JSON value (sorted keys, no spaces): how values are stored.

    Example:
        >>> from optisync.server.protocol import canonical_json
        >>> canonical_json({"b": 1, "a": [True, None]})
        b'{"a":[true,null],"b":1}'
    """
    return msgspec.json.encode(value, order="sorted")
