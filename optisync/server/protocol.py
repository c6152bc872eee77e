"""The wire protocol, as the server uses it: :mod:`optisync.wire` plus what only a server needs.

The messages, their codec and limits live in :mod:`optisync.wire` (below
both the client and the server); this module re-exports them and adds
:func:`canonical_json`, the one spelling the server stores values in.

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

from typing import Any

import msgspec

from optisync.wire import (
    MAX_KEY_CHARS,
    MAX_NESTING,
    MAX_SAFE_INT,
    PROTOCOL_VERSION,
    ClientMessage,
    Committed,
    Error,
    Get,
    Hello,
    ProtocolError,
    Push,
    Ready,
    ServerMessage,
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


def canonical_json(value: Any) -> bytes:
    """One spelling per JSON value (sorted keys, no spaces): how values are stored.

    Example:
        >>> from optisync.server.protocol import canonical_json
        >>> canonical_json({"b": 1, "a": [True, None]})
        b'{"a":[true,null],"b":1}'
    """
    return msgspec.json.encode(value, order="sorted")
