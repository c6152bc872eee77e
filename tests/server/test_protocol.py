"""The decoder numbers every error it can: the client fails the request that caused it."""

from __future__ import annotations

import pytest

from optisync.wire import MAX_NESTING, ProtocolError, decode_client

SET_7 = b'{"type":"set","request_id":7,"key":%s,"value":%s,"local_revision":1}'

NUMBERED = [
    (SET_7 % (b'"k"', b'"\\ud800"'), "bad_field"),  # a lone high surrogate in the value
    (SET_7 % (b'"k"', b'"a\\udc00b"'), "bad_field"),  # a lone low one
    (SET_7 % (b'"k\\udfff"', b"1"), "bad_field"),  # in the key
    (SET_7 % (b'"k"', b'{"\\ud800": 1}'), "bad_field"),  # in a nested object's key
    (SET_7 % (b'"k"', b'"\xff"'), "bad_json"),  # not UTF-8, yet the request_id reads
    (b'{"type":"get","request_id":7,"key":"k","admin":true}', "unknown_field"),
    (SET_7 % (b'"k"', b"1e999"), "bad_field"),
    (b'{"type":"get","request_id":7}', "missing_field"),
    (b'{"type":"drop","request_id":7}', "unknown_type"),
    (b'{"request_id":7}', "bad_message"),
    (SET_7 % (b'"k"', b'"' + b"x" * 100 + b'"'), "too_large"),
]


@pytest.mark.parametrize(("frame", "code"), NUMBERED)
def test_an_error_carries_the_request_id_whenever_it_reads(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=100)
    assert (caught.value.code, caught.value.request_id) == (code, 7)


UNNUMBERED = [
    (b"{not json", "bad_json"),
    ((SET_7 % (b'"k"', b'"\\ud800"'))[:-1], "bad_json"),  # a surrogate, and cut short
    (SET_7 % (b'"k"', b"NaN"), "bad_json"),
    (SET_7.replace(b"7", b"-7") % (b'"k"', b'"\\ud800"'), "bad_field"),  # no valid id
    (SET_7 % (b'"k"', b"[" * 5_000 + b"]" * 5_000), "bad_field"),  # nests too deeply
]


@pytest.mark.parametrize(("frame", "code"), UNNUMBERED)
def test_an_error_has_no_request_id_when_none_can_be_read(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=100_000)
    assert (caught.value.code, caught.value.request_id) == (code, None)


def test_the_nesting_limit_is_the_same_on_every_python() -> None:
    deepest = b"[" * (MAX_NESTING - 1) + b"]" * (MAX_NESTING - 1)  # the message is one more
    assert decode_client(SET_7 % (b'"k"', deepest)).value is not None  # type: ignore[union-attr]
    with pytest.raises(ProtocolError) as caught:
        decode_client(SET_7 % (b'"k"', b"[" + deepest + b"]"))
    assert caught.value.code == "bad_field"
    # Brackets inside strings are text, not nesting.
    text = b'"' + b"[" * 100 + b'\\"{' + b'"'
    assert decode_client(SET_7 % (b'"k"', text)).value == "[" * 100 + '"{'  # type: ignore[union-attr]


def test_a_valid_surrogate_pair_is_one_character_not_an_error() -> None:
    message = decode_client(SET_7 % (b'"k"', b'"\\ud83d\\ude00"'))
    assert message.value == "\U0001f600"  # type: ignore[union-attr]


def test_a_text_holding_a_lone_surrogate_character_is_refused_with_its_request_id() -> None:
    text = (SET_7 % (b'"k"', b'"x"')).decode().replace('"x"', '"\ud800"')
    with pytest.raises(ProtocolError) as caught:
        decode_client(text)
    assert caught.value.request_id == 7
