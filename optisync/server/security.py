"""Who may connect, and which keys each connection may read and write.

An :data:`Authenticator` receives the device's :class:`~optisync.server.protocol.Hello`
(its token and device id) and returns a :class:`Grant`, or None to refuse
the connection.

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
from collections.abc import Awaitable, Callable
from typing import TypeAlias

import attrs

from optisync.errors import InvalidArgumentError
from optisync.wire import Hello

__all__ = ["Authenticator", "Grant", "allow_anyone", "require_token"]


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

    Example:
        >>> from optisync.server import Grant
        >>> grant = Grant("alice", can_write=lambda key: key.startswith("alice:"))
        >>> grant.can_write("alice:color"), grant.can_write("bob:color"), grant.can_read("x")
        (True, False, True)
    """

    name: str
    can_read: Callable[[str], bool] = _everything
    can_write: Callable[[str], bool] = _everything


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
