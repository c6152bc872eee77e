"""The wire protocol between an optisync server and its devices, version 1.

The client and the server both speak it; this module sits below both, so
that a client never imports the server (:mod:`optisync.server.protocol`
re-exports it for the server's side, with what only a server needs).

Every message is one WebSocket text frame holding one JSON object whose
``"type"`` names it. Decoding is done by `msgspec`_ against the structs below
(strict types, no unknown fields, bounds checked), and :func:`decode_client`
adds what msgspec lets through: a field given twice, an integer in a value
beyond :data:`MAX_SAFE_INT`. A malformed message raises :class:`ProtocolError`
whose ``code`` the server sends back.

.. _msgspec: https://jcristharif.com/msgspec/

Example:
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

import hashlib
import json
import re
from typing import Annotated, Any, Final, TypeAlias

import msgspec

from optisync.errors import OptisyncError

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_NESTING",
    "MAX_PREFIXES",
    "MAX_SAFE_INT",
    "PROTOCOL_VERSION",
    "Auth",
    "Authed",
    "ClientMessage",
    "Committed",
    "Delete",
    "Error",
    "Get",
    "Hello",
    "ProtocolError",
    "Push",
    "Ready",
    "ServerMessage",
    "Set",
    "Subscribe",
    "Subscribed",
    "Value",
    "Welcome",
    "decode_client",
    "decode_server",
    "encode",
    "entry_digest",
]

PROTOCOL_VERSION: Final = 1
"""The protocol version a hello must name; a server refuses any other with ``bad_version``.

Example:
    >>> from optisync.wire import PROTOCOL_VERSION
    >>> PROTOCOL_VERSION
    1
"""
MAX_SAFE_INT: Final = 2**53 - 1
"""Every integer a device sends (ids, revisions, any in a value) stays within ±MAX_SAFE_INT.

So that JavaScript clients read them exactly.

Example:
    >>> from optisync.wire import MAX_SAFE_INT
    >>> MAX_SAFE_INT == 2**53 - 1
    True
"""
MAX_NESTING: Final = 32
"""The deepest a message may nest arrays and objects, its own object included.

Explicit, so that every Python refuses the same messages: the decoder's own
limit is the interpreter's (3.11 stops near 1,000 levels, 3.13 goes past 5,000).

Example:
    >>> from optisync.wire import MAX_NESTING
    >>> MAX_NESTING
    32
"""

MAX_KEY_CHARS: Final = 200
"""Longest key, in characters.

Example:
    >>> from optisync.wire import MAX_KEY_CHARS
    >>> MAX_KEY_CHARS
    200
"""

MAX_PREFIXES: Final = 64
"""Most key prefixes one subscription (a hello's or a :class:`Subscribe`'s) may name.

Each prefix is at most :data:`MAX_KEY_CHARS` characters. More prefixes are
refused with ``too_many_prefixes``, a longer one or one holding a control
character with ``bad_prefix``.

Example:
    >>> from optisync.wire import MAX_PREFIXES
    >>> MAX_PREFIXES
    64
