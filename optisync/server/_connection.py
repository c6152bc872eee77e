"""What :class:`~optisync.server.SyncServer` needs of a WebSocket connection, whatever serves it.

The server speaks to one :class:`Connection`: websockets' own server through
:class:`WebsocketsConnection`, an ASGI server (uvicorn under Starlette or
FastAPI) through ``optisync.server.asgi``'s adapter. Each transport raises
:class:`ConnectionGoneError` when its connection is closed, so the server
catches one exception whichever serves it.

Example:
    >>> from optisync.server._connection import handshake_of
    >>> handshake = handshake_of([("Cookie", "a=1; b=2")], "/sync", "v=1", "10.0.0.2")
    >>> handshake.cookies, handshake.query, handshake.host
    ({'a': '1', 'b': '2'}, {'v': '1'}, '10.0.0.2')
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Sequence
from typing import Final, Protocol
from urllib.parse import parse_qsl, unquote

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from optisync.errors import OptisyncError
from optisync.server.security import Handshake

# A frame is written at once, not queued, while the connection's transport holds
# less unsent data than this (websockets' own write limit).
_WRITE_AT_ONCE_BELOW: Final = 32 * 1024


class ConnectionGoneError(OptisyncError, ConnectionError):
    """The connection is closed: nothing more can be read from it or sent to it.

    Internal: the server catches it and forgets the connection. ``code`` is
    the close code the connection was closed with by this side, when it was
    (1009: a frame over the limit), else None.
    """

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class Connection(Protocol):
    """One WebSocket connection, accepted, as the server uses it."""

    @property
    def host(self) -> str:
        """The remote host ("" when unknown): per-address limits are keyed by it."""
        ...

    @property
    def handshake(self) -> Handshake:
        """The HTTP request that opened the connection."""
        ...

    async def receive(self) -> str | bytes:
        """The next frame: a text frame as str, a binary one as bytes.

        Raises :class:`ConnectionGoneError` once the connection is closed.
        """
        ...

    async def send(self, frame: bytes) -> None:
        """Send ``frame`` (UTF-8 JSON) as a text frame; :class:`ConnectionGoneError` if closed."""
        ...

    async def close(self, code: int, reason: str) -> None:
        """Close with ``code`` and ``reason``; does nothing once closed, never raises."""
        ...

    def room(self) -> int:
        """How many bytes of frames may be written at once now; 0 to have frames queued instead.

        More than 0 while the connection is open and its transport holds
        little unsent data.
        """
        ...

    def write_now(self, frames: Sequence[bytes]) -> None:
        """Write ``frames`` (UTF-8 JSON, each a text frame) at once, in one write.

        Only as many as :meth:`room` allowed; nothing is written once
        the connection is closed (its reader learns that on its own).
        """
        ...

    async def hold(self, seconds: float) -> bool:
        """Wait ``seconds`` before the server reads anything, ending early if the peer closes.

        A frame that arrives meanwhile stays for :meth:`receive`. False when the
        peer closed the connection (it may have before the call), True otherwise.
        """
        ...


class WebsocketsConnection:
    """A connection of websockets' own server (``websockets.asyncio.server``)."""

    __slots__ = ("_connection", "handshake", "host")

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self.host = _host_of(connection)
        request = connection.request
        if request is None:
            self.handshake = Handshake(host=self.host)
        else:
            path, _, query = request.path.partition("?")
            # Percent-decoded, as an ASGI scope's path is.
            self.handshake = handshake_of(
                request.headers.raw_items(), unquote(path), query, self.host
            )

    async def receive(self) -> str | bytes:
        try:
            return await self._connection.recv()
        except ConnectionClosed as closed:
            code = closed.sent.code if closed.sent is not None else None
            raise ConnectionGoneError(str(closed), code=code) from None

    async def send(self, frame: bytes) -> None:
        try:
            await self._connection.send(frame, text=True)
        except ConnectionClosed as closed:
            raise ConnectionGoneError(str(closed)) from None

    async def close(self, code: int, reason: str) -> None:
        await self._connection.close(code, reason)

    async def hold(self, seconds: float) -> bool:
        # websockets reads a close frame (and answers it) while nobody reads the data.
        try:
            await asyncio.wait_for(asyncio.shield(self._connection.wait_closed()), seconds)
        except TimeoutError:
            return True
        return False

    def room(self) -> int:
        """``_WRITE_AT_ONCE_BELOW`` less what its transport holds, while it is open.

        Then frames written now go out behind at most that little, like one in
        flight: the bytes not counted in the send budget stay within
        ``_WRITE_AT_ONCE_BELOW`` and a frame per connection.
        """
        connection = self._connection
        transport = connection.transport
        if (
            connection.state is not State.OPEN
            or connection.send_in_progress is not None
            or transport is None
        ):
            return 0
        return _WRITE_AT_ONCE_BELOW - transport.get_write_buffer_size()

    def write_now(self, frames: Sequence[bytes]) -> None:
        """One ``transport.write`` for all ``frames``: one system call, one wake-up of the reader.

        Without an extension (permessage-deflate is off by default) a server's
        text frame is a header and the payload, unmasked and the same for every
        reader, so it is framed here; with one, or with websockets' debug log
        on (it logs each frame it sends), websockets frames each.
        """
        connection = self._connection
        if connection.state is not State.OPEN or connection.send_in_progress is not None:
            return
        protocol = connection.protocol
        if protocol.extensions or protocol.debug:
            for frame in frames:
                protocol.send_text(frame)
            connection.transport.write(b"".join(protocol.data_to_send()))
            return
        parts: list[bytes] = []
        for frame in frames:
            parts.append(_text_header(len(frame)))
            parts.append(frame)
        connection.transport.write(b"".join(parts))


def _text_header(length: int) -> bytes:
    """The header of an unmasked, final text frame of ``length`` bytes (RFC 6455, 5.2)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def handshake_of(headers: Iterable[tuple[str, str]], path: str, query: str, host: str) -> Handshake:
    """The :class:`Handshake` of a request: its header pairs, path, query string and remote host.

    Both transports build it here, so an authenticator sees the same thing
    from either: a repeated header's values joined with ``", "``, the last
    value of a repeated query parameter, the cookies of every ``Cookie`` header.
    """
    joined: dict[str, str] = {}
    cookies: dict[str, str] = {}
    for name, value in headers:
        lowered = name.lower()
        joined[lowered] = f"{joined[lowered]}, {value}" if lowered in joined else value
        if lowered == "cookie":
            cookies.update(_cookies(value))
    return Handshake(
        headers=joined,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        cookies=cookies,
        path=path,
        host=host,
    )


def _cookies(header: str) -> dict[str, str]:
    """The ``name=value`` pairs of a ``Cookie`` header, leniently: a malformed pair is skipped."""
    found: dict[str, str] = {}
    for pair in header.split(";"):
        name, equals, value = pair.partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        found[name] = value
    return found


def _host_of(connection: ServerConnection) -> str:
    """The remote host of a connection ("" when the transport has none, a Unix socket)."""
    remote = connection.remote_address
    return str(remote[0]) if isinstance(remote, tuple) and remote else ""
