"""Who may connect, and which keys each connection may read and write.

An :data:`Authenticator` receives the device's :class:`~optisync.server.protocol.Hello`
(its token and device id) and returns a :class:`Grant`, or None to refuse
the connection. A :class:`HandshakeAuthenticator` receives the HTTP
:class:`Handshake` too (headers, cookies, query): what a web app's own login
puts there, a session cookie or a bearer token. Either may raise
:class:`AuthRefusedError` to say why it refuses.

Example:
    >>> import asyncio
    >>> from optisync.server import require_token
    >>> from optisync.wire import Hello
    >>> authenticate = require_token("s3cret")
    >>> asyncio.run(authenticate(Hello(device_id=1, since=0, token="s3cret"))) is not None
    True
    >>> asyncio.run(authenticate(Hello(device_id=1, since=0, token="guess"))) is None
    True
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeAlias, runtime_checkable

import attrs

from optisync.errors import ArgumentTypeError, InvalidArgumentError, OptisyncError
from optisync.wire import Hello

__all__ = [
    "AuthRefusedError",
    "Authenticator",
    "Grant",
    "Handshake",
    "HandshakeAuthenticator",
    "allow_anyone",
    "prefix_grant",
    "read_prefixes",
    "require_token",
]


def _everything(key: str) -> bool:
    return True


@attrs.frozen
class Grant:
    """What one authenticated connection may do.

    Attributes:
        name: who connected, for the log (never a secret).
        can_read: whether the connection may read ``key`` (its pushes, replay
            and ``get``); keys it may not read are never sent to it.
        can_write: whether the connection may ``set`` ``key``.
        expires_at: when the credentials behind the grant expire (Unix time,
            seconds), or None for never. The server closes the connection at
            that moment (``token_expired``) unless the device has sent fresh
            credentials that were admitted again meanwhile.

    Example:
        >>> from optisync.server import Grant
        >>> grant = Grant("alice", can_write=lambda key: key.startswith("alice:"))
        >>> grant.can_write("alice:color"), grant.can_write("bob:color"), grant.can_read("x")
        (True, False, True)
    """

    name: str
    can_read: Callable[[str], bool] = _everything
    can_write: Callable[[str], bool] = _everything
    expires_at: float | None = None


def _lowercase_keys(headers: Mapping[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


@attrs.frozen
class Handshake:
    """The HTTP request that opened a WebSocket connection, as an authenticator sees it.

    Attributes:
        headers: the request's headers, names in lower case (a repeated
            header's values joined with ``", "``).
        query: the URL's query parameters (the last value of a repeated one).
        cookies: the cookies the ``Cookie`` header carries.
        path: the URL's path, e.g. ``"/sync"``.
        host: the remote address ("" when unknown, e.g. a Unix socket).

    Example:
        >>> from optisync.server import Handshake
        >>> handshake = Handshake(headers={"Authorization": "Bearer abc"}, query={"v": "1"})
        >>> handshake.headers["authorization"], handshake.bearer_token()
        ('Bearer abc', 'abc')
    """

    headers: Mapping[str, str] = attrs.field(factory=dict, converter=_lowercase_keys)
    query: Mapping[str, str] = attrs.field(factory=dict)
    cookies: Mapping[str, str] = attrs.field(factory=dict)
    path: str = "/"
    host: str = ""

    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, or None.

        Example:
            >>> from optisync.server import Handshake
            >>> Handshake(headers={"authorization": "Basic eDp5"}).bearer_token() is None
            True
        """
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()


class AuthRefusedError(OptisyncError, PermissionError):
    """Raised by an authenticator to refuse a connection and say why.

    The device gets an ``error`` with ``code`` (``"unauthorized"``, or
    ``"token_expired"`` for credentials past their expiry) and the message,
    then the connection is closed (code 1008, the code as its reason).
    Returning None from an authenticator is the same as
    ``AuthRefusedError("the token was refused")``.

    Example:
        >>> from optisync.server import AuthRefusedError
        >>> error = AuthRefusedError("the token has expired", code="token_expired")
        >>> error.code, str(error), isinstance(error, PermissionError)
        ('token_expired', 'the token has expired', True)
    """

    def __init__(self, message: str, *, code: str = "unauthorized") -> None:
        super().__init__(message)
        self.code = code


@runtime_checkable
class HandshakeAuthenticator(Protocol):
    """An authenticator that sees the connection's :class:`Handshake` as well as its hello.

    Pass one as ``SyncServer(authenticate=...)`` in place of an
    :data:`Authenticator`: the server calls :meth:`authenticate` with the
    hello and the HTTP request that opened the connection, and again with
    the same handshake and the new token when a device refreshes its
    credentials on an open connection.

    Example:
        >>> import asyncio
        >>> from optisync.server import Grant, Handshake, HandshakeAuthenticator
        >>> from optisync.wire import Hello
        >>> class SessionCookie:
        ...     async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant | None:
        ...         return Grant("alice") if handshake.cookies.get("session") == "s1" else None
        >>> auth = SessionCookie()
        >>> isinstance(auth, HandshakeAuthenticator)
        True
        >>> hello, handshake = Hello(device_id=1, since=0), Handshake(cookies={"session": "s1"})
        >>> asyncio.run(auth.authenticate(hello, handshake)).name
        'alice'
    """

    async def authenticate(self, hello: Hello, handshake: Handshake) -> Grant | None:
        """The grant for this connection, or None (or :class:`AuthRefusedError`) to refuse it."""
        ...


