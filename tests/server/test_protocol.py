"""The decoder numbers every error it can: the client fails the request that caused it."""

from __future__ import annotations

import json

import pytest

from optisync.transport import wire_key
from optisync.wire import MAX_NESTING, MAX_SAFE_INT, Get, ProtocolError, Set, decode_client

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
    (SET_7 % (b'"k"', b"[" * 5_000 + b"]" * 5_000), "too_large"),  # and too deep
]


@pytest.mark.parametrize(("frame", "code"), NUMBERED)
def test_an_error_carries_the_request_id_whenever_it_reads(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=100)
    assert (caught.value.code, caught.value.request_id) == (code, 7)


# One of each kind of refusal the strict decoder adds, with the kinds already there.
STRICT_NUMBERED = [
    (SET_7 % (b'"k"', b"[" * 5_000 + b"]" * 5_000), "bad_field"),  # nests too deeply
    (SET_7 % (b'"k"', b'{"a":' + b"[" * MAX_NESTING + b"]" * MAX_NESTING + b"}"), "bad_field"),
    (SET_7 % (b'"k"', b"18446744073709551617"), "bad_field"),  # an integer past 2**64
    (SET_7 % (b'"a\\u0000b"', b"1"), "bad_field"),  # a control character inside the key
    (SET_7.replace(b"}", b',"local_revision":2}') % (b'"k"', b"1"), "duplicate_field"),
    (SET_7.replace(b"}", b',"admin":true}') % (b'"k"', b"1"), "unknown_field"),
    (SET_7.replace(b"}", b',"device_id":"me"}') % (b'"k"', b"1"), "bad_field"),  # a bad type
]


@pytest.mark.parametrize(("frame", "code"), STRICT_NUMBERED)
def test_every_kind_of_refusal_carries_the_request_id(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert (caught.value.code, caught.value.request_id) == (code, 7)


UNNUMBERED = [
    (b"{not json", "bad_json"),
    ((SET_7 % (b'"k"', b'"\\ud800"'))[:-1], "bad_json"),  # a surrogate, and cut short
    (SET_7 % (b'"k"', b"NaN"), "bad_json"),
    (SET_7.replace(b"7", b"-7") % (b'"k"', b'"\\ud800"'), "bad_field"),  # no valid id
    (SET_7.replace(b"7", b"-7") % (b'"k"', b"[" * 5_000 + b"]" * 5_000), "bad_field"),  # too deep
    (SET_7.replace(b"7", b"9007199254740992") % (b'"k"', b"[" * 50 + b"]" * 50), "bad_field"),
    (SET_7.replace(b"7", b"18446744073709551617") % (b'"k"', b"1"), "bad_field"),  # id past 2**64
]


@pytest.mark.parametrize(("frame", "code"), UNNUMBERED)
def test_an_error_has_no_request_id_when_none_can_be_read(frame: bytes, code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=100_000)
    assert (caught.value.code, caught.value.request_id) == (code, None)


TOO_DEEP = b"[" * 5_000 + b"]" * 5_000
FOUND_AT_THE_TOP = [
    (b'{"type":"set","key":"k","value":%s,"local_revision":1,"request_id":7}' % TOO_DEEP, 7),
    (b'{"value":["]]}}",%s],"request_id" : 7 ,"type":"set"}' % TOO_DEEP, 7),  # brackets in text
    (b'{"value":[{"request_id":8},%s],"type":"set"}' % TOO_DEEP, None),  # not at the top
    (b'{"value":"\\"request_id\\":8,","x":%s,"type":"set"}' % TOO_DEEP, None),  # in text
    (b'{"value":%s,"request_id":9007199254740992}' % TOO_DEEP, None),  # past 2**53
]


@pytest.mark.parametrize(("frame", "request_id"), FOUND_AT_THE_TOP)
def test_the_request_id_of_a_frame_too_deep_is_read_at_its_top_level_only(
    frame: bytes, request_id: int | None
) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame, max_bytes=100_000)
    assert (caught.value.code, caught.value.request_id) == ("bad_field", request_id)


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


# -- integers: exact in JavaScript, in values and in every field ----------------------

TOO_BIG = [2**53, -(2**53), 2**64 + 1, 10**29]


