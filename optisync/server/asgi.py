"""The sync server as an ASGI endpoint, for a Starlette or FastAPI app to mount.

Install it with ``pip install "optisync[asgi]"`` (Starlette; the ASGI server,
uvicorn or another, is the app's choice). :class:`SyncEndpoint` serves a
:class:`~optisync.server.SyncServer` at the path the app chooses, with the
protocol, limits and security of the standalone server; its
:meth:`~SyncEndpoint.lifespan` opens and closes the storage with the app.

Example:
    >>> from starlette.applications import Starlette
    >>> from starlette.routing import WebSocketRoute
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> from optisync.server.asgi import SyncEndpoint
    >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))
    >>> app = Starlette(routes=[WebSocketRoute("/sync", endpoint)], lifespan=endpoint.lifespan)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Final

from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from optisync.server._connection import ConnectionGoneError, handshake_of
from optisync.server.security import Handshake
from optisync.server.server import SyncServer

__all__ = ["SyncEndpoint"]

# Close codes (RFC 6455): 1000 normal, 1008 policy violation, 1009 message too big.
_NORMAL: Final = 1000
_POLICY: Final = 1008
_TOO_BIG: Final = 1009
# Messages a held connection's receive() keeps (connection.hold).
_HELD_AT_MOST: Final = 8


class SyncEndpoint:
    """An ASGI app that serves a :class:`~optisync.server.SyncServer` over WebSocket.

    Mount it where the app wants sync: ``WebSocketRoute("/sync", endpoint)``
    or ``Mount("/sync", endpoint)`` in Starlette;
    ``app.add_api_websocket_route("/sync", endpoint.serve)`` or
    ``app.mount("/sync", endpoint)`` in FastAPI; or call :meth:`serve` from
    the app's own WebSocket route. Pass
    :meth:`lifespan` as the app's ``lifespan=`` (or enter it in the app's
    own): it opens the storage at startup and closes it at shutdown. Run as
    the whole ASGI app, it handles the lifespan protocol itself.

    What holds as in the standalone server: the ``Origin`` check
    (``allowed_origins``: a refused page gets HTTP 403 before the upgrade),
    a frame over ``max_frame_bytes`` closes the connection (1009), binary
    frames are refused, and every limit, per-address ones keyed by the ASGI
    client's host. Set the ASGI server's own frame limit to
    ``max_frame_bytes`` too (uvicorn: ``ws_max_size``): it reads a whole
    frame before handing it over, so its limit is what spares the server
    reading a large one. Compression is the ASGI server's to negotiate
    (uvicorn: ``ws_per_message_deflate``, on by default), not ``compression``'s.

    Example:
        >>> from fastapi import FastAPI
        >>> from optisync.server import SqliteStorage, SyncServer
        >>> from optisync.server.asgi import SyncEndpoint
        >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))
        >>> app = FastAPI(lifespan=endpoint.lifespan)
        >>> app.add_api_websocket_route("/sync", endpoint.serve)
    """

    def __init__(self, server: SyncServer) -> None:
        self._server = server
        options = server.serve_options()
        self._origins: list[str | None] = list(options["origins"])
        self._max_frame_bytes: int = options["max_size"]

    @property
    def server(self) -> SyncServer:
        """The server this endpoint serves.

        Example:
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.server.asgi import SyncEndpoint
            >>> server = SyncServer(SqliteStorage(":memory:"))
            >>> SyncEndpoint(server).server is server
            True
        """
        return self._server

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Open the server's storage, and close it on exit: an app's ``lifespan=``.

        ``app`` is ignored: Starlette and FastAPI pass their app.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.server.asgi import SyncEndpoint
            >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))
            >>> async def main() -> None:
            ...     async with endpoint.lifespan():
            ...         print(await endpoint.server.storage.head())
            >>> asyncio.run(main())
            0
        """
        await self._server.open()
        try:
            yield
        finally:
            await self._server.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: ``websocket`` scopes are served, ``lifespan`` opens and closes.

        An HTTP request gets 426 (Upgrade Required).

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.server.asgi import SyncEndpoint
            >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))
            >>> sent = []
            >>> async def receive() -> dict[str, object]:
            ...     return {"type": "http.request", "body": b""}
            >>> async def send(message: dict[str, object]) -> None:
            ...     sent.append(message)
            >>> request = {"type": "http", "method": "GET", "headers": []}
            >>> asyncio.run(endpoint(request, receive, send))
            >>> sent[0]["status"]
            426
        """
        if scope["type"] == "websocket":
            await self.serve(WebSocket(scope, receive, send))
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)
        else:
            refusal = PlainTextResponse(
                "this endpoint speaks WebSocket", status_code=426, headers={"Upgrade": "websocket"}
            )
            await refusal(scope, receive, send)

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one WebSocket connection, not yet accepted, until it closes.

        For an app's own route (a FastAPI ``@app.websocket``, whose
        dependencies ran first): the ``Origin`` check, then the accept,
        then the protocol.

        Example:
            >>> from fastapi import FastAPI, WebSocket
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.server.asgi import SyncEndpoint
            >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))
            >>> app = FastAPI(lifespan=endpoint.lifespan)
            >>> @app.websocket("/sync")
            ... async def sync(websocket: WebSocket) -> None:
            ...     await endpoint.serve(websocket)
        """
        origins = websocket.headers.getlist("origin")
        origin = origins[0] if len(origins) == 1 else None
        if len(origins) > 1 or origin not in self._origins:
            await websocket.close(_POLICY)  # before the accept: HTTP 403
            return
        await websocket.accept()
        connection = _StarletteConnection(websocket, self._max_frame_bytes)
        try:
            await self._server.serve_connection(connection)
        finally:
            await connection.close(_NORMAL, "")

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # lifespan.startup
        try:
            await self._server.open()
        except Exception as error:
            await send({"type": "lifespan.startup.failed", "message": str(error)})
            raise
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        try:
            await self._server.close()
        finally:
            await send({"type": "lifespan.shutdown.complete"})