"""

_SafeInt = Annotated[int, msgspec.Meta(ge=-MAX_SAFE_INT, le=MAX_SAFE_INT)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
_Revision = Annotated[int, msgspec.Meta(ge=-1, le=MAX_SAFE_INT)]
_DeviceId = Annotated[int, msgspec.Meta(ge=1, le=MAX_SAFE_INT)]
# No control character anywhere (C0, DEL, C1, line and paragraph separators)
# and no outer whitespace: the key shows up in logs and in authorization rules.
# \Z, not $: $ would also match before a final newline.
_KEY_PATTERN: Final = r"\A(?!\s)[^\x00-\x1f\x7f-\x9f\u2028\u2029]*(?<!\s)\Z"
_Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS, pattern=_KEY_PATTERN)]
_Text = Annotated[str, msgspec.Meta(max_length=4096)]
_Digest = Annotated[str, msgspec.Meta(max_length=64)]
# What secrets.token_urlsafe(32) makes (43 characters), and room for longer ones.
_Secret = Annotated[str, msgspec.Meta(min_length=16, max_length=128, pattern=r"^[A-Za-z0-9_-]+$")]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class Hello(_Message, tag="hello", frozen=True):
    """Client to server, first on every connection.

    ``since`` is the newest server revision the device has seen (0: none);
    ``generation`` the server generation it saw it from (``""``: none);
    ``digest`` (optional, left out when unknown) the :func:`entry_digest` of
    the push at ``since``, by which the server recognises a database restored
    from a backup; ``device_secret`` (optional, left out by older clients) the
    secret only this device holds: the first hello that carries one binds the
    device id to it, and every later hello for that id must carry the same
    (``secrets.token_urlsafe(32)`` makes one; persisted devices
    keep theirs in their snapshot); ``prefixes`` (optional) the key prefixes
    the device subscribes to: left out, every key the grant allows; ``[]``,
    none (see :class:`Subscribe`). The server answers with a :class:`Welcome`, replays every
    change after ``since`` as :class:`Push` messages and then sends :class:`Ready`.

    Example:
        >>> from optisync.wire import Hello, encode
        >>> encode(Hello(device_id=7, since=0))
        b'{"type":"hello","device_id":7,"since":0,"protocol":1,"token":null,"generation":""}'
        >>> encode(Hello(device_id=7, since=3, digest="5f0c2b7d3e9a4c1f"))[-28:]
        b'"digest":"5f0c2b7d3e9a4c1f"}'
    """

    device_id: _DeviceId
    since: _Count
    protocol: _SafeInt = PROTOCOL_VERSION
    token: _Text | None = None
    generation: _Text = ""
    # UNSET, not "": a hello without a digest is the one an older client sent,
    # and a server from before digests refuses the field it does not know.
    digest: _Digest | msgspec.UnsetType = msgspec.UNSET
    # UNSET for the same reason: an older server refuses a field it does not know.
    device_secret: _Secret | msgspec.UnsetType = msgspec.UNSET
    # UNSET: every key the grant allows; []: none. Checked by decode_client.
    prefixes: list[str] | msgspec.UnsetType = msgspec.UNSET


class Set(_Message, tag="set", frozen=True):
    """Client to server: write ``value`` to ``key``; answered by :class:`Committed` or an error.

    ``device_id`` may be left out: the connection's device id (from the hello)
    is used. A different one is refused with ``forbidden``.

    Example:
        >>> from optisync.wire import Set
        >>> Set(request_id=1, key="like", value=True, local_revision=1).key
        'like'
    """

    request_id: _Count
    key: _Key
    value: Any
    local_revision: _Count
    device_id: _SafeInt | None = None


class Delete(_Message, tag="delete", frozen=True):
    """Client to server: delete ``key`` (a tombstone); answered by :class:`Committed` or an error.

    A delete is a write like a :class:`Set`: it takes the next revision,
    needs write permission, is deduplicated by ``(device_id, key,
    local_revision)`` when it names its device, and last write wins between
    it and the sets of the key. Its ack and its pushes carry ``deleted:
    true`` and a null ``value``.

    Example:
        >>> from optisync.wire import Delete, encode
        >>> encode(Delete(request_id=4, key="todo/milk", local_revision=2))
        b'{"type":"delete","request_id":4,"key":"todo/milk","local_revision":2,"device_id":null}'
    """

    request_id: _Count
    key: _Key
    local_revision: _Count
    device_id: _SafeInt | None = None


class Get(_Message, tag="get", frozen=True):
    """Client to server: read one key; answered by :class:`Value`.

    Example:
        >>> from optisync.wire import Get, encode
        >>> encode(Get(request_id=3, key="like"))
        b'{"type":"get","request_id":3,"key":"like"}'
    """

    request_id: _Count
    key: _Key


class Subscribe(_Message, tag="subscribe", frozen=True):
    """Client to server: from now on, receive only the keys starting with one of ``prefixes``.

    It replaces the connection's subscription (the hello's ``prefixes``)
    without reconnecting; ``[]`` receives nothing. What a device may read
    still bounds it: a prefix outside the grant brings nothing. The server
    first sends, as :class:`Push` messages, every key newly in scope (from
    revision 0: the device never had them), then :class:`Subscribed`; live
    pushes follow without gap or duplicate. At most :data:`MAX_PREFIXES`
    prefixes of at most :data:`MAX_KEY_CHARS` characters each; a prefix
    matches as a plain string prefix of a key (``""`` matches every key).

    Example:
        >>> from optisync.wire import Subscribe, encode
        >>> encode(Subscribe(request_id=4, prefixes=["shared/", "user/ada/"]))
        b'{"type":"subscribe","request_id":4,"prefixes":["shared/","user/ada/"]}'
    """

    request_id: _Count
    prefixes: list[str]


class Welcome(_Message, tag="welcome", frozen=True):
    """Server to client, answering :class:`Hello`: who the server is and where it stands.

    ``reset`` is true when the device's position cannot come from this
    database (a new database, or one restored from a backup): its
    ``generation`` is another, its ``since`` is beyond the head, or the entry
    at ``since`` is not the one its ``digest`` names. The replay then starts
    at 0 and the device should reload its state.

    ``expires_at`` (left out when the connection's credentials never expire)
    is when they do, in Unix seconds: the server closes the connection then
    (``token_expired``) unless the device has sent a fresh token in an
    :class:`Auth` meanwhile.

    ``compacted`` (left out unless true) comes with ``reset`` when the
    device's ``since`` is below the compaction horizon: tombstones it has not
    seen were dropped, so a key the replay from 0 does not mention was
    deleted (the device drops it, rather than writing it back as it does
    after a restored backup).

    Example:
        >>> from optisync.wire import Welcome, encode
        >>> Welcome(generation="g1", server_revision=4, reset=False).server_revision
        4
        >>> encode(Welcome(generation="g1", server_revision=4, reset=False, expires_at=1.5e9))[-26:]
        b'"expires_at":1500000000.0}'
    """

    generation: str
    server_revision: int
    reset: bool
    protocol: int = PROTOCOL_VERSION
    # UNSET, not None: left out unless the credentials expire, so that an older
    # client, whose structs forbid unknown fields, sees the welcome it knows.
    expires_at: float | msgspec.UnsetType = msgspec.UNSET
    compacted: bool | msgspec.UnsetType = msgspec.UNSET


class Auth(_Message, tag="auth", frozen=True):
    """Client to server, on an open connection: fresh credentials, before the old ones expire.

    The server checks ``token`` as it checked the hello's (with the same
    HTTP handshake) and answers :class:`Authed`; the new credentials must
    name the same principal. A refused token gets an ``error`` (its code
    ``unauthorized`` or ``token_expired``) and the connection is closed
    (code 1008).

    Example:
        >>> from optisync.wire import Auth, encode
        >>> encode(Auth(request_id=4, token="eyJhbGciOi..."))
        b'{"type":"auth","request_id":4,"token":"eyJhbGciOi..."}'
    """

    request_id: _Count
    token: _Text


class Authed(_Message, tag="authed", frozen=True):
    """Server to client, answering :class:`Auth`: the new credentials are admitted.

    From now on the connection reads and writes with the rights they grant.
    ``expires_at`` is when they expire (Unix seconds), or None for never.

    Example:
        >>> from optisync.wire import Authed, encode
        >>> encode(Authed(request_id=4, expires_at=None))
        b'{"type":"authed","request_id":4,"expires_at":null}'
    """

    request_id: int
    expires_at: float | None


class Committed(_Message, tag="ack", frozen=True):
    """Server to writer: the :class:`Set` with ``request_id`` is committed at ``server_revision``.

    Its ``"type"`` on the wire is ``"ack"``. (The name differs so that the one
    public ``Ack`` is ``optisync.transport.Ack``, what a transport returns.)
    ``deleted`` is true (and ``value`` null) when the committed change is a
    tombstone (a :class:`Delete`); it is left out otherwise, so that a peer
    from before deletes never sees it until a delete happens.

    Example:
        >>> from optisync.wire import Committed, encode
        >>> encode(Committed(request_id=1, key="like", value=True, server_revision=4))
        b'{"type":"ack","request_id":1,"key":"like","value":true,"server_revision":4}'
        >>> encode(Committed(request_id=2, key="like", value=None, server_revision=5, deleted=True))
        b'{"type":"ack","request_id":2,"key":"like","value":null,"server_revision":5,"deleted":true}'
    """

    request_id: int
    key: str
    value: Any
    server_revision: int
    deleted: bool | msgspec.UnsetType = msgspec.UNSET


class Push(_Message, tag="push", frozen=True):
    """Server to every device allowed to read ``key`` (the writer too): a committed change.

    Devices other than the writer receive ``device_id=0`` and
    ``local_revision=0``: they only need to know the change is not theirs.
    ``deleted`` is true (and ``value`` null) for a tombstone: the key was
    deleted; left out otherwise.

    Example:
        >>> from optisync.wire import Push
        >>> push = Push(key="a", value=1, server_revision=5, local_revision=2, device_id=9)
        >>> push.device_id
        9
    """

    key: str
    value: Any
    server_revision: int
    local_revision: int
    device_id: int
    deleted: bool | msgspec.UnsetType = msgspec.UNSET


class Ready(_Message, tag="ready", frozen=True):
    """Server to client after the replay: everything up to ``server_revision`` was sent.

    Example:
        >>> from optisync.wire import Ready, encode
        >>> encode(Ready(server_revision=12))
        b'{"type":"ready","server_revision":12}'
    """

    server_revision: int


class Subscribed(_Message, tag="subscribed", frozen=True):
    """Server to client, answering :class:`Subscribe`: every key newly in scope was sent.

    ``server_revision`` is the connection's position then: the newest
    revision sent to the device.

    Example:
        >>> from optisync.wire import Subscribed, encode
        >>> encode(Subscribed(request_id=4, server_revision=12))
        b'{"type":"subscribed","request_id":4,"server_revision":12}'
    """

    request_id: int
    server_revision: int


class Value(_Message, tag="value", frozen=True):
    """Server to client, answering :class:`Get`: the value and revision (-1: never written).

    A deleted key answers ``deleted: true``, a null ``value`` and the
    revision of its delete (left out for a key that holds a value).

    Example:
        >>> from optisync.wire import Value
        >>> Value(request_id=3, key="new", value=None, server_revision=-1).value is None
        True
    """

    request_id: int
    key: str
    value: Any
    server_revision: _Revision
    deleted: bool | msgspec.UnsetType = msgspec.UNSET


class Error(_Message, tag="error", frozen=True):
    """Server to client: a message was refused and changed nothing.

    Example:
        >>> from optisync.wire import Error, encode
        >>> encode(Error(request_id=None, code="bad_json", message="not JSON"))
        b'{"type":"error","request_id":null,"code":"bad_json","message":"not JSON"}'
    """

    request_id: int | None
    code: str
    message: str


ClientMessage: TypeAlias = Hello | Set | Delete | Get | Auth | Subscribe
"""A message a device sends: a hello, a write (a set or a delete), a read, fresh credentials
or a subscription.