Authenticator: TypeAlias = Callable[[Hello], Awaitable[Grant | None]]
"""``async (hello) -> Grant | None``: checks a connection's hello; None refuses it.

Example:
    >>> from optisync.server import Authenticator, allow_anyone
    >>> authenticate: Authenticator = allow_anyone
"""


async def allow_anyone(hello: Hello) -> Grant:
    """An :data:`Authenticator` that lets every connection read and write every key.

    Only for a server that nobody else can reach (tests, one machine).

    Example:
        >>> import asyncio
        >>> from optisync.server import allow_anyone
        >>> from optisync.wire import Hello
        >>> asyncio.run(allow_anyone(Hello(device_id=3, since=0))).name
        'device 3'
    """
    return Grant(f"device {hello.device_id}")


def require_token(token: str) -> Authenticator:
    """An :data:`Authenticator` that admits the hellos carrying ``token``, to every key.

    The comparison takes the same time whatever the guess.

    Example:
        >>> from optisync.server import require_token
        >>> authenticate = require_token("s3cret")
        >>> try:
        ...     require_token("")
        ... except ValueError as error:  # an optisync.InvalidArgumentError
        ...     print(type(error).__name__)
        InvalidArgumentError
    """
    if not token:
        raise InvalidArgumentError("the token must not be empty: pass the secret the devices send")
    expected = token.encode()

    async def authenticate(hello: Hello) -> Grant | None:
        given = (hello.token or "").encode()
        if hmac.compare_digest(given, expected):
            return Grant(f"device {hello.device_id}")
        return None

    return authenticate


class _Prefixes:
    """A key check: whether a key starts with one of the prefixes (shown in a repr)."""

    __slots__ = ("prefixes",)

    def __init__(self, prefixes: Iterable[str]) -> None:
        self.prefixes = tuple(prefixes)

    def __call__(self, key: str) -> bool:
        return key.startswith(self.prefixes)

    def __repr__(self) -> str:
        return f"starts with one of {list(self.prefixes)!r}"


def prefix_grant(
    name: str,
    *,
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    expires_at: float | None = None,
) -> Grant:
    """A :class:`Grant` to read the keys under ``read`` prefixes and write those under ``write``.

    Nothing is granted by default: with no prefix, no key. Writing does not
    imply reading: list a prefix in both for a connection that does both.
    The prefix ``""`` matches every key. Prefixes are compared as they are,
    so end them with a separator (``"user/alice/"``, not ``"user/alice"``,
    which also matches ``"user/alice2/..."``).

    Raises:
        ArgumentTypeError: a prefix that is not a ``str`` (a single string
            passed as ``read=`` is refused too: pass a list).

    Example:
        >>> from optisync.server import prefix_grant
        >>> grant = prefix_grant("alice", read=["user/alice/", "shared/"], write=["user/alice/"])
        >>> grant.can_read("shared/todo"), grant.can_write("shared/todo")
        (True, False)
        >>> grant.can_write("user/alice/todo"), grant.can_read("user/bob/todo")
        (True, False)
    """
    return Grant(
        name,
        can_read=_Prefixes(_prefixes(read, "read")),
        can_write=_Prefixes(_prefixes(write, "write")),
        expires_at=expires_at,
    )


def read_prefixes(grant: Grant) -> tuple[str, ...] | None:
    """The key prefixes ``grant`` may read, if :func:`prefix_grant` made it (None otherwise).

    The server reads it when a device refreshes its credentials: a prefix
    the new grant adds brings that prefix's keys to the device at once. A
    grant of functions of your own says nothing it can compare: its newly
    readable keys arrive with their next change, or on the next connection.

    Example:
        >>> from optisync.server import Grant, prefix_grant, read_prefixes
        >>> read_prefixes(prefix_grant("ada", read=["user/ada/", "team/"]))
        ('user/ada/', 'team/')
        >>> read_prefixes(Grant("ada")) is None
        True
    """
    can_read = grant.can_read
    return can_read.prefixes if isinstance(can_read, _Prefixes) else None


def _prefixes(prefixes: Iterable[str], what: str) -> list[str]:
    listed = [] if isinstance(prefixes, str) else list(prefixes)
    if isinstance(prefixes, str) or not all(isinstance(p, str) for p in listed):
        raise ArgumentTypeError(f"{what}= takes a list of key prefixes (str), got {prefixes!r}")
    return listed