class _StarletteConnection:
    """A Starlette WebSocket, accepted, as the server's connection.

    Nothing is written synchronously (:meth:`room` is always 0):
    ASGI has no write that bypasses the server's queue, so every frame goes
    through the connection's send queue and writer task.
    """

    def __init__(self, websocket: WebSocket, max_frame_bytes: int) -> None:
        self._websocket = websocket
        self._max_frame_bytes = max_frame_bytes
        self._closed = False  # a close was sent, or the client's received
        self._held: list[Message] = []  # messages read while holding, for receive()
        client = websocket.client
        self.host = client.host if client is not None else ""
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in websocket.headers.raw
        ]
        query = websocket.scope.get("query_string", b"").decode("latin-1")
        self.handshake: Handshake = handshake_of(headers, websocket.scope["path"], query, self.host)

    async def receive(self) -> str | bytes:
        if self._closed:
            raise ConnectionGoneError("the connection is closed")
        try:
            message = self._held.pop(0) if self._held else await self._websocket.receive()
        except RuntimeError as error:  # a receive after the disconnect
            self._closed = True
            raise ConnectionGoneError(str(error)) from None
        if message["type"] == "websocket.disconnect":
            self._closed = True
            raise ConnectionGoneError(f"closed ({message.get('code')})")
        frame: str | bytes | None = message.get("text")
        if frame is None:
            frame = message.get("bytes") or b""
        if self._too_large(frame):
            await self.close(_TOO_BIG, "message too big")
            raise ConnectionGoneError("message too big", code=_TOO_BIG)
        return frame

    async def hold(self, seconds: float) -> bool:
        # ASGI tells a close only by a receive: what arrives meanwhile is kept for
        # receive() (a few messages; past them, the rest waits in the ASGI server).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while len(self._held) < _HELD_AT_MOST and not self._gone():
            receiving = asyncio.ensure_future(self._websocket.receive())
            done, _ = await asyncio.wait({receiving}, timeout=max(0.0, deadline - loop.time()))
            if not done:
                receiving.cancel()
                with contextlib.suppress(asyncio.CancelledError, RuntimeError, WebSocketDisconnect):
                    await receiving
                return True
            try:
                message = receiving.result()
            except (RuntimeError, WebSocketDisconnect):
                self._closed = True
                return False
            self._held.append(message)
        if self._gone():
            return False
        await asyncio.sleep(max(0.0, deadline - loop.time()))
        return True

    def _gone(self) -> bool:
        """Whether the client closed: told by a receive, maybe one held for later."""
        return self._closed or any(m["type"] == "websocket.disconnect" for m in self._held)

    def _too_large(self, frame: str | bytes) -> bool:
        limit = self._max_frame_bytes
        if isinstance(frame, bytes):
            return len(frame) > limit
        # A character is at most 4 UTF-8 bytes: encode only a frame that may be over.
        return len(frame) > limit // 4 and len(frame.encode()) > limit

    async def send(self, frame: bytes) -> None:
        if self._closed:
            raise ConnectionGoneError("the connection is closed")
        try:
            await self._websocket.send({"type": "websocket.send", "text": frame.decode()})
        except (WebSocketDisconnect, RuntimeError) as error:
            self._closed = True
            raise ConnectionGoneError(str(error)) from None

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            await self._websocket.close(code, reason)

    def room(self) -> int:
        return 0

    def write_now(self, frames: Sequence[bytes]) -> None:
        raise AssertionError("room is always 0: nothing is written at once")