@pytest.mark.parametrize("number", TOO_BIG)
@pytest.mark.parametrize("value", ["%d", '[1, {"a": [%d]}]', '{"deep": {"er": %d}}'])
def test_an_integer_beyond_2_53_anywhere_in_a_value_is_refused(number: int, value: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(SET_7 % (b'"k"', (value % number).encode()))
    assert (caught.value.code, caught.value.request_id) == ("bad_field", 7)
    assert "2**53" in caught.value.detail


def test_the_refusal_of_a_big_integer_says_where_it_is() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(SET_7 % (b'"k"', b'[1, {"a b": [2, 18446744073709551617]}]'))
    assert caught.value.detail.endswith('at `$.value[1]["a b"][1]`')


INTEGER_FIELDS = [
    b'{"type":"set","request_id":7,"key":"k","value":1,"local_revision":1,"device_id":%d}',
    b'{"type":"set","request_id":7,"key":"k","value":1,"local_revision":%d}',
    b'{"type":"get","request_id":%d,"key":"k"}',
    b'{"type":"hello","device_id":%d,"since":0}',
    b'{"type":"hello","device_id":1,"since":%d}',
    b'{"type":"hello","device_id":1,"since":0,"protocol":%d}',
]


@pytest.mark.parametrize("number", TOO_BIG)
@pytest.mark.parametrize("frame", INTEGER_FIELDS)
def test_an_integer_beyond_2_53_in_any_field_is_refused(number: int, frame: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame.replace(b"%d", str(number).encode()))
    assert caught.value.code == "bad_field"


def test_the_largest_safe_integers_pass_and_long_digits_in_strings_are_text() -> None:
    value = b'[%d, -%d, 1e300, "123456789012345678901234567890"]' % (MAX_SAFE_INT, MAX_SAFE_INT)
    message = decode_client(SET_7 % (b'"k"', value))
    assert isinstance(message, Set)
    assert message.value == [MAX_SAFE_INT, -MAX_SAFE_INT, 1e300, "123456789012345678901234567890"]
    device = b',"device_id":%d}' % MAX_SAFE_INT
    assert decode_client((SET_7 % (b'"k"', b"1")).replace(b"}", device)).device_id == MAX_SAFE_INT  # type: ignore[union-attr]


# -- keys: every character checked ---------------------------------------------------

BAD_KEYS = ["a\x00b", "a\n", "a\nb", "a\tb", "a\x7fb", "a\x85b", "a\u2028b"]
BAD_KEYS += ["\u00a0a", "a\u3000", " a", "a "]  # outer whitespace, Unicode's too


@pytest.mark.parametrize("key", BAD_KEYS)
def test_a_key_with_a_control_character_or_outer_space_is_refused(key: str) -> None:
    frame = b'{"type":"get","request_id":7,"key":%s}' % json.dumps(key).encode()
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert (caught.value.code, caught.value.request_id) == ("bad_field", 7)


GOOD_KEYS = [
    wire_key(("done", "a/b c#")),
    wire_key(("done", 7)),
    wire_key("theme"),
    wire_key(("ñame", "日本 語\u2028\x00")),
    "a b",
    "日本",
    "\U0001f44d\u200d",
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_wire_keys_and_printable_keys_pass(key: str) -> None:
    frame = b'{"type":"get","request_id":7,"key":%s}' % json.dumps(key).encode()
    assert decode_client(frame) == Get(request_id=7, key=key)


# -- duplicate fields -------------------------------------------------------------------

DUPLICATED = [
    (b'{"type":"set","request_id":7,"key":"k","value":1,"local_revision":1,"local_revision":2}', 7),
    (b'{"type":"set","request_id":7,"key":"k","value":1,"local_revision":1,"key":"k"}', 7),
    (b'{"type":"get","request_id":7,"key":"k","type":"get"}', 7),
    (b'{"type":"get","request_id":7,"key":"k","request_id":7}', 7),
    (b'{"type":"get","request_id":7,"key":"k","request_id":8}', None),  # which one?
    (b'{"type":"get","request_id":7,"key":"a","k\\u0065y":"b"}', 7),  # spelled with an escape
    (b'{"type":"hello","device_id":1,"since":0,"since" : 5}', None),
]


@pytest.mark.parametrize(("frame", "request_id"), DUPLICATED)
def test_a_field_given_twice_is_refused(frame: bytes, request_id: int | None) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(frame)
    assert (caught.value.code, caught.value.request_id) == ("duplicate_field", request_id)


def test_field_names_inside_the_value_are_data_not_duplicates() -> None:
    value = b'{"type":"todo","key":"k","value":["key","type"],"local_revision":1}'
    message = decode_client(SET_7 % (b'"k"', value))
    assert isinstance(message, Set)
    assert message.value["type"] == "todo"
