"""The wire format the client speaks, and the server's view of it."""

from __future__ import annotations

import pytest

import optisync
from optisync import wire
from optisync.server import protocol
from optisync.wire import Committed, ProtocolError, decode_server, encode


@pytest.mark.parametrize(
    "name",
    [
        "PROTOCOL_VERSION",
        "MAX_SAFE_INT",
        "MAX_NESTING",
        "MAX_KEY_CHARS",
        "ClientMessage",
        "ServerMessage",
    ],
)
def test_the_servers_protocol_module_names_the_wires_constants(name: str) -> None:
    assert getattr(protocol, name) == getattr(wire, name)


def test_the_servers_protocol_module_reexports_the_wires_messages_and_codec() -> None:
    for name in wire.__all__:
        assert getattr(protocol, name) is getattr(wire, name), name
    assert protocol.__all__ == ["canonical_json"]  # its own API; the rest is the wire's
    assert protocol.Committed is wire.Committed
    assert protocol.decode_client is wire.decode_client
    assert "Ack" not in protocol.__all__
    assert "Ack" not in wire.__all__


def test_committed_keeps_the_ack_tag_on_the_wire() -> None:
    frame = encode(Committed(request_id=1, key="k", value=[1], server_revision=2))
    assert frame.startswith(b'{"type":"ack",')
    assert decode_server(frame) == Committed(request_id=1, key="k", value=[1], server_revision=2)


def test_a_protocol_error_is_an_optisync_error_and_a_value_error() -> None:
    with pytest.raises(ProtocolError) as refused:
        decode_server(b"{not json")
    assert isinstance(refused.value, optisync.OptisyncError)
    assert isinstance(refused.value, ValueError)
    assert refused.value.code == "bad_json"