Example:
    >>> from optisync.wire import ClientMessage, Get
    >>> Get in ClientMessage.__args__
    True
"""
ServerMessage: TypeAlias = Welcome | Committed | Push | Ready | Value | Error | Authed | Subscribed
"""A message the server sends: a welcome, an ack, a push, ready, a value, an error, authed
or subscribed.

Example:
    >>> from optisync.wire import Push, ServerMessage
    >>> Push in ServerMessage.__args__
    True
"""


class ProtocolError(OptisyncError, ValueError):
    """A message that breaks the protocol.

    The server answers such a message with an ``error`` naming ``code``; the
    client ignores (and logs) a malformed message from the server.

    Attributes:
        code: ``bad_json``, ``bad_message``, ``unknown_type``, ``missing_field``,
            ``unknown_field``, ``duplicate_field``, ``bad_field``, ``too_large``,
            ``too_many_prefixes`` or ``bad_prefix``.
        request_id: the message's ``request_id`` when it had a valid one.

    Example:
        >>> from optisync.wire import ProtocolError, decode_client
        >>> try:
        ...     decode_client(b"{not json")
        ... except ProtocolError as error:
        ...     print(error.code)
        bad_json
    """

    def __init__(self, code: str, detail: str, request_id: int | None = None) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail
        self.request_id = request_id


class _RequestId(msgspec.Struct):
    request_id: _Count | None = None


_client_decoder: Final = msgspec.json.Decoder(ClientMessage)
_server_decoder: Final = msgspec.json.Decoder(ServerMessage)
_id_decoder: Final = msgspec.json.Decoder(_RequestId)
# Checks the syntax only: the text is skipped over, no value is built.
_syntax_decoder: Final = msgspec.json.Decoder(msgspec.Raw)
_encoder: Final = msgspec.json.Encoder()
_LONE_SURROGATE: Final = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_STRING: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET: Final = re.compile(rb"[\[\]{}]")
_QUOTED_REQUEST_ID: Final = b'"request_id"'
_ID_FIELD: Final = re.compile(rb'"request_id"\s*:\s*(0|[1-9][0-9]{0,15})\s*[,}]')
# 2**53 has 16 digits: a frame without 16 digits in a row holds no unsafe integer.
# (bytes.translate and `in` find them about 3 times faster than a regex.)
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
_SIXTEEN_DIGITS: Final = b"0" * 16
# Field names are [a-z_]: one spelled with an escape holds \u005f or \u0061-\u007a.
_ESCAPED_NAME: Final = re.compile(rb"\\u00[5-7]")
_QUOTED_NAMES: Final = {
    kind: tuple(b'"%s"' % name.encode() for name in ("type", *kind.__struct_fields__))
    for kind in (Hello, Set, Delete, Get, Auth, Subscribe)
}
# A prefix may end in whitespace (keys hold inner spaces); never a control character.
_PREFIX: Final = re.compile(r"\A[^\x00-\x1f\x7f-\x9f\u2028\u2029]*\Z")


def encode(message: ClientMessage | ServerMessage) -> bytes:
    """The JSON of ``message`` (compact, ``"type"`` first), as UTF-8 bytes.

    Example:
        >>> from optisync.wire import Ready, encode
        >>> encode(Ready(server_revision=3))
        b'{"type":"ready","server_revision":3}'
    """
    return _encoder.encode(message)


def entry_digest(push: Push) -> str:
    """The digest of one log entry as ``push`` delivered it: 16 hex digits of a SHA-256.

    What a device sends as :attr:`Hello.digest` for the push at its cursor,
    and what the server computes for the entry it holds at ``since``. The
    hashed bytes are, in UTF-8, ``server_revision``, ``local_revision`` and
    ``device_id`` in decimal and ``key``, each followed by a newline, then
    the value as the server spells it in the push (its canonical JSON:
    sorted keys, no spaces). A client in another language can hash the
    value's text exactly as it came in the frame. A tombstone (``deleted``)
    hashes no value bytes at all (its null is not hashed).

    Example:
        >>> from optisync.wire import Push, entry_digest
        >>> entry_digest(Push(key="a", value={"y": 1, "x": True}, server_revision=5,
        ...                   local_revision=0, device_id=0))
        'd7b424cb3ce2c819'
    """
    head = f"{push.server_revision}\n{push.local_revision}\n{push.device_id}\n{push.key}\n"
    if push.deleted is True:  # no JSON text is empty: a tombstone never hashes like a value
        return hashlib.sha256(head.encode()).hexdigest()[:16]
    # A Raw value (the server's stored bytes) is canonical already and passes as is.
    value = msgspec.json.encode(push.value, order="sorted")
    return hashlib.sha256(head.encode() + value).hexdigest()[:16]


def decode_client(data: bytes | str, *, max_bytes: int = 64 * 1024) -> ClientMessage:
    """Decode and check one message a device sent.

    Raises:
        ProtocolError: the message breaks the protocol (or has more than ``max_bytes``).

    Example:
        >>> from optisync.wire import decode_client
        >>> decode_client('{"type":"hello","device_id":4,"since":0}').since
        0
    """
    raw = _utf8(data)
    message: ClientMessage = _decode(_client_decoder, raw, max_bytes)
    request_id = None if isinstance(message, Hello) else message.request_id
    if isinstance(message, Set) and _SIXTEEN_DIGITS in raw.translate(_DIGITS_AS_ZERO):
        _refuse_unsafe_integers(message.value, request_id)
    if _may_repeat_a_field(raw, _QUOTED_NAMES[type(message)]):
        _refuse_duplicate_fields(raw, request_id)
    if isinstance(message, Hello | Subscribe):
        _check_prefixes(message.prefixes, request_id)
    return message


def decode_server(data: bytes | str, *, max_bytes: int = 16 * 1024 * 1024) -> ServerMessage:
    """Decode and check one message the server sent.

    Example:
        >>> from optisync.wire import decode_server
        >>> decode_server(b'{"type":"ready","server_revision":9}')
        Ready(server_revision=9)
    """
    message: ServerMessage = _decode(_server_decoder, _utf8(data), max_bytes)
    return message


def _utf8(data: bytes | str) -> bytes:
    # surrogatepass: a str holding a lone surrogate becomes bytes msgspec refuses.
    return data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes, max_bytes: int) -> Any:
    if len(raw) > max_bytes:
        raise ProtocolError(
            "too_large",
            f"a message may hold at most {max_bytes} bytes",
            _request_id(raw, read_at_most=max_bytes),
        )
    if _too_deep(raw):
        detail = f"arrays and objects may nest at most {MAX_NESTING} deep"
        if raw.lstrip()[:1] != b"{":
            raise ProtocolError("bad_message", detail)
        raise ProtocolError("bad_field", detail, _shallow_request_id(raw))
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        code, detail = _validation_code(str(error)), str(error)
    except msgspec.DecodeError as error:
        code, detail = "bad_json", str(error)
        if _LONE_SURROGATE.search(raw):
            # JSON allows "\ud800" but no UTF-8 text holds it. Read the message
            # with each surrogate escape replaced: if that is JSON, the field is
            # bad, not the JSON, and its request_id is readable.
            readable = _LONE_SURROGATE.sub(rb"\\ufffd", raw)
            if _is_json(readable):
                code, detail = "bad_field", "strings may not hold a lone surrogate"
                raw = readable
    raise ProtocolError(code, detail, _request_id(raw)) from None


def _too_deep(raw: bytes) -> bool:
    """Whether the frame nests arrays and objects past MAX_NESTING (strings skipped)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_NESTING:
        return False  # most messages: too few brackets to be too deep
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub(b'""', raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            if depth > MAX_NESTING:
                return True
        else:
            depth -= 1
    return False


def _shallow_request_id(raw: bytes) -> int | None:
    """The top-level ``request_id`` of a frame too deep to decode, read without nesting.

    Strings are emptied (but the name ``"request_id"``), so that brackets in
    them do not count; then the depth of each candidate is counted in C.
    """
    text = _STRING.sub(_empty_all_but_request_id, raw)
    for field in _ID_FIELD.finditer(text):
        end = field.start()
        opened = text.count(b"{", 0, end) + text.count(b"[", 0, end)
        if opened - text.count(b"}", 0, end) - text.count(b"]", 0, end) == 1:
            request_id = int(field[1])
            return request_id if request_id <= MAX_SAFE_INT else None
    return None


def _empty_all_but_request_id(string: re.Match[bytes]) -> bytes:
    return _QUOTED_REQUEST_ID if string[0] == _QUOTED_REQUEST_ID else b'""'


def _check_prefixes(prefixes: list[str] | msgspec.UnsetType, request_id: int | None) -> None:
    if isinstance(prefixes, msgspec.UnsetType):
        return
    if len(prefixes) > MAX_PREFIXES:
        raise ProtocolError(
            "too_many_prefixes", f"a subscription names at most {MAX_PREFIXES} prefixes", request_id
        )
    for prefix in prefixes:
        if len(prefix) > MAX_KEY_CHARS or not _PREFIX.match(prefix):
            raise ProtocolError(
                "bad_prefix",
                f"a prefix holds at most {MAX_KEY_CHARS} characters and no control character, "
                f"got {prefix[:40]!r}",
                request_id,
            )


def _refuse_unsafe_integers(value: Any, request_id: int | None) -> None:
    steps = _unsafe_integer(value)
    if steps is not None:
        where = "$.value" + "".join(f"[{json.dumps(step)}]" for step in reversed(steps))
        raise ProtocolError(
            "bad_field",
            f"integers must lie within -(2**53 - 1) and 2**53 - 1, "
            f"where JavaScript reads them exactly - at `{where}`",
            request_id,
        )


def _unsafe_integer(value: Any) -> list[str | int] | None:
    """The steps (innermost first) to an integer beyond MAX_SAFE_INT in ``value``, or None.

    Recursive: the nesting is bounded by MAX_NESTING before decoding.
    """
    if isinstance(value, int):
        return None if -MAX_SAFE_INT <= value <= MAX_SAFE_INT else []
    if isinstance(value, dict):
        children: Any = value.items()
    elif isinstance(value, list):
        children = enumerate(value)
    else:
        return None
    for step, item in children:
        steps = _unsafe_integer(item)
        if steps is not None:
            steps.append(step)
            return steps
    return None


def _may_repeat_a_field(raw: bytes, quoted_names: tuple[bytes, ...]) -> bool:
    """Whether a field may be named twice: a name is there twice, or one is escaped.

    msgspec keeps the last of two equal names without a word; this cheap test
    on the bytes tells when the exact (slower) check is needed.
    """
    if _ESCAPED_NAME.search(raw):
        return True
    return max(map(raw.count, quoted_names)) > 1  # map: no Python frame per name


def _refuse_duplicate_fields(raw: bytes, request_id: int | None) -> None:
    """Raise ``duplicate_field`` if the frame's object names a field twice.

    Reads only the top level: names repeated inside ``value`` are the value's.
    """
    try:
        # Numbers stay text: nothing to convert, and no limit on digits.
        pairs = json.loads(raw, object_pairs_hook=list, parse_int=str, parse_float=str)
    except ValueError:
        return  # msgspec read it; nothing more to learn here
    names = [name for name, _ in pairs]
    for name in names:
        if names.count(name) > 1:
            ids = [value for key, value in pairs if key == "request_id"]
            one_id = all(other == ids[0] for other in ids)  # two ids: neither is the frame's
            raise ProtocolError(
                "duplicate_field",
                f"the field `{name}` appears more than once",
                request_id if one_id else None,
            )


def _validation_code(text: str) -> str:
    if text.startswith("Object missing required field `type`"):
        return "bad_message"
    if "missing required field" in text:
        return "missing_field"
    if "unknown field" in text:
        return "unknown_field"
    if text.endswith("at `$.type`"):
        return "unknown_type"
    if text.startswith("Expected `object`"):
        return "bad_message"
    return "bad_field"


def _request_id(raw: bytes, read_at_most: int | None = None) -> int | None:
    """The message's top-level ``request_id`` if the JSON holds a valid one, else None."""
    try:
        return _id_decoder.decode(raw).request_id
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    except RecursionError:
        # Nested past the interpreter's limit (a message too large as well as
        # too deep): read the top level alone, in its first bytes only.
        return _shallow_request_id(raw[:read_at_most])


def _is_json(raw: bytes) -> bool:
    try:
        _syntax_decoder.decode(raw)
    except msgspec.DecodeError:
        return False
    return True
