"""The optisync server: the documented contract over WebSockets, on a :class:`Storage`.

Each connection's messages are handled one at a time, in order. A ``set`` is
committed (value and revision in one transaction), pushed to every connected
device allowed to read the key (the writer included) and then acknowledged.
A frame for a connection that keeps up is written at once; one for a
connection that lags goes to its own bounded send queue and writer task: a
device that stops reading is cut at the bound and never slows the others. All
send queues together stay within one more bound: past it, the connection
holding the most unsent bytes is cut.

Example:
    >>> import asyncio
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         print(url.startswith("ws://127.0.0.1:"))
    >>> asyncio.run(main())
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Origin

from optisync.errors import InvalidArgumentError, OptisyncError
from optisync.server._connection import Connection, ConnectionGoneError, WebsocketsConnection
from optisync.server._memory import MemoryReleaser
from optisync.server.protocol import canonical_json
from optisync.server.security import (
    Authenticator,
    AuthRefusedError,
    Grant,
    Handshake,
    HandshakeAuthenticator,
    allow_anyone,
    read_prefixes,
)
from optisync.server.storage import TOMBSTONE, Change, Storage
from optisync.wire import (
    MAX_SAFE_INT,
    PROTOCOL_VERSION,
    Auth,
    Authed,
    ClientMessage,
    Committed,
    Delete,
    Error,
    Get,
    Hello,
    ProtocolError,
    Push,
    Ready,
    Set,
    Subscribe,
    Subscribed,
    Value,
    Welcome,
    decode_client,
    encode,
    entry_digest,
)

if TYPE_CHECKING:  # prometheus_client is imported only by a server given metrics
    from optisync.server.metrics import ServerMetrics

__all__ = ["Limits", "SyncServer"]

logger: Final = logging.getLogger("optisync.server")

# Close codes (RFC 6455): 1008 policy violation, 1013 try again later.
_POLICY: Final = 1008
_TRY_LATER: Final = 1013
_TOO_BIG: Final = 1009
_QUEUE_FULL: Final = "send queue full"
_BINARY: Final = "messages are JSON in text frames; this frame was binary"
_NO_DATABASE: Final = "the database is unavailable"
_COMPACTED: Final = "compacted past this device's position during its replay"
_BAD_FRAMES: Final = "too many bad messages in a row"
_TOO_MANY_CONNECTIONS: Final = "too many connections from this address"
_RATE_LIMITED: Final = "rate_limited"
_TOKEN_EXPIRED: Final = "token_expired"
# A refused message is not parsed: its request_id is read from its first bytes
# when it opens the object (after "type"), as every client we know writes it.
_LEADING_REQUEST_ID: Final = re.compile(
    r'\A\s*\{\s*(?:"type"\s*:\s*"[a-z]{1,16}"\s*,\s*)?"request_id"\s*:\s*(0|[1-9][0-9]{0,15})\s*[,}]'
)
_HEAD: Final = 128
# What a Storage has gained since the first release: checked when a server is made.
_STORAGE_METHODS: Final = ("commit", "read", "latest_after", "head", "claim_device")
# A connection closed for abuse is held against its address this long (seconds).
_STRIKE_MEMORY: Final = 60.0
# The metrics' label for each reason the server closes a connection for.
_CLOSE_LABELS: Final = {
    _QUEUE_FULL: "send_queue_full",
    _NO_DATABASE: "unavailable",
    _BAD_FRAMES: "bad_frames",
}


@attrs.frozen
class Limits:
    """The bounds one connection, and all connections of one remote address, live within.

    Every message a connection sends spends a token before it is read, valid
    or not: a flood of malformed frames is rate limited like one of writes.

    Attributes:
        max_message_bytes: a larger message gets a ``too_large`` error, unread.
        max_frame_bytes: a larger frame closes the connection (code 1009),
            refused by the length in its header, its payload never read. Twice
            ``max_message_bytes`` by default: a message a little too large gets
            its ``too_large`` error, a junk megabyte costs a header.
        messages_per_second: sustained messages a connection may send; more
            get ``rate_limited`` errors and change nothing.
        burst: how many messages above the rate a connection may send at once.
        max_bad_frames: a connection that sends this many messages in a row
            the server cannot read (malformed, too large, binary, a second
            hello) or does not read (rate limited) is closed (code 1008).
        max_connections_per_address: open connections one remote address may
            hold; more are closed at once (code 1013). Behind a reverse proxy
            every client has the proxy's address: raise it there.
        address_messages_per_second: sustained messages, hellos included, all
            connections of one remote address may send together; a new
            connection does not bring a fresh burst.
        address_burst: how many messages above that rate they may send at once.
        address_replay_bytes_per_second: the pace of the replays of all
            connections of one remote address together: past the burst, a
            replay waits before each frame, so that reconnecting in a loop
            costs the server this many bytes a second, not what it can send.
            0: no pacing.
        address_replay_burst_bytes: the replay bytes they may get at full speed.
        address_receive_bytes_per_second: the pace at which the server reads
            what all connections of one remote address send, past the burst,
            each frame counted as at least 2 KiB: it waits before reading
            more, so a flood backs up in the sender's socket instead of taking
            the server's time. 0: no pacing.
        address_receive_burst_bytes: the bytes they may send at full speed.
        send_buffer_bytes: unsent data a connection may hold on the server;
            past it the connection is closed (code 1013) and replays on reconnect.
        total_send_buffer_bytes: unsent data all connections together may
            hold on the server. A frame that would take the total past it
            first cuts (code 1013) the connection holding the most unsent
            bytes, the one offered to included, until the frame fits: the
            slowest readers go, a reader that keeps up holds little and stays.
        replay_page: keys read from the storage per page of a replay (a
            replay sends each key changed since the device's cursor once, at
            its newest value).
        hello_timeout: seconds a new connection has to send its hello.
        abuse_penalty_seconds: how long a new connection from an address waits,
            unread, after one of its connections was closed for abuse
            (``max_bad_frames`` in a row, or a frame over ``max_frame_bytes``);
            doubled at each further such close within a minute, up to
            ``max_abuse_penalty_seconds``. Past it, for that minute, the
            address's new connections are read one at a time, in the order
            they came, a penalty apart (one that closes while it waits has
            spent its turn), and its open connections lose the receive burst:
            what they send is read at ``address_receive_bytes_per_second``
            past one frame's worth. A flooder that reconnects at once then
            costs the server one connection per penalty, not a handshake, a
            hello and its storage reads per few frames, and its other
            connections a trickle; other addresses are not slowed. 0: no penalty.
        max_abuse_penalty_seconds: the longest such wait.

    Example:
        >>> from optisync.server import Limits
        >>> Limits(messages_per_second=10).burst
        200
    """

    max_message_bytes: int = 64 * 1024
    max_frame_bytes: int = 128 * 1024
    messages_per_second: float = 100.0
    burst: int = 200
    max_bad_frames: int = 20
    max_connections_per_address: int = 100
    address_messages_per_second: float = 1000.0
    address_burst: int = 2000
    address_replay_bytes_per_second: float = 8 * 1024 * 1024
    address_replay_burst_bytes: int = 4 * 1024 * 1024
    address_receive_bytes_per_second: float = 2 * 1024 * 1024
    address_receive_burst_bytes: int = 8 * 1024 * 1024
    send_buffer_bytes: int = 4 * 1024 * 1024
    total_send_buffer_bytes: int = 256 * 1024 * 1024
    replay_page: int = 500
    hello_timeout: float = 10.0
    abuse_penalty_seconds: float = 0.05
    max_abuse_penalty_seconds: float = 10.0


class _TokenBucket:
    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._capacity = float(burst)
        self._tokens = float(burst)
        self._stamp = asyncio.get_running_loop().time()

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        self._tokens = min(self._capacity, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self) -> bool:
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def seconds_until_full(self) -> float | None:
        """How long until the bucket is full again (None: never, at rate 0)."""
        self._refill()
        missing = self._capacity - self._tokens
        if missing <= 0:
            return 0.0
        return missing / self._rate if self._rate > 0 else None

    def cap(self, tokens: float) -> None:
        """Keep at most ``tokens`` of the burst (a smaller burst from now on)."""
        self._refill()
        self._tokens = min(self._tokens, tokens)

    async def pace(self, amount: int) -> None:
        """Spend ``amount`` tokens, into debt if need be, and wait until it is repaid."""
        if self._rate <= 0:
            return
        self._refill()
        self._tokens -= amount
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self._rate)


class _Address:
    """One remote address: its open connections and the message budget they share.

    Kept after its last connection closes until its bucket is full again, so
    that reconnecting never buys a fresh burst.
    """

    def __init__(self, limits: Limits) -> None:
        self.connections = 0
        self.strikes = 0  # its connections closed for abuse, in a row of them
        self.penalty_until = 0.0  # loop time until which a new connection waits
        self.next_turn = 0.0  # loop time of the next connection's turn, while struck
        self.last_strike = -_STRIKE_MEMORY
        self._penalty = limits.abuse_penalty_seconds
        # While it has strikes, what its connections send gets this much of a
        # burst at most (one frame's worth): the rest is read at the sustained pace.
        self._struck_burst = limits.max_frame_bytes
        self._max_penalty = limits.max_abuse_penalty_seconds
        self.bucket = _TokenBucket(limits.address_messages_per_second, limits.address_burst)
        self.replay_bytes = _TokenBucket(
            limits.address_replay_bytes_per_second, limits.address_replay_burst_bytes
        )
        self.received_bytes = _TokenBucket(
            limits.address_receive_bytes_per_second, limits.address_receive_burst_bytes
        )

    def strike(self) -> None:
        """One of its connections was closed for abuse: new ones wait, longer each time."""
        if self._penalty <= 0:
            return
        now = asyncio.get_running_loop().time()
        if now - self.last_strike > _STRIKE_MEMORY:
            self.strikes = 0
        self.strikes += 1
        self.last_strike = now
        self.penalty_until = max(self.penalty_until, now + self._current_penalty())
        self.received_bytes.cap(self._struck_burst)

    def _current_penalty(self) -> float:
        """The penalty of its latest strike: doubled at each strike, up to the longest."""
        doublings = min(max(self.strikes - 1, 0), 30)
        return min(self._max_penalty, self._penalty * 2.0**doublings)

    def struck(self) -> bool:
        """Whether one of its connections was closed for abuse within the strike memory."""
        return asyncio.get_running_loop().time() - self.last_strike <= _STRIKE_MEMORY

    async def read_paced(self, frame: str | bytes) -> None:
        """Spend the receive budget on ``frame``, waiting past the burst (see ``Limits``).

        An address with strikes has lost its burst: its open connections too are
        read at the sustained pace, beyond one frame's worth.
        """
        if self.strikes and self.struck():  # never struck: no clock read on every frame
            self.received_bytes.cap(self._struck_burst)
        await self.received_bytes.pace(_received_cost(frame))

    def turn(self) -> float:
        """Seconds until a connection opened now may be read (0: at once); it takes that turn.

        A penalty holds every new connection until it ends; past it, an
        address with strikes has its connections read one at a time,
        ``abuse_penalty_seconds`` apart, in the order they came: those that
        waited out a penalty together do not all start at once.
        """
        now = asyncio.get_running_loop().time()
        start = max(now, self.penalty_until)
        if self.struck():
            start = max(start, self.next_turn)
            self.next_turn = start + self._current_penalty()
        return start - now

    def seconds_until_full(self) -> float | None:
        """How long until both buckets are full again and its strikes are forgotten."""
        remembered = self.last_strike + _STRIKE_MEMORY - asyncio.get_running_loop().time()
        waits = [
            max(0.0, remembered),
            self.bucket.seconds_until_full(),
            self.replay_bytes.seconds_until_full(),
            self.received_bytes.seconds_until_full(),
        ]
        return max((w for w in waits if w is not None), default=None)


class _Budget:
    """A connection's message budget: its own bucket and its address's, both spent."""

    def __init__(self, own: _TokenBucket, shared: _TokenBucket) -> None:
        self._own = own
        self._shared = shared

    def take(self) -> bool:
        return self._own.take() and self._shared.take()


def _leading_request_id(frame: str | bytes) -> int | None:
    """The request id at the very start of a frame, read without parsing it."""
    head = frame[:_HEAD]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    match = _LEADING_REQUEST_ID.match(text)
    if match is None or int(match[1]) > MAX_SAFE_INT:
        return None
    return int(match[1])


class _SendQueueFullError(OptisyncError, OverflowError):
    """A replay page did not fit in a connection's send queue; the server cuts it.

    Internal: the replay catches it and closes the connection (code 1013), and
    the device replays from its cursor on reconnect. Its own type, so that an
    unrelated ``OverflowError`` is never taken for a full queue.
    """


class _SendBudget:
    """The unsent bytes of all send queues together, kept within one bound.

    Bytes are counted when a frame is queued and uncounted when it is written
    or its connection is dropped. A frame that would take the total past the
    bound first cuts the connection holding the most droppable (queued, not in
    flight) bytes, until it fits: a reader that keeps up holds little and is
    the last to go.
    """

    def __init__(self, limit: int, cut: Callable[[_Peer], None]) -> None:
        self.limit = limit
        self.queued = 0
        self.peers: set[_Peer] = set()
        self._cut = cut
        self._unflushed: list[_Peer] = []

    def flush_soon(self, peer: _Peer) -> None:
        """Have ``peer``'s gathered frames written once this event loop turn ends.

        One callback for every connection written to in the turn, run a turn
        later: after the tasks this turn woke have run (a batch's pushes are
        offered, then its writers are woken and each adds its ack).
        """
        if not self._unflushed:
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._flush)
        self._unflushed.append(peer)

    def _flush(self) -> None:
        peers, self._unflushed = self._unflushed, []
        for peer in peers:
            try:
                peer.flush()
            except Exception:  # a transport's own failure: its reader sees the connection end
                logger.exception("writing to %s failed", peer.grant.name)

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit now, without cutting anyone."""
        return self.queued + size <= self.limit

    def reserve(self, peer: _Peer, size: int) -> bool:
        """Count ``size`` more bytes for ``peer``; False when they do not fit."""
        for _ in range(len(self.peers)):  # each pass drops one connection
            if self.queued + size <= self.limit:
                break
            largest = max(self.peers, key=lambda p: p.droppable)
            if largest is peer or largest.droppable == 0:
                return False
            self._cut(largest)  # drops its queue: frees its droppable bytes now
        if self.queued + size > self.limit:
            return False
        self.queued += size
        return True


