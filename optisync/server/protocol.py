"""The wire protocol, as the server uses it: ``optisync.wire`` plus what only a server needs.

The messages, their codec and limits live in ``optisync.wire`` (below
both the client and the server); this module re-exports them and adds
``canonical_json``, the one spelling the server stores values in.

Example:
    >>> from optisync.server import protocol
    >>> from optisync import wire
    >>> protocol.Set is wire.Set, protocol.canonical_json({"b": 1, "a": 2})
    (True, b'{"a":2,"b":1}')
"""

from __future__ import annotations

from typing import Any

import msgspec

from optisync import wire

__all__ = ["canonical_json"]


def canonical_json(value: Any) -> bytes:
    """One spelling per JSON value (sorted keys, no spaces): how values are stored.

    Example:
        >>> from optisync.server.protocol import canonical_json
        >>> canonical_json({"b": 1, "a": [True, None]})
        b'{"a":[true,null],"b":1}'
    """
    return msgspec.json.encode(value, order="sorted")


def __getattr__(name: str) -> Any:
    # The wire's names, for code that imported them from here before they moved
    # to optisync.wire (documented there); this module's own API is canonical_json.
    if name in wire.__all__:
        return getattr(wire, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
