"""The wire protocol, as the server uses it: ``optisync.wire`` plus what only a server needs.

The messages, their codec and limits live in ``optisync.wire`` (below
both the client and the server); this module re-exports them and adds
``canonical_json``, the one spelling the server stores values in.

Example:
    >>> from optisync.server.protocol import canonical_json
    >>> from optisync.wire import Set, decode_client, encode
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

# The wire, re-exported for the server's modules (its names are documented in
# optisync.wire; this module's own API is canonical_json).
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

__all__ = ["canonical_json"]

_REEXPORTED = (
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


def canonical_json(value: Any) -> bytes:
    """One spelling per JSON value (sorted keys, no spaces): how values are stored.

    Example:
        >>> from optisync.server.protocol import canonical_json
        >>> canonical_json({"b": 1, "a": [True, None]})
        b'{"a":[true,null],"b":1}'
    """
    return msgspec.json.encode(value, order="sorted")