class _Peer:
    """One device's connection: its grant, replay state and bounded send queue."""

    def __init__(
        self,
        connection: Connection,
        hello: Hello,
        grant: Grant,
        limits: Limits,
        budget: _SendBudget,
    ) -> None:
        self.connection = connection
        self.cut = False
        self.device_id = hello.device_id
        self.grant = grant  # replaced by an admitted refresh
        # The HTTP request that opened the connection: a refresh is checked with it.
        self.handshake: Handshake = connection.handshake
        # Fires at grant.expires_at (None: the grant never expires).
        self.expiry: asyncio.TimerHandle | None = None
        # A refused refresh: sent, then the connection is closed (code 1008).
        self.refused: Error | None = None
        # The key prefixes it subscribed to (None: every key the grant allows).
        self.prefixes = (
            None if isinstance(hello.prefixes, msgspec.UnsetType) else (*hello.prefixes,)
        )
        self.replay: asyncio.Task[None] | None = None  # the hello's replay
        self.replay_pace: _TokenBucket | None = None  # its address's replay bytes
        self.cursor = 0  # the newest revision queued for this device
        # The hello's position when the replay resumes from it (0: from scratch):
        # a compaction that passes it during the replay cuts the connection.
        self.resumed_from = hello.since
        self.bad_frames = 0  # messages in a row the server could not read
        self.close_reason = "disconnected"  # unless the server closes it: a metrics label
        # Live changes that arrive during the replay wait here (None: replay done).
        self.pending: list[Change] | None = []
        self.pending_overflow = False
        self._limit = limits.send_buffer_bytes
        self._budget = budget
        self._dropped = False
        self._queued = 0  # bytes queued and in flight, counted in the budget too
        # Frames to write at once at the end of this event loop turn (see offer).
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._room = 0  # what the connection could take at once when _out was started
        self._in_flight = 0
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        budget.peers.add(self)

    def sends(self, key: str) -> bool:
        """Whether this device gets ``key``'s pushes: subscribed to it, and allowed to read it.

        The grant is read now: a token refresh may have replaced it.
        """
        prefixes = self.prefixes
        return (prefixes is None or key.startswith(prefixes)) and self.grant.can_read(key)

    @property
    def droppable(self) -> int:
        """Bytes queued and not yet handed to the connection: dropping them frees them."""
        return self._queued - self._in_flight

    def offer(self, frame: bytes) -> bool:
        """Send or queue a frame without waiting; False when the queue, or all queues, are full.

        A connection that keeps up (nothing queued, little unsent in its
        transport) gets the frame with the others it is given in this turn of
        the event loop, in one write at the turn's end, with no queue and no
        task switch: a batch's pushes and the writer's ack leave together. One
        that lags gets it queued, in order, for its writer task.
        """
        size = len(frame)
        if self._dropped or self._queued + self._out_bytes + size > self._limit:
            return False
        if self._queued == 0 and self._budget.fits(size):
            if not self._out:
                # Read once per turn: until the flush nothing is written to it.
                self._room = self.connection.room()
            if self._out_bytes < self._room:
                if not self._out:
                    self._budget.flush_soon(self)
                self._out.append(frame)
                self._out_bytes += size
                return True
        if not self._budget.reserve(self, size):
            return False
        if self._out:
            self.flush()  # what was gathered goes first: the writer task sends the rest after
        self._queued += size
        if self._queued > self._limit // 2:
            self._space.clear()
        self._queue.put_nowait(frame)
        return True

    def flush(self) -> None:
        """Write the frames :meth:`offer` gathered this turn, in one write."""
        frames = self._out
        self._out, self._out_bytes = [], 0
        if frames and not self._dropped:
            self.connection.write_now(frames)

    async def put(self, frame: bytes) -> None:
        """Queue a frame, waiting while the queue is half full (replay back-pressure)."""
        await self._space.wait()
        if not self.offer(frame):
            raise _SendQueueFullError(_QUEUE_FULL)

    async def write_forever(self) -> None:
        while True:
            frame = await self._queue.get()
            self._in_flight = len(frame)
            try:
                await self.connection.send(frame)
            finally:
                self._in_flight = 0
                self._release(len(frame))

    def drop(self) -> None:
        """Forget every queued frame and queue no more; the one in flight is
        uncounted when its write ends."""
        self._dropped = True
        self._budget.peers.discard(self)
        self._out, self._out_bytes = [], 0
        while not self._queue.empty():
            self._release(len(self._queue.get_nowait()))
        self._space.set()  # a waiting replay wakes and finds the queue closed

    def _release(self, size: int) -> None:
        self._queued -= size
        self._budget.queued -= size
        if self._queued <= self._limit // 2:
            self._space.set()


class SyncServer:
    """Serves the optisync protocol (:mod:`optisync.server.protocol`) from a :class:`Storage`.

    Args:
        storage: where changes live; the server opens and closes it.
        authenticate: checks each hello (default :func:`allow_anyone`: only
            for a server nobody else can reach): an :data:`Authenticator`, or
            a :class:`HandshakeAuthenticator` that sees the HTTP handshake too
            (:class:`~optisync.server.jwt.JwtAuth`). It checks a device's
            ``auth`` (a fresh token on an open connection) the same way. A
            grant with an ``expires_at`` ends its connection then (error and
            close reason ``token_expired``, code 1008) unless refreshed.
        limits: per-connection bounds.
        allowed_origins: the ``Origin`` headers accepted; ``None`` in it admits
            clients that send none (not browsers). The default admits no web page.
        require_device_secret: refuse hellos without a device secret
            (``device_unproven``). Without it, a device id that no hello has
            yet bound to a secret may still be used by an older client that
            sends none: set it once every device sends a secret.
        compression: negotiate permessage-deflate with clients that offer it.
            Off by default: with typical small JSON values it costs more CPU
            per commit (about a fifth, measured on loopback) than it saves
            bytes; turn it on for large, compressible values over slow links.
        metrics: where to count connections, commits, latencies, replays and
            refusals (:class:`optisync.server.metrics.ServerMetrics`, the
            ``metrics`` extra). None: no metrics work at all.

    Raises:
        InvalidArgumentError: ``storage`` lacks a method a server needs (one
            written for an earlier optisync: ``latest_after``, ``claim_device``).

    Device ids are proven: the first hello carrying a device secret binds its
    id to that secret, durably in the storage, and a later hello for the id
    with another secret, or none, is refused with ``device_unproven``. So a
    device id cannot be taken over by another holder of the token.

    Run it with :meth:`run`, or embed :meth:`handler` in your own
    ``websockets.asyncio.server.serve`` after :meth:`open`, passing it
    :meth:`serve_options`, or mount it in a Starlette or FastAPI app with
    :class:`optisync.server.asgi.SyncEndpoint`.

    Example:
        >>> import asyncio
        >>> from optisync.server import SqliteStorage, SyncServer, require_token
        >>> async def main() -> None:
        ...     server = SyncServer(SqliteStorage(":memory:"), authenticate=require_token("t"))
        ...     async with server.run(port=0) as url:
        ...         print(server.connection_count)
        >>> asyncio.run(main())
        0
    """

    def __init__(
        self,
        storage: Storage,
        *,
        authenticate: Authenticator | HandshakeAuthenticator = allow_anyone,
        limits: Limits | None = None,
        allowed_origins: Sequence[str | None] = (None,),
        require_device_secret: bool = False,
        compression: bool = False,
        metrics: ServerMetrics | None = None,
    ) -> None:
        missing = [name for name in _STORAGE_METHODS if not callable(getattr(storage, name, None))]
        if missing:
            raise InvalidArgumentError(
                f"{type(storage).__name__} lacks {', '.join(missing)}: a Storage written for an "
                "earlier optisync needs them (docs/server.md, 'Your own storage')"
            )
        self._storage = storage
        self._storage_filters = _takes_prefixes(storage)
        self._authenticate = authenticate
        self._limits = limits or Limits()
        self._origins = [None if o is None else Origin(o) for o in allowed_origins]
        self._require_device_secret = require_device_secret
        self._compression = compression
        self._peers: dict[int, _Peer] = {}
        self._addresses: dict[str, _Address] = {}
        self._admitted: dict[int, Grant] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._budget = _SendBudget(self._limits.total_send_buffer_bytes, self._cut_soon)
        self._memory = MemoryReleaser()  # gives memory back after a burst of closes
        # One replay page read at a time: a commit waits behind one at most, not
        # behind every replay in progress (the storage serves calls in order).
        self._replay_reads = asyncio.Lock()
        self._metrics = metrics
        storage.on_commit = self._publish if metrics is None else self._publish_measured

    @property
    def storage(self) -> Storage:
        """The storage this server serves.

        Example:
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> storage = SqliteStorage(":memory:")
            >>> SyncServer(storage).storage is storage
            True
        """
        return self._storage

    @property
    def connection_count(self) -> int:
        """How many devices are connected (past their hello).

        Example:
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> SyncServer(SqliteStorage(":memory:")).connection_count
            0
        """
        return len(self._peers)

    @property
    def queued_bytes(self) -> int:
        """Unsent bytes all connections hold on the server, at most ``total_send_buffer_bytes``.

        Counted when a frame is queued for a connection, uncounted when it is
        written or the connection is dropped: 0 once every connection closed.

        Example:
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> SyncServer(SqliteStorage(":memory:")).queued_bytes
            0
        """
        return self._budget.queued

    async def open(self) -> None:
        """Open the storage (for embedding :meth:`handler`; :meth:`run` does it).

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     server = SyncServer(SqliteStorage(":memory:"))
            ...     await server.open()
            ...     await server.close()
            >>> asyncio.run(main())
        """
        await self._storage.open()

    async def close(self) -> None:
        """Close the storage.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     server = SyncServer(SqliteStorage(":memory:"))
            ...     await server.open()
            ...     await server.close()
            >>> asyncio.run(main())
        """
        self._memory.cancel()
        await self._storage.close()

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments for ``websockets.asyncio.server.serve`` this server needs.

        Example:
            >>> from optisync.server import Limits, SqliteStorage, SyncServer
            >>> server = SyncServer(SqliteStorage(":memory:"), limits=Limits(max_frame_bytes=9))
            >>> server.serve_options()["max_size"]
            9
        """
        return {
            "origins": self._origins,
            "max_size": self._limits.max_frame_bytes,
            "compression": "deflate" if self._compression else None,
        }

    @contextlib.asynccontextmanager
    async def run(self, host: str = "127.0.0.1", port: int = 8765) -> AsyncIterator[str]:
        """Open the storage, listen, and yield the ``ws://`` URL; close both on exit.

        ``port=0`` lets the system choose a free port.

        Example:
            >>> import asyncio
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         print(url[:15])
            >>> asyncio.run(main())
            ws://127.0.0.1:
        """
        await self.open()
        try:
            async with serve(self.handler, host, port, **self.serve_options()) as listener:
                bound = listener.sockets[0].getsockname()
                yield f"ws://{host}:{bound[1]}"
        finally:
            await self.close()

    # -- one connection ------------------------------------------------------------

    async def handler(self, connection: ServerConnection) -> None:
        """Serve one WebSocket connection until it closes.

        Example:
            >>> import asyncio
            >>> from websockets.asyncio.server import serve
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     server = SyncServer(SqliteStorage(":memory:"))
            ...     await server.open()
            ...     async with serve(server.handler, "127.0.0.1", 0, **server.serve_options()):
            ...         pass
            ...     await server.close()
            >>> asyncio.run(main())
        """
        await self.serve_connection(WebsocketsConnection(connection))

    async def serve_connection(self, connection: Connection) -> None:
        """Serve one accepted connection of any transport until it closes.

        The seam between the server and what carries its frames: :meth:`handler`
        passes websockets' connections here, and
        :class:`optisync.server.asgi.SyncEndpoint` those of an ASGI server.
        ``connection`` (internal, ``optisync.server._connection.Connection``)
        receives and sends frames, closes, and tells the remote host and the
        HTTP request that opened it.

        Example:
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.server.asgi import SyncEndpoint
            >>> endpoint = SyncEndpoint(SyncServer(SqliteStorage(":memory:")))  # calls it
        """
        host = connection.host
        address = self._addresses.setdefault(host, _Address(self._limits))
        if address.connections >= self._limits.max_connections_per_address:
            logger.info("refused a connection from %s: %s", host, _TOO_MANY_CONNECTIONS)
            if self._metrics is not None:
                self._metrics.connection_refused("too_many_connections")
            await connection.close(_TRY_LATER, _TOO_MANY_CONNECTIONS)
            return
        address.connections += 1
        self._memory.opened()
        try:
            # Its address flooded: this connection waits, its hello unread (it
            # still counts against max_connections_per_address), for its turn;
            # again if a strike meanwhile started a new penalty.
            penalty_until, wait = address.penalty_until, address.turn()
            while wait > 0:
                if not await connection.hold(wait):
                    break  # closed meanwhile, its turn spent: _admit finds it gone
                struck_again = address.penalty_until > penalty_until
                penalty_until, wait = address.penalty_until, address.turn() if struck_again else 0.0
            await self._serve_connection(connection, address)
        finally:
            address.connections -= 1
            self._memory.closed()
            self._schedule_prune(host, address)

    async def _serve_connection(self, connection: Connection, address: _Address) -> None:
        peer = await self._admit(connection, address.bucket)
        if peer is None:
            return
        writer = asyncio.create_task(peer.write_forever())
        self._schedule_expiry(peer)
        try:
            await self._serve_peer(peer, writer, address)
        except ConnectionGoneError as gone:
            if gone.code == _TOO_BIG:
                address.strike()  # a frame over max_frame_bytes, refused by its header
        except _SendQueueFullError:
            pass
        finally:
            if peer.expiry is not None:
                peer.expiry.cancel()
            self._forget(peer)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionGoneError):
                await writer
            peer.drop()
            logger.info("%s disconnected", peer.grant.name)
            if self._metrics is not None:
                self._metrics.connection_closed(peer.close_reason)

    def _schedule_prune(self, host: str, address: _Address) -> None:
        """Forget an address without connections once its bucket is full again."""
        if address.connections > 0:
            return
        delay = address.seconds_until_full()
        if delay is not None:
            asyncio.get_running_loop().call_later(delay, self._prune, host)

    def _prune(self, host: str) -> None:
        address = self._addresses.get(host)
        if address is None or address.connections > 0:
            return
        if address.seconds_until_full() == 0.0:
            del self._addresses[host]
        else:  # woken a little early (the loop's clock resolution): look again then
            self._schedule_prune(host, address)

    def _forget(self, peer: _Peer) -> None:
        if self._peers.get(peer.device_id) is peer:
            del self._peers[peer.device_id]

    async def _admit(self, connection: Connection, shared: _TokenBucket) -> _Peer | None:
        try:
            async with asyncio.timeout(self._limits.hello_timeout):
                frame = await connection.receive()
        except (TimeoutError, ConnectionGoneError):
            if self._metrics is not None:
                self._metrics.connection_refused("no_hello")
            await connection.close(_POLICY, "no hello")
            return None
        if not shared.take():
            # A hello starts a replay: it spends the address's budget, unread.
            logger.info("refused a connection: %s", _RATE_LIMITED)
            if self._metrics is not None:
                self._metrics.connection_refused(_RATE_LIMITED)
            refused = Error(None, _RATE_LIMITED, "too many messages per second from this address")
            with contextlib.suppress(ConnectionGoneError):
                await connection.send(encode(refused))
                await connection.close(_TRY_LATER, _RATE_LIMITED)
            return None
        hello = self._decode(frame)
        handshake = connection.handshake
        refusal = hello if isinstance(hello, Error) else await self._check_hello(hello, handshake)
        if refusal is None:
            assert isinstance(hello, Hello)
            grant = self._admitted[hello.device_id]
            peer = _Peer(connection, hello, grant, self._limits, self._budget)
            del self._admitted[hello.device_id]
            self._peers[hello.device_id] = peer
            try:
                await self._welcome(peer, hello)
            except Exception:
                logger.exception("welcome of %s failed", peer.grant.name)
                self._forget(peer)
                peer.drop()
                if self._metrics is not None:
                    self._metrics.connection_refused("unavailable")
                await connection.close(_TRY_LATER, _NO_DATABASE)
                return None
            if self._metrics is not None:
                self._metrics.connection_accepted()
            return peer
        logger.info("refused a connection: %s", refusal.code)
        if self._metrics is not None:
            self._metrics.connection_refused(refusal.code)
        with contextlib.suppress(ConnectionGoneError):
            await connection.send(encode(refusal))
            # The database could not check the device: like a failed welcome, retry later.
            code = _TRY_LATER if refusal.code == "unavailable" else _POLICY
            await connection.close(code, refusal.code)
        return None

    async def _check_hello(self, hello: ClientMessage, handshake: Handshake) -> Error | None:
        if not isinstance(hello, Hello):
            return Error(hello.request_id, "bad_message", "the first message must be a hello")
        if hello.protocol != PROTOCOL_VERSION:
            return Error(None, "bad_version", f"this server speaks protocol {PROTOCOL_VERSION}")
        grant = await self._authenticate_with(hello, handshake)
        if isinstance(grant, Error):
            return grant
        # Checked after the await: no other hello can slip in between.
        if hello.device_id in self._peers or hello.device_id in self._admitted:
            return Error(None, "device_in_use", "another connection holds this device id")
        self._admitted[hello.device_id] = grant  # held while its proof is checked
        refusal = await self._check_identity(hello)
        if refusal is not None:
            del self._admitted[hello.device_id]
        return refusal

    async def _check_identity(self, hello: Hello) -> Error | None:
        """Refuse a hello that claims a device id it cannot prove (``device_unproven``).

        The first hello carrying a secret for an id binds the id to it, in the
        storage; any later hello for that id must carry the same secret. A
        hello without one (an older client) may use only an id never bound,
        and none at all with ``require_device_secret``.
        """
        secret = hello.device_secret
        if isinstance(secret, msgspec.UnsetType):
            if self._require_device_secret:
                return Error(None, "device_unproven", "this server requires a device secret")
            digest = None
        else:
            digest = hashlib.sha256(secret.encode()).digest()
        try:
            proven = await self._storage.claim_device(hello.device_id, digest)
        except Exception:
            logger.exception("the identity check of device %d failed", hello.device_id)
            return Error(None, "unavailable", "the server could not check the device; retry")
        if not proven:
            return Error(
                None, "device_unproven", "this device id belongs to a device with another secret"
            )
        return None

    async def _welcome(self, peer: _Peer, hello: Hello) -> None:
        peer.cursor = hello.since
        head = await self._storage.head()
        generation = self._storage.generation
        compacted = await self._below_horizon(hello, generation, head)
        reset = compacted or await self._must_reset(hello, generation, head)
        if reset:
            peer.cursor = peer.resumed_from = 0
        expires_at = peer.grant.expires_at
        welcome = Welcome(
            generation=generation,
            server_revision=head,
            reset=reset,
            expires_at=msgspec.UNSET if expires_at is None else expires_at,
            compacted=True if compacted else msgspec.UNSET,
        )
        if not peer.offer(encode(welcome)):
            self._cut_soon(peer)  # all send queues are full: it replays on reconnect
        logger.info("%s connected (since %d, reset %s)", peer.grant.name, hello.since, reset)

    async def _below_horizon(self, hello: Hello, generation: str, head: int) -> bool:
        """Whether the device's cursor is at or below the compaction horizon of this database.

        Tombstones it may not have seen were dropped: it replays from 0 and
        drops the keys that replay leaves out. (At the horizon itself, the
        entry its digest names may be a dropped tombstone: it replays too.)
        A storage that cannot compact has no horizon; a hello from 0 needs none.
        """
        horizon = getattr(self._storage, "horizon", None)
        if hello.since == 0 or horizon is None or hello.since > head:
            return False
        if hello.generation not in ("", generation):
            return False  # another database: the reset is for that
        return bool(hello.since <= await horizon())

    async def _compacted_past(self, peer: _Peer) -> bool:
        """Whether a compaction has passed the position ``peer`` resumes its replay from.

        Read after each replay page: a page read before the compaction
        committed is whole, one read after it may lack a dropped tombstone.
        """
        horizon = getattr(self._storage, "horizon", None)
        if peer.resumed_from == 0 or horizon is None:
            return False
        return bool(peer.resumed_from <= await horizon())

    async def _must_reset(self, hello: Hello, generation: str, head: int) -> bool:
        """Whether the device's position cannot come from this database: it must reload.

        A cursor from another database, or beyond this one's head, is a new
        database or a restored backup. A backup restored and then written past
        the device's cursor (it keeps its generation id) is told by the entry
        at the cursor: not the one whose digest the device sent. A hello
        without a digest (an older client) is judged by the first two alone.
        """
        if hello.generation not in ("", generation) or hello.since > head:
            return True
        if isinstance(hello.digest, msgspec.UnsetType) or hello.since == 0:
            return False
        # The first entry from since on: since's own, unless the database lacks it.
        page = await self._storage.changes_after(hello.since - 1, 1)
        if not page or page[0].server_revision != hello.since:
            return True
        return entry_digest(_push_as_sent(page[0], hello.device_id)) != hello.digest

    async def _serve_peer(self, peer: _Peer, writer: asyncio.Task[None], address: _Address) -> None:
        replay = asyncio.create_task(self._replay(peer, address.replay_bytes))
        peer.replay, peer.replay_pace = replay, address.replay_bytes
        self._tasks.add(replay)
        replay.add_done_callback(self._tasks.discard)
        own = _TokenBucket(self._limits.messages_per_second, self._limits.burst)
        budget = _Budget(own, address.bucket)
        try:
            while True:
                frame = await peer.connection.receive()
                if writer.done():
                    break
                reply = await self._answer(peer, frame, budget)
                if self._metrics is not None and isinstance(reply, Error):
                    self._metrics.frame_refused(reply.code)
                if peer.refused is not None:
                    await self._expel(peer, peer.refused)
                    break
                if not peer.offer(encode(reply)):
                    await self._cut(peer, _QUEUE_FULL)
                    break
                if peer.bad_frames >= self._limits.max_bad_frames:
                    logger.warning("%s closed: %s", peer.grant.name, _BAD_FRAMES)
                    peer.close_reason = _CLOSE_LABELS[_BAD_FRAMES]
                    self._forget(peer)
                    address.strike()
                    # The answers gathered this turn, the last bad frame's too, go
                    # out ahead of the close frame (a lagging queue's are dropped).
                    peer.flush()
                    await _close_discarding(peer.connection, _POLICY, _BAD_FRAMES, address)
                    break
                # Past the address's burst, read on only at its pace: unread
                # frames back up in websockets' queue, then in the sender's socket.
                await address.read_paced(frame)
        finally:
            replay.cancel()

    async def _cut(self, peer: _Peer, reason: str) -> None:
        if self._begin_cut(peer, reason):
            await peer.connection.close(_TRY_LATER, reason)

    def _cut_soon(self, peer: _Peer) -> None:
        """Cut ``peer`` now (its queue freed at once); its close handshake runs in a task."""
        if self._begin_cut(peer, _QUEUE_FULL):
            task = asyncio.create_task(peer.connection.close(_TRY_LATER, _QUEUE_FULL))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _begin_cut(self, peer: _Peer, reason: str) -> bool:
        """Mark ``peer`` cut, forget it and drop its queue; False if it already was."""
        if peer.cut:
            return False
        peer.cut = True
        peer.close_reason = _CLOSE_LABELS.get(reason, reason)
        # Forget it at once: no more pushes pile up, and the device may reconnect.
        self._forget(peer)
        peer.drop()
        logger.warning("%s cut: %s", peer.grant.name, reason)
        return True

    def _decode(self, frame: str | bytes) -> ClientMessage | Error:
        """The frame's message, or the error that refuses it, numbered when it can be.

        websockets hands a binary frame over as bytes: it is refused with
        ``bad_message`` whatever it holds (decoded only to find its request id).
        A frame over ``max_message_bytes`` is refused by its length, unparsed.
        """
        if len(frame) > self._limits.max_message_bytes:
            # A str's length counts characters, each at least one UTF-8 byte.
            request_id = _leading_request_id(frame)
            if isinstance(frame, bytes):
                return Error(request_id, "bad_message", _BINARY)
            detail = f"a message may hold at most {self._limits.max_message_bytes} bytes"
            return Error(request_id, "too_large", detail)
        try:
            message = decode_client(frame, max_bytes=self._limits.max_message_bytes)
        except ProtocolError as error:
            if isinstance(frame, bytes):
                return Error(error.request_id, "bad_message", _BINARY)
            return Error(error.request_id, error.code, error.detail)
        if isinstance(frame, bytes):
            request_id = None if isinstance(message, Hello) else message.request_id
            return Error(request_id, "bad_message", _BINARY)
        return message

    async def _answer(self, peer: _Peer, frame: str | bytes, budget: _Budget) -> Any:
        # The token first: a frame the server cannot read costs what a valid one does.
        if not budget.take():
            # Unread, so a bad frame too: a client that goes on sending past the
            # rate once told is closed (max_bad_frames), not answered forever.
            peer.bad_frames += 1
            return Error(_leading_request_id(frame), _RATE_LIMITED, "too many messages per second")
        message = self._decode(frame)
        if isinstance(message, Error | Hello):
            peer.bad_frames += 1
            if isinstance(message, Hello):
                return Error(None, "bad_message", "hello is only the first message")
            return message
        peer.bad_frames = 0
        if isinstance(message, Get):
            return await self._get(peer, message)
        if isinstance(message, Auth):
            return await self._refresh(peer, message)
        if isinstance(message, Delete):
            return await self._delete(peer, message)
        if isinstance(message, Subscribe):
            return await self._subscribe(peer, message)
        return await self._set(peer, message)

    async def _get(self, peer: _Peer, message: Get) -> Value | Error:
        if not peer.grant.can_read(message.key):
            return Error(message.request_id, "forbidden", "this connection may not read the key")
        try:
            change = await self._storage.read(message.key)
        except Exception:
            logger.exception("read of %r failed", message.key)
            return Error(message.request_id, "unavailable", "the server could not read; retry")
        if change is None:
            return Value(message.request_id, message.key, None, -1)
        if change.deleted:
            return Value(message.request_id, message.key, None, change.server_revision, True)
        value = msgspec.Raw(change.value)
        return Value(message.request_id, message.key, value, change.server_revision)

    async def _set(self, peer: _Peer, message: Set) -> Committed | Error:
        started = time.perf_counter()
        refusal = self._refuse_write(peer, message)
        if refusal is not None:
            return refusal
        try:
            value = canonical_json(message.value)
        except (msgspec.EncodeError, UnicodeEncodeError):
            return Error(message.request_id, "bad_field", "set.value is not JSON")
        if len(value) > self._limits.max_message_bytes:
            return Error(message.request_id, "too_large", "the value is too large")
        return await self._commit(peer, message, value, started)

    async def _delete(self, peer: _Peer, message: Delete) -> Committed | Error:
        """A delete: committed like a set (revision, dedupe, grants), as a tombstone."""
        started = time.perf_counter()
        refusal = self._refuse_write(peer, message)
        if refusal is not None:
            return refusal
        return await self._commit(peer, message, TOMBSTONE, started)

    def _refuse_write(self, peer: _Peer, message: Set | Delete) -> Error | None:
        if message.device_id not in (None, peer.device_id):
            return Error(
                message.request_id, "forbidden", "device_id is not this connection's device"
            )
        if not peer.grant.can_write(message.key):
            return Error(message.request_id, "forbidden", "this connection may not write the key")
        return None

    async def _commit(
        self, peer: _Peer, message: Set | Delete, value: bytes, started: float
    ) -> Committed | Error:
        try:
            # A write naming its device is deduplicated: its retry (same device,
            # key and local revision) or a stale copy (a lower local revision) gets
            # the ack of the device's newest commit of the key and commits nothing.
            change = await self._storage.commit(
                message.key,
                value,
                local_revision=message.local_revision,
                device_id=peer.device_id,
                deduplicate=message.device_id is not None,
            )
        except Exception:
            # The database is unreachable or refused: the device will retry.
            logger.exception("commit of %r failed", message.key)
            return Error(message.request_id, "unavailable", "the server could not commit; retry")
        if self._metrics is not None:
            self._metrics.committed(time.perf_counter() - started)
        self._log_if_superseded(peer, message, value, change)
        logger.debug("%s wrote %r at %d", peer.grant.name, message.key, change.server_revision)
        return _committed(message.request_id, change)

    def _log_if_superseded(
        self, peer: _Peer, message: Set | Delete, value: bytes, change: Change
    ) -> None:
        if change.local_revision > message.local_revision:
            logger.info(
                "%s sent a stale copy of %r (local revision %d): answered with its commit at %d",
                peer.grant.name,
                message.key,
                message.local_revision,
                change.server_revision,
            )
        elif change.value != value:
            # Its device id restarted its local revisions (a fixed id without
            # persistence): the new value is lost, so say so loudly.
            logger.warning(
                "%s sent another value for %r at local revision %d, already committed at %d: "
                "answered with the committed value; a device id must never reuse a local revision",
                peer.grant.name,
                message.key,
                message.local_revision,
                change.server_revision,
            )

    # -- credentials: check, refresh, expiry -----------------------------------------

    async def _authenticate_with(self, hello: Hello, handshake: Handshake) -> Grant | Error:
        """The grant the authenticator gives, or the (unnumbered) error that refuses it.

        A :class:`HandshakeAuthenticator` sees the handshake too. An
        authenticator that fails (a key server down) refuses with
        ``unavailable``: the device retries, it is not told its token is bad.
        """
        authenticate = self._authenticate
        try:
            if isinstance(authenticate, HandshakeAuthenticator):
                grant = await authenticate.authenticate(hello, handshake)
            else:
                grant = await authenticate(hello)
        except AuthRefusedError as error:
            return Error(None, error.code, str(error))
        except Exception:
            logger.exception("the authenticator failed for device %d", hello.device_id)
            return Error(None, "unavailable", "the server could not check the token; retry")
        if grant is None:
            return Error(None, "unauthorized", "the token was refused")
        return grant

    async def _refresh(self, peer: _Peer, message: Auth) -> Authed | Error:
        """Admit fresh credentials on an open connection, for the same principal.

        Checked like a hello's token, with the connection's handshake. Admitted:
        the new grant's rights hold from the next message on, and its expiry
        replaces the old. Refused: ``peer.refused`` is set, and the connection
        is closed once the error is sent. An ``unavailable`` authenticator
        refuses this refresh only: the device may try again before expiry.
        """
        request_id = message.request_id
        hello = Hello(device_id=peer.device_id, since=peer.cursor, token=message.token)
        outcome = await self._authenticate_with(hello, peer.handshake)
        if isinstance(outcome, Error):
            refusal = Error(request_id, outcome.code, outcome.message)
            if outcome.code != "unavailable":
                peer.refused = refusal
            return refusal
        if outcome.name != peer.grant.name:
            peer.refused = Error(
                request_id, "unauthorized", "the new token is for another principal"
            )
            return peer.refused
        if outcome.expires_at is not None and outcome.expires_at <= time.time():
            peer.refused = Error(request_id, _TOKEN_EXPIRED, "the new token has expired")
            return peer.refused
        if peer.cut:  # expired meanwhile: the close is under way
            return Error(request_id, _TOKEN_EXPIRED, "the credentials expired before the refresh")
        before, peer.grant = peer.grant, outcome
        self._schedule_expiry(peer)
        logger.info("%s refreshed its credentials", peer.grant.name)
        await self._catch_up_widened(peer, before)
        return Authed(request_id, outcome.expires_at)

    async def _catch_up_widened(self, peer: _Peer, before: Grant) -> None:
        """Send the keys a refreshed grant lets the device read that the old one did not.

        Known only for grants of prefixes (:func:`prefix_grant`, the JWT
        claims): a prefix the new grant adds brings its keys at once. With
        grants of other functions, those keys arrive with their next change.
        """
        old, new = read_prefixes(before), read_prefixes(peer.grant)
        if old is None or new is None:
            return
        added = tuple(prefix for prefix in new if not prefix.startswith(old))
        if added and await self._replayed(peer):
            await self._catch_up(peer, added, before.can_read)

    def _schedule_expiry(self, peer: _Peer) -> None:
        """One timer per connection, at its grant's expiry (replaced on each refresh)."""
        if peer.expiry is not None:
            peer.expiry.cancel()
            peer.expiry = None
        expires_at = peer.grant.expires_at
        if expires_at is not None:
            delay = max(0.0, expires_at - time.time())
            peer.expiry = asyncio.get_running_loop().call_later(delay, self._expire, peer)

    def _expire(self, peer: _Peer) -> None:
        """The grant expired unrefreshed: no more reads, writes or pushes; say so and close."""
        peer.expiry = None
        if peer.cut:
            return
        # Until the close completes, whatever the device sends is forbidden.
        peer.grant = Grant(peer.grant.name, _nothing, _nothing, peer.grant.expires_at)
        error = Error(None, _TOKEN_EXPIRED, "the credentials expired; connect with a fresh token")
        task = asyncio.create_task(self._expel(peer, error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expel(self, peer: _Peer, error: Error) -> None:
        """Send ``error`` ahead of anything queued, then close (1008, its code as the reason)."""
        if peer.cut:
            return
        peer.cut = True
        self._forget(peer)
        peer.drop()  # pushes queued for it are replayed on its next connection
        logger.info("%s closed: %s", peer.grant.name, error.code)
        with contextlib.suppress(ConnectionGoneError):
            await peer.connection.send(encode(error))
            await peer.connection.close(_POLICY, error.code)

    # -- replay and pushes ---------------------------------------------------------

    async def _subscribe(self, peer: _Peer, message: Subscribe) -> Subscribed | Error:
        """Replace the subscription; send every key newly in scope, then answer.

        The catch-up of a prefix added runs with live changes held in
        ``pending``, as a hello's replay does: first each key of the added
        prefixes at its newest change up to the cursor (history the device
        never had, all at or below what it has seen), then a replay of the
        whole new scope from the cursor, in revision order, then ``pending``
        (what was already sent is skipped by the cursor). So the device's
        cursor only ever covers changes of its scope that it has received.
        """
        if not await self._replayed(peer):
            return Error(message.request_id, "unavailable", "the connection is closing")
        new, old = (*dict.fromkeys(message.prefixes),), peer.prefixes
        added = () if old is None else tuple(p for p in new if not p.startswith(old))
        peer.prefixes = new
        if added:
            had = old or ()
            await self._catch_up(peer, added, lambda key: key.startswith(had))
        if peer.cut:
            return Error(message.request_id, "unavailable", "the connection is closing")
        logger.debug("%s subscribed to %r", peer.grant.name, new)
        return Subscribed(message.request_id, peer.cursor)

    async def _replayed(self, peer: _Peer) -> bool:
        """Wait for the hello's replay (one at a time); False if the connection is closing."""
        replay = peer.replay
        if replay is not None and not replay.done():
            await asyncio.wait({replay})
        return not peer.cut and peer.pending is None

    async def _catch_up(
        self, peer: _Peer, prefixes: tuple[str, ...], had: Callable[[str], bool]
    ) -> None:
        """Send the keys under ``prefixes`` newly in the device's scope, live changes held.

        First each such key the device now receives (its subscription and
        grant) and did not before (``had``) at its newest change up to the
        cursor, then a replay from the cursor, then the changes held meanwhile
        (what was already sent is skipped by the cursor): nothing missed, nothing
        twice, and the cursor only ever covers changes the device received.
        """
        pace = peer.replay_pace
        if pace is None:
            return
        peer.pending = []
        await self._send_history(peer, prefixes, had, pace)
        if not peer.cut:
            await self._replay(peer, pace, announce=False)

    async def _send_history(
        self,
        peer: _Peer,
        prefixes: tuple[str, ...],
        had: Callable[[str], bool],
        pace: _TokenBucket,
    ) -> None:
        """Push the keys under ``prefixes`` the device now receives and ``had`` not, to its cursor.

        A key changed after the cursor is left to the replay that follows.
        """
        upto, after, page_size = peer.cursor, 0, self._limits.replay_page
        try:
            while True:
                async with self._replay_reads:
                    page = await self._latest(after, page_size, prefixes)
                for change in page:
                    if change.server_revision > upto:
                        return
                    key = change.key
                    if key.startswith(prefixes) and not had(key) and peer.sends(key):
                        frame = self._push_frame(peer, change)
                        await pace.pace(len(frame))
                        await peer.put(frame)
                    after = change.server_revision
                if len(page) < page_size:
                    return
        except (_SendQueueFullError, ConnectionGoneError):
            await self._cut(peer, _QUEUE_FULL)
        except Exception:
            logger.exception("catch-up for %s failed", peer.grant.name)
            await self._cut(peer, _NO_DATABASE)

    async def _latest(
        self, after: int, limit: int, prefixes: tuple[str, ...] | None
    ) -> list[Change]:
        """A page of ``latest_after``, narrowed to ``prefixes`` by the storage when it can."""
        if prefixes is None or not self._storage_filters:
            return await self._storage.latest_after(after, limit)
        return await self._storage.latest_after(after, limit, prefixes=prefixes)  # type: ignore[call-arg]

    async def _replay(self, peer: _Peer, pace: _TokenBucket, *, announce: bool = True) -> None:
        # Last write wins: each key changed since the cursor once, at its newest
        # change, so a replay costs what the keys hold, not the whole log. Its
        # last change is the head, so the device's cursor ends there. put()
        # waits while the send queue is half full: the replay never holds
        # more than send_buffer_bytes of a connection's memory. ``pace`` spreads
        # the replays of one address over time past their burst.
        page_size = self._limits.replay_page
        metrics = self._metrics
        if metrics is not None:
            metrics.replay_started()
        try:
            while True:
                async with self._replay_reads:
                    page = await self._latest(peer.cursor, page_size, peer.prefixes)
                    compacted = await self._compacted_past(peer)
                if compacted:
                    # The page may lack a dropped tombstone: send none of it. The
                    # device's cursor stays below the horizon: it reconnects, reloads.
                    await self._cut(peer, _COMPACTED)
                    return
                for change in page:
                    if peer.sends(change.key):
                        frame = self._push_frame(peer, change)
                        await pace.pace(len(frame))
                        await peer.put(frame)
                        if metrics is not None:
                            metrics.replayed(1, len(frame))
                    peer.cursor = change.server_revision
                if len(page) == page_size:
                    continue
                if peer.pending_overflow:
                    # Too much arrived meanwhile: read it from the storage instead.
                    peer.pending, peer.pending_overflow = [], False
                    continue
                pending, peer.pending = peer.pending or [], None
                for change in pending:
                    self._push_to(peer, change)
                if announce and not peer.offer(encode(Ready(peer.cursor))):
                    await self._cut(peer, _QUEUE_FULL)
                return
        except (_SendQueueFullError, ConnectionGoneError):
            await self._cut(peer, _QUEUE_FULL)
        except Exception:
            # The device reconnects and replays from its cursor.
            logger.exception("replay for %s failed", peer.grant.name)
            await self._cut(peer, _NO_DATABASE)

    def _publish(self, change: Change) -> None:
        # Every device but the writer gets the same bytes: encoded once, shared
        # by all their queues (a fan-out of 60 KB to 2,000 devices holds 60 KB).
        others = _SharedPush(change)
        for peer in list(self._peers.values()):
            if not peer.sends(change.key):
                continue
            if peer.pending is not None:
                if len(peer.pending) >= self._limits.replay_page:
                    peer.pending_overflow = True
                    peer.pending.clear()
                elif not peer.pending_overflow:
                    peer.pending.append(change)
            else:
                self._push_to(peer, change, others)

    def _publish_measured(self, change: Change) -> None:
        """``_publish``, timed for the metrics' ``fan_out_seconds``.

        Its end is when the last reader's frame was written to its transport
        or queued (or, in a replay, held for after it): the time one change
        takes to leave, not its wait behind the changes of its batch before it.
        """
        started = time.perf_counter()
        self._publish(change)
        if self._metrics is not None:
            self._metrics.fanned_out(time.perf_counter() - started)

    def _push_to(self, peer: _Peer, change: Change, others: _SharedPush | None = None) -> None:
        if change.server_revision <= peer.cursor:
            return  # already sent in the replay
        peer.cursor = change.server_revision
        if others is not None and peer.device_id != change.device_id:
            frame = others.frame(peer.device_id)
        else:
            frame = self._push_frame(peer, change)
        if not peer.offer(frame):
            self._cut_soon(peer)

    def _push_frame(self, peer: _Peer, change: Change) -> bytes:
        return encode(_push_as_sent(change, peer.device_id))


class _SharedPush:
    """The push of one change for every device but its writer, encoded on first use."""

    def __init__(self, change: Change) -> None:
        self._change = change
        self._frame: bytes | None = None

    def frame(self, device_id: int) -> bytes:
        """The frame for ``device_id``, which must not be the change's writer."""
        if self._frame is None:
            self._frame = encode(_push_as_sent(self._change, device_id))
        return self._frame


def _push_as_sent(change: Change, device_id: int) -> Push:
    """The push of ``change`` as device ``device_id`` received it (what its digest covers).

    Only the writer learns its own device id and local revision back;
    ``SyncServer._push_frame`` encodes this for every push it sends.
    """
    mine = change.device_id == device_id
    return Push(
        key=change.key,
        value=None if change.deleted else msgspec.Raw(change.value),
        server_revision=change.server_revision,
        local_revision=change.local_revision if mine else 0,
        device_id=change.device_id if mine else 0,
        deleted=True if change.deleted else msgspec.UNSET,
    )


def _nothing(key: str) -> bool:
    return False


def _committed(request_id: int, change: Change) -> Committed:
    """The ack of ``change`` (a set's, or a delete's tombstone: ``deleted``, value null)."""
    if change.deleted:
        return Committed(request_id, change.key, None, change.server_revision, True)
    return Committed(request_id, change.key, msgspec.Raw(change.value), change.server_revision)


def _received_cost(frame: str | bytes) -> int:
    """What reading ``frame`` costs its address's receive budget, in bytes.

    At least 2 KiB: parsing a frame costs the server whatever its size, so
    past the burst an address's small frames too are read at most about
    1,000 a second (the address's message rate: more would be refused anyway).
    """
    return max(len(frame), 2048)


async def _close_discarding(
    connection: Connection, code: int, reason: str, address: _Address
) -> None:
    """Close, reading and dropping what the client sent meanwhile, at its address's pace.

    A flooding client has frames in flight: unread, they fill the
    connection's receive queue, websockets stops reading the socket, and the
    client's close frame behind them is seen only at the close timeout (10
    s, each such connection holding its queue all along).
    """
    closing = asyncio.create_task(connection.close(code, reason))
    with contextlib.suppress(ConnectionGoneError):
        while True:
            frame = await connection.receive()
            await address.read_paced(frame)
    await closing


def _takes_prefixes(storage: Storage) -> bool:
    """Whether ``storage.latest_after`` narrows a page to key prefixes itself."""
    try:
        parameters = inspect.signature(storage.latest_after).parameters
    except (TypeError, ValueError):
        return False
    return "prefixes" in parameters
