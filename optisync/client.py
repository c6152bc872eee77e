"""``optisync.client``: a WebSocket transport from a :class:`~optisync.Store` to a server.

:class:`SyncClient` connects (and reconnects, with backoff), says hello with
the newest server revision it has seen and the server's generation, hands
the replay and every later push to its listeners (and, given an
``apply_value``, to :meth:`Store.server_push <optisync.Store.server_push>`),
and sends writes: it is an ``optisync.transport.Transport``, and its
:meth:`~SyncClient.sender` is a ``send_value_to_server`` for the sync
methods. It imports the wire format (``optisync.wire``), never the
server. Install it with ``pip install "optisync[client]"``.

Example:
    >>> import asyncio
    >>> from optisync import Store
    >>> from optisync.client import SyncClient
    >>> from optisync.server import SqliteStorage, SyncServer
    >>> def apply_value(state, key, value, revision):
    ...     return {**state, key: value}
    >>> async def main() -> None:
    ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
    ...         store = Store({}, device_id=1)
    ...         async with SyncClient(store, url, apply_value=apply_value) as client:
    ...             await client.wait_online()
    ...             await store.optimistic_sync_with_push(
    ...                 key="like",
    ...                 value_to_apply=lambda: True,
    ...                 apply_optimistic_value_to_state=lambda s, v: {**s, "like": v},
    ...                 get_value_from_state=lambda s: s.get("like"),
    ...                 send_value_to_server=client.sender("like"),
    ...                 get_server_revision_from_state=lambda key: -1,
    ...             )
    ...             print(store.state, store.server_revision("like"), client.cursor)
    >>> asyncio.run(main())
    {'like': True} 1 1
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar
from urllib.parse import urlsplit

import attrs
import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import backoff, process_exception
from websockets.exceptions import ConnectionClosed

from optisync import PushMetadata, PushOutcome, Store
from optisync.errors import (
    ArgumentTypeError,
    ClosedError,
    InvalidArgumentError,
    OptisyncError,
    StateError,
    TransportError,
)
from optisync.fields import serve
from optisync.transport import DELETED, Ack, PushListener, SyncRequest, checked_prefixes
from optisync.wire import (
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
    ServerMessage,
    Set,
    Subscribe,
    Subscribed,
    Value,
    Welcome,
    decode_server,
    encode,
    entry_digest,
)

__all__ = [
    "ClientConnectionError",
    "ClientTimeoutError",
    "RequestRefusedError",
    "ServerRefusedError",
    "SyncClient",
    "Traced",
]

logger: Final = logging.getLogger("optisync.client")

S = TypeVar("S")

#: Refusals at hello that another attempt cannot fix: the client stops.
_FATAL: Final = frozenset(
    {"unauthorized", "bad_version", "bad_field", "bad_message", "device_unproven"}
)
_FIXES: Final = {
    "device_unproven": "give the client the device's own secret, or use a new device id",
}
_SECRET: Final = re.compile(r"[A-Za-z0-9_-]{16,128}")
#: The key caught_up() reads: any key would do, its answer is what matters.
_PROBE_KEY: Final = "optisync.caught_up"
_MAX_FRAME: Final = 16 * 1024 * 1024


class ClientConnectionError(TransportError):
    """The client is offline, or its connection dropped while the request was in flight.

    The request may or may not have been committed; the replay on reconnect
    tells the store either way. It is a :class:`~optisync.TransportError`,
    hence a builtin ``ConnectionError``: an outbox keeps the change and retries.

    Example:
        >>> import optisync
        >>> from optisync.client import ClientConnectionError
        >>> error = ClientConnectionError("offline")
        >>> isinstance(error, optisync.TransportError), isinstance(error, ConnectionError)
        (True, True)
    """


class ClientTimeoutError(OptisyncError, TimeoutError):
    """:meth:`SyncClient.wait_online` ran out of time; the message says the last failure.

    The client keeps trying in the background: wait again, or check that the
    server runs at that URL.

    Example:
        >>> from optisync.client import ClientTimeoutError
        >>> issubclass(ClientTimeoutError, TimeoutError)
        True
    """


class RequestRefusedError(OptisyncError, RuntimeError):
    """The server answered a request with an error; nothing changed on the server.

    Attributes:
        code: the server's reason (``forbidden``, ``rate_limited``, ``too_large`` …).

    Example:
        >>> from optisync.client import RequestRefusedError
        >>> RequestRefusedError("forbidden", "this connection may not write the key").code
        'forbidden'
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the server refused the request: {code}: {message}")
        self.code = code


class ServerRefusedError(OptisyncError, RuntimeError):
    """The server refused the connection for good (a bad token, another protocol, a bad URL).

    The client stops; fix the cause and create a new client.
    :meth:`SyncClient.close` and :meth:`SyncClient.wait_online` raise it.

    Attributes:
        code: the server's reason when it gave one: ``unauthorized`` (a
            refused token, at connect or refresh), ``token_expired`` (the
            token expired, on an open connection without a refresh, or at
            connect), ``bad_version``, ``device_unproven`` …; None for a
            refusal of the HTTP handshake (a bad URL).

    Example:
        >>> from optisync.client import ServerRefusedError
        >>> error = ServerRefusedError("token_expired: the credentials expired", "token_expired")
        >>> str(error), error.code
        ('token_expired: the credentials expired', 'token_expired')
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


@attrs.frozen
class Traced:
    """One protocol message the client sent or received, for a ``trace`` callback.

    Attributes:
        direction: ``"sent"`` (after the message went out) or ``"received"``
            (after the client handled it: :attr:`SyncClient.cursor` and
            :attr:`SyncClient.online` already tell its effect).
        message: the decoded message (a struct of ``optisync.wire``).
        outcome: for a received push, what :meth:`Store.server_push
            <optisync.Store.server_push>` did with it (None when the client
            has no ``apply_value``); otherwise None.

    Example:
        >>> from optisync import PushOutcome
        >>> from optisync.client import Traced
        >>> from optisync.wire import Push
        >>> push = Push(key="like", value=True, server_revision=3, local_revision=0, device_id=0)
        >>> Traced("received", push, PushOutcome.APPLIED).outcome.value
        'applied'
    """

    direction: Literal["sent", "received"]
    message: ClientMessage | ServerMessage
    outcome: PushOutcome | None = None


def _check_url(url: object) -> str:
    if not isinstance(url, str):
        raise ArgumentTypeError(f"the server URL must be a str like 'ws://host:8765', got {url!r}")
    try:
        parts = urlsplit(url)
        valid = parts.scheme in ("ws", "wss") and bool(parts.hostname)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        valid = False
    if not valid:
        raise InvalidArgumentError(
            f"{url!r} is not a WebSocket URL: it needs ws:// or wss:// and a host, "
            "e.g. 'ws://127.0.0.1:8765'"
        )
    return url


def _check_callable(listener: object, what: str) -> None:
    if not callable(listener):
        raise ArgumentTypeError(f"{what} must be callable, got {listener!r}")


class SyncClient(Generic[S]):
    """Keeps one :class:`~optisync.Store` connected to an optisync server.

    An ``optisync.transport.Transport``: declared fields use its
    :meth:`send`, :meth:`get`, :meth:`subscribe_pushes` and :meth:`caught_up`.

    Args:
        store: the store; its :attr:`~optisync.Store.device_id` is the
            connection's device id.
        url: the server's ``ws://`` or ``wss://`` URL (checked here:
            :class:`~optisync.InvalidArgumentError` otherwise).
        apply_value: ``(state, key, value, server_revision) -> state``: puts a
            pushed value into the state (store the revision there too if your
            ``get_server_revision_from_state`` reads it). Optional: without
            it, pushes only go to :meth:`subscribe_pushes` listeners.
        get_server_revision_from_state: passed to ``server_push``; the default
            relies on the store's own record (:meth:`~optisync.Store.server_revision`).
        token: sent in the hello for the server's authenticator: a ``str``,
            or an ``async () -> str`` token provider, called before each
            connection attempt and again before the token expires (see
            ``refresh_margin``). A provider that raises is logged and the
            attempt retried with backoff.
        refresh_margin: when the server says the connection's credentials
            expire (a :class:`~optisync.server.jwt.JwtAuth` token's ``exp``),
            a client with a token provider fetches a fresh token and sends it
            on the open connection ``refresh_margin`` seconds before (default
            30), or halfway through the remaining lifetime when that is
            shorter. A refused refresh stops the client
            (:class:`ServerRefusedError`, ``code="unauthorized"``); so does a
            connection closed at expiry (``code="token_expired"``), which a
            plain ``str`` token always meets.
        device_secret: the secret only this device holds (16 to 128 URL-safe
            base64 characters; ``secrets.token_urlsafe(32)`` makes one), sent
            in every hello: the server binds the device id to the first one
            it sees and refuses the id to anyone without it
            (``device_unproven``). Keep it with the device id: a
            :class:`~optisync.persistence.Persistence` attached to the store
            hands its own over (see :meth:`use_device_secret`). Without one,
            another holder of the token may take over the device id.
        cursor: the newest server revision already applied (persisted by the
            app); the server replays what came after it. See :meth:`resume`.
        generation: the server generation that cursor belongs to.
        digest: the digest of the push at that cursor (:attr:`digest`), by
            which the server tells a database restored from a backup.
        on_reset: called when the server says the cursor is from another
            database (new, or restored from a backup): reload your state.
            The same as :meth:`subscribe_reset`.
        reconnect: reconnect after a drop (with websockets' backoff); False
            stays offline after the first drop or failed attempt (tests).
        trace: called with a :class:`Traced` for every message sent and
            received (a timeline, a debug log); an exception it raises is
            logged and ignored.
        prefixes: receive only the keys that start with one of these (at
            most 64, each at most 200 characters; ``[]``: none); None, every
            key the server lets this device read. Sent in every hello;
            change it on the open connection with :meth:`subscribe`. Takes
            precedence over the scopes of the store's declared fields (see
            :func:`optisync.fields.serve`).

    Every listener (pushes, status, position, reset) is called on the event
    loop. An exception a status, position or reset listener raises is logged
    and the client goes on; a push listener's means the push was not taken:
    it is logged, the connection starts over (backing off) and the replay
    delivers the push again.

    Example:
        >>> from optisync import Store
        >>> from optisync.client import SyncClient
        >>> from optisync.transport import Transport
        >>> client = SyncClient(Store({}, device_id=3), "ws://127.0.0.1:8765", cursor=12)
        >>> client.cursor, client.online, isinstance(client, Transport)
        (12, False, True)
        >>> SyncClient(Store({}, device_id=3), "http://127.0.0.1:8765")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optisync.errors.InvalidArgumentError: 'http://127.0.0.1:8765' is not a WebSocket URL: ...
    """

    def __init__(
        self,
        store: Store[S],
        url: str,
        *,
        apply_value: Callable[[S, str, Any, int], S] | None = None,
        get_server_revision_from_state: Callable[[str], int] | None = None,
        token: str | Callable[[], Awaitable[str]] | None = None,
        refresh_margin: float = 30.0,
        device_secret: str | None = None,
        cursor: int = 0,
        generation: str = "",
        digest: str = "",
        on_reset: Callable[[], object] | None = None,
        reconnect: bool = True,
        trace: Callable[[Traced], object] | None = None,
        prefixes: Iterable[str] | None = None,
    ) -> None:
        self._store = store
        self._url = _check_url(url)
        self._apply_value = apply_value
        self._get_revision = get_server_revision_from_state or (lambda key: -1)
        self._token = token
        self._refresh_margin = refresh_margin
        self._refresher: asyncio.Task[None] | None = None
        # The refresh awaiting its answer: its request id and future.
        self._auth_request_id: int | None = None  # the refresh's auth, while in flight
        self._device_secret: str | None = None
        self._cursor = cursor
        self._generation = generation
        self._digest = digest
        self._reconnect = reconnect
        self._trace = trace
        self._connection: ClientConnection | None = None
        self._online = False
        # Set while online, and for good once the client has stopped.
        self._ready = asyncio.Event()
        self._stopped = False
        self._closed = False
        self._last_error: Exception | None = None
        self._warned = False  # this outage's first failure was logged
        self._status_listeners: list[Callable[[bool], object]] = []
        self._push_listeners: list[PushListener] = []
        self._position_listeners: list[Callable[[int, str], object]] = []
        self._reset_listeners: list[Callable[[], object]] = []
        self._reset_by_compaction = False
        if on_reset is not None:
            self.subscribe_reset(on_reset)
        self._pending: dict[int, asyncio.Future[Committed | Value | Subscribed | Authed]] = {}
        self._request_ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        # The subscription the server confirmed (what a hello carries), and the
        # one asked for; a task sends a subscribe while they differ.
        self._prefixes: tuple[str, ...] | None = None
        self._wanted: tuple[str, ...] | None = None
        self._said_hello = False
        self._subscriber: asyncio.Task[None] | None = None
        if device_secret is not None:
            self.use_device_secret(device_secret)
        if apply_value is None:
            # The store's declared fields are sent by this client, and its pushes reach them.
            serve(store, self)
        if prefixes is not None:
            self.use_prefixes(prefixes)

    # -- what an app persists and watches ------------------------------------------

    @property
    def device_id(self) -> int:
        """The device id the server knows this connection by: the store's.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=7), "ws://h").device_id
            7
        """
        return self._store.device_id

    @property
    def url(self) -> str:
        """The server's URL, as given.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "wss://example.com/sync").url
            'wss://example.com/sync'
        """
        return self._url

    @property
    def cursor(self) -> int:
        """The newest server revision received (replayed or pushed); persist it.

        Settable before :meth:`start` only (see :meth:`resume`).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> client.cursor = 5
            >>> client.cursor
            5
        """
        return self._cursor

    @cursor.setter
    def cursor(self, revision: int) -> None:
        # Another cursor: the digest of the old one no longer names it.
        self.resume(revision, self._generation, self._digest if revision == self._cursor else "")

    @property
    def generation(self) -> str:
        """The server generation the cursor belongs to (``""``: none yet); persist it.

        Settable before :meth:`start` only (see :meth:`resume`).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h", generation="abc").generation
            'abc'
        """
        return self._generation

    @generation.setter
    def generation(self, generation: str) -> None:
        self.resume(self._cursor, generation, self._digest)

    @property
    def digest(self) -> str:
        """The digest of the push at the cursor (``""``: unknown); persist it with the cursor.

        The hello carries it, and the server resets a device whose cursor
        names an entry its database does not hold (a backup restored and
        written past the cursor). It changes with the cursor: a position
        listener reads it. Set it with :meth:`resume`.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> client.resume(12, "g1", digest="5f0c2b7d3e9a4c1f")
            >>> client.digest
            '5f0c2b7d3e9a4c1f'
        """
        return self._digest

    def use_device_secret(self, secret: str) -> None:
        """Prove the device id with ``secret`` in every hello from now on.

        The server binds the device id to the first secret a hello carries
        for it, and refuses the id to any other (``device_unproven``, a
        :class:`ServerRefusedError`). :class:`~optisync.persistence.Persistence`
        calls it with the secret it keeps beside the device id. Call it before
        :meth:`start`; again with the same secret is harmless.

        Raises:
            ArgumentTypeError: ``secret`` is not a ``str``.
            InvalidArgumentError: it is not 16 to 128 URL-safe base64
                characters, or the client already holds another secret.
            StateError: the client has started.

        Example:
            >>> import secrets
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> client.use_device_secret(secrets.token_urlsafe(32))
            >>> client.use_device_secret("short")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            optisync.errors.InvalidArgumentError: a device secret is 16 to 128 ...
        """
        if not isinstance(secret, str):
            raise ArgumentTypeError(f"the device secret must be a str, got {type(secret).__name__}")
        if _SECRET.fullmatch(secret) is None:
            raise InvalidArgumentError(
                "a device secret is 16 to 128 characters of A-Z, a-z, 0-9, '-' and '_': "
                "make one with secrets.token_urlsafe(32) and keep it with the device id"
            )
        if self._device_secret == secret:
            return
        if self._device_secret is not None:
            raise InvalidArgumentError(
                "this client already proves its device id with another secret: a device "
                "has one secret, kept with its id"
            )
        if self._task is not None:
            raise StateError("the client has started: give it its device secret before start()")
        self._device_secret = secret

    @property
    def prefixes(self) -> tuple[str, ...] | None:
        """The key prefixes this client asked to receive (None: every key it may read).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h", prefixes=["shared/"]).prefixes
            ('shared/',)
        """
        return self._wanted

    def use_prefixes(self, prefixes: Iterable[str] | None) -> None:
        """Receive only the keys starting with one of ``prefixes`` (None: every key).

        Before the first connection it only sets what the hello carries; later
        the subscription changes on the open connection (or once online), in
        the background, as :meth:`subscribe` does. A replay position saved
        by an app covers the keys it was received under: change the prefixes
        of a resumed device through this call or :meth:`subscribe` once it
        connected, so that the keys newly in scope are sent from revision 0.

        Raises:
            ArgumentTypeError: ``prefixes`` is a ``str``, or holds a non-``str``.
            InvalidArgumentError: more than 64 prefixes, or one longer than
                200 characters.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> client.use_prefixes(["user/ada/", "shared/"])
            >>> client.prefixes
            ('user/ada/', 'shared/')
        """
        wanted = checked_prefixes(prefixes)
        self._wanted = wanted
        idle = self._subscriber is None or self._subscriber.done()
        if not self._said_hello:
            self._prefixes = wanted
        elif wanted != self._prefixes and not self._closed and idle:
            self._subscriber = asyncio.get_running_loop().create_task(self._subscribe_all())
            self._subscriber.add_done_callback(_log_failure)

    async def subscribe(self, prefixes: Iterable[str] | None) -> None:
        """Receive only the keys starting with one of ``prefixes``, now and after reconnects.

        Returns once the server has sent every key newly in scope (from
        revision 0: the device never had them) and confirmed; live pushes
        follow without gap or duplicate. What the device may read still
        bounds it. Waits until online; a drop meanwhile is retried after
        the reconnect.

        Raises:
            RequestRefusedError: the server refused the prefixes.
            ClosedError: the client was closed.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.transport import SyncRequest
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with SyncClient(Store({}, device_id=1), url) as writer:
            ...             await writer.wait_online()
            ...             await writer.send("a/x", 1, SyncRequest("a/x", 1, 1))
            ...             await writer.send("b/y", 2, SyncRequest("b/y", 1, 1))
            ...         async with SyncClient(Store({}, device_id=2), url, prefixes=[]) as reader:
            ...             reader.subscribe_pushes(lambda key, value, meta: print(key, value))
            ...             await reader.wait_online()
            ...             await reader.subscribe(["b/"])
            >>> asyncio.run(main())
            b/y 2
        """
        if self._closed:
            raise self._why_stopped()
        self.use_prefixes(prefixes)
        subscriber = self._subscriber
        if subscriber is None:
            return
        try:
            await asyncio.shield(subscriber)  # a caller cancelled leaves it running
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if subscriber.cancelled() and task is not None and not task.cancelling():
                raise self._why_stopped() from None  # close() stopped it, not our caller
            raise

    async def _subscribe_all(self) -> None:
        """Send a subscribe until the server has confirmed the prefixes wanted last."""
        while self._prefixes != self._wanted:
            await self._until_online()
            wanted = self._wanted
            # "" is every key: a subscribe cannot say None.
            prefixes = [""] if wanted is None else list(wanted)
            request_id = next(self._request_ids)
            try:
                await self._request(request_id, Subscribe(request_id, prefixes))
            except ClientConnectionError:
                continue  # the hello after reconnecting carries the confirmed ones
            self._prefixes = wanted

    def resume(self, cursor: int, generation: str, digest: str = "") -> None:
        """Start from a persisted position: the server replays what came after ``cursor``.

        Call it before :meth:`start` (``async with``); the position listeners
        hear of the change. ``digest`` is the saved :attr:`digest` of the
        push at ``cursor``: with it, the server also notices a database
        restored from a backup that has since been written past ``cursor``
        (without it, only one whose head is below ``cursor``).

        Raises:
            StateError: the client has started; its position is the server's now.
            InvalidArgumentError: a negative cursor.
            ArgumentTypeError: a cursor that is not an ``int``, or a generation
                or digest that is not a ``str``.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> unsubscribe = client.subscribe_position(lambda c, g: print("at", c, g))
            >>> client.resume(12, "g1")
            at 12 g1
        """
        if self._task is not None:
            raise StateError(
                "the client has started: call resume() (or set cursor/generation) "
                "before start() or `async with`, the server replays from that position"
            )
        if not isinstance(cursor, int) or isinstance(cursor, bool):
            raise ArgumentTypeError(f"the cursor must be an int, got {cursor!r}")
        if cursor < 0:
            raise InvalidArgumentError(f"the cursor must be 0 or more, got {cursor}")
        if not isinstance(generation, str):
            raise ArgumentTypeError(f"the generation must be a str, got {generation!r}")
        if not isinstance(digest, str):
            raise ArgumentTypeError(f"the digest must be a str, got {digest!r}")
        self._set_position(cursor, generation, digest)

    def subscribe_position(self, listener: Callable[[int, str], object]) -> Callable[[], None]:
        """Call ``listener(cursor, generation)`` whenever either changes; returns an unsubscribe.

        The cursor moves after a push was handled (applied, listeners told),
        so a position persisted from here never runs ahead of the state.
        :attr:`digest` changes with the cursor: save it in the same listener.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> unsubscribe = client.subscribe_position(lambda c, g: print(c, repr(g)))
            >>> client.cursor = 3
            3 ''
            >>> unsubscribe()
            >>> client.cursor = 4
        """
        return self._subscribe(self._position_listeners, listener, "a position listener")

    def subscribe_reset(self, listener: Callable[[], object]) -> Callable[[], None]:
        """Call ``listener()`` when the server says the cursor is from another database.

        The database is new, or restored from a backup: reload your state. By
        then :attr:`cursor` is 0 and :attr:`generation` the server's; the
        replay of everything follows. Returns an unsubscribe.

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> client = SyncClient(Store(0, device_id=1), "ws://h")
            >>> unsubscribe = client.subscribe_reset(lambda: print("reload"))
            >>> unsubscribe()
        """
        return self._subscribe(self._reset_listeners, listener, "a reset listener")

    @property
    def reset_by_compaction(self) -> bool:
        """Whether the server's latest reset came from compacting its tombstones.

        Then the replay starts at 0 and a key it does not mention was
        deleted; read it in a reset listener (:func:`optisync.fields.serve`
        does: it removes those items instead of writing them back).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://127.0.0.1:1").reset_by_compaction
            False
        """
        return self._reset_by_compaction

    def subscribe_pushes(self, listener: PushListener) -> Callable[[], None]:
        """Call ``listener(key, value, PushMetadata)`` for every push, replayed or live.

        Listeners run after ``apply_value`` (when given) and before the
        cursor moves past the push; one that raises leaves the cursor before
        the push and ends the connection, so that the next one replays it.
        A listener may return the :class:`~optisync.PushOutcome` of the push
        (a served field does): :class:`Traced` reports it. Returns an unsubscribe.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.transport import SyncRequest
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with SyncClient(Store({}, device_id=1), url) as client:
            ...             await client.wait_online()
            ...             client.subscribe_pushes(lambda key, value, meta: print(
            ...                 key, value, meta.server_revision, meta.device_id))
            ...             await client.send("theme", "dark", SyncRequest("theme", 1, 1))
            ...             await client.caught_up()
            >>> asyncio.run(main())
            theme dark 1 1
        """
        return self._subscribe(self._push_listeners, listener, "a push listener")

    @property
    def online(self) -> bool:
        """Whether the client is connected and caught up (its replay done).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h").online
            False
        """
        return self._online

    @property
    def last_error(self) -> Exception | None:
        """Why the client is not online: the last failed attempt or drop (None while online).

        Example:
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> SyncClient(Store(0, device_id=1), "ws://h").last_error is None
            True
        """
        return self._last_error

    def subscribe_status(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        """Call ``listener(online)`` on every change of :attr:`online`; returns an unsubscribe.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         client = SyncClient(Store({}, device_id=1), url)
            ...         client.subscribe_status(lambda online: print("online:", online))
            ...         async with client:
            ...             await client.wait_online()
            >>> asyncio.run(main())
            online: True
            online: False
        """
        return self._subscribe(self._status_listeners, listener, "a status listener")

    # A timeout argument (not only asyncio.timeout around the call): its error can
    # then say which server was not reached, and why.
    async def wait_online(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait until the client is connected and caught up (its replay done).

        Raises:
            ClientTimeoutError: not online within ``timeout`` seconds; the
                client keeps trying.
            ServerRefusedError: the server refused this client for good.
            ClientConnectionError: the client stopped (``reconnect=False``
                and the connection failed or dropped).
            ClosedError: the client was closed.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import ClientTimeoutError, SyncClient
            >>> async def main() -> None:
            ...     async with SyncClient(Store({}, device_id=1), "ws://127.0.0.1:9") as client:
            ...         try:
            ...             await client.wait_online(timeout=0.2)
            ...         except ClientTimeoutError as error:
            ...             print(error)
            >>> asyncio.run(main())  # doctest: +ELLIPSIS
            the server at ws://127.0.0.1:9 was not reached in 0.2 s (last error: ...
        """
        if self._online:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._until_online()
        except TimeoutError:
            if self._online or self._stopped:  # our timeout lost a race: answer the outcome
                await self._until_online()
                return
            error = self._last_error
            last = "no attempt has failed yet" if error is None else f"last error: {error!r}"
            raise ClientTimeoutError(
                f"the server at {self._url} was not reached in {timeout} s ({last}); "
                "the client keeps trying: check that the server runs at that URL, or wait longer"
            ) from error

    async def caught_up(self) -> None:
        """Wait until this device has everything the server had when it was called.

        Returns once every write sent before the call is acknowledged (or
        failed) and every change the server had committed by then has been
        received and handed to the listeners. Waits until online first. A
        write counts once its :meth:`send` has started (a sync whose task
        has not run yet has sent nothing).

        How: a ``get`` round trip. The server answers a connection's messages
        in order, on one queue that also carries its pushes, so once the
        answer arrives everything queued before it has arrived too. Across a
        drop, the replay after reconnecting does the same.

        Raises:
            ServerRefusedError: the server refused this client for good.
            ClientConnectionError: the client stopped (``reconnect=False``).
            ClosedError: the client was closed.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.transport import SyncRequest
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with (SyncClient(Store({}, device_id=1), url) as writer,
            ...                     SyncClient(Store({}, device_id=2), url) as reader):
            ...             await reader.wait_online()
            ...             await writer.send("n", 5, SyncRequest("n", 1, 1))
            ...             await reader.caught_up()
            ...             print(reader.cursor)
            >>> asyncio.run(main())
            1
        """
        while True:
            await self._until_online()
            try:
                await self.get(_PROBE_KEY)
            except RequestRefusedError:
                return  # an answer all the same: what came before it has arrived
            except ClientConnectionError:
                continue  # dropped: the replay after reconnecting catches up
            return

    async def _until_online(self) -> None:
        while not self._online:
            if self._stopped:
                raise self._why_stopped()
            await self._ready.wait()

    def _why_stopped(self) -> Exception:
        task = self._task
        if self._closed:
            return ClosedError("the client is closed: create a new SyncClient to connect again")
        if task is not None and task.done() and not task.cancelled() and task.exception():
            error = task.exception()
            assert isinstance(error, Exception)
            return error
        return ClientConnectionError(
            f"the client stopped (reconnect=False) after the connection to {self._url} "
            f"ended (last error: {self._last_error!r}): create a new SyncClient to connect again"
        )

    # -- life cycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background (``async with`` does it); again: no effect.

        Raises:
            ClosedError: the client was closed.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         client = SyncClient(Store({}, device_id=1), url)
            ...         client.start()
            ...         await client.wait_online()
            ...         print(client.online)
            ...         await client.close()
            >>> asyncio.run(main())
            True
        """
        if self._closed:
            raise ClosedError("the client is closed: create a new SyncClient to connect again")
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Disconnect for good, closing the socket; requests in flight fail with
        :class:`ClientConnectionError`.

        Raises:
            ServerRefusedError: the server had refused the connection for good.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         client = SyncClient(Store({}, device_id=1), url)
            ...         async with client:
            ...             await client.wait_online()
            ...         print(client.online)
            ...         try:
            ...             await client.wait_online()
            ...         except Exception as error:
            ...             print(type(error).__name__)
            >>> asyncio.run(main())
            False
            ClosedError
        """
        self._closed = True
        if self._subscriber is not None:
            self._subscriber.cancel()
        task = self._task
        if task is None:
            self._stopped = True
            self._ready.set()
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- requests ----------------------------------------------------------------------

    def sender(self, key: str) -> Callable[[Any, int, int, Callable[[int], None]], Awaitable[Any]]:
        """A ``send_value_to_server`` for ``key``, ready for the sync methods.

        It sends a ``set``, calls ``inform_server_revision`` with the ack's
        revision and returns the value the server holds. It raises
        :class:`ClientConnectionError` when offline or on a drop,
        :class:`RequestRefusedError` when the server refuses the write, and
        :class:`~optisync.InvalidArgumentError` for a device id that is not
        the store's.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with SyncClient(Store({}, device_id=1), url) as client:
            ...             await client.wait_online()
            ...             send = client.sender("like")
            ...             print(await send(True, 1, 1, lambda revision: print("rev", revision)))
            >>> asyncio.run(main())
            rev 1
            True
        """

        async def send_value_to_server(
            value: Any,
            local_revision: int,
            device_id: int,
            inform_server_revision: Callable[[int], None],
        ) -> Any:
            committed = await self._write(key, value, local_revision, device_id)
            inform_server_revision(committed.server_revision)
            return DELETED if committed.deleted is True else committed.value

        return send_value_to_server

    async def send(self, key: str, value: Any, request: SyncRequest) -> Ack[Any]:
        """Write ``value`` at wire ``key``; return the revision and value the server committed.

        ``value`` :data:`~optisync.DELETED` sends a ``delete``: the ack's value
        is then ``DELETED``.

        Raises:
            ClientConnectionError: offline, or the connection dropped meanwhile.
            RequestRefusedError: the server refused the write.
            InvalidArgumentError: ``request.device_id`` is not the store's.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> from optisync.transport import SyncRequest
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with SyncClient(Store({}, device_id=1), url) as client:
            ...             await client.wait_online()
            ...             print(await client.send("n", 5, SyncRequest("n", 1, 1)))
            >>> asyncio.run(main())
            Ack(server_revision=1, value=5)
        """
        committed = await self._write(key, value, request.local_revision, request.device_id)
        value = DELETED if committed.deleted is True else committed.value
        return Ack(committed.server_revision, value)

    async def get(self, key: str) -> tuple[Any, int]:
        """Read ``key`` from the server: its value and revision (``(None, -1)``: never written).

        A deleted key reads ``(DELETED, revision of its delete)``.

        Raises:
            ClientConnectionError: offline, or the connection dropped meanwhile.
            RequestRefusedError: the server refused the read.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.client import SyncClient
            >>> from optisync.server import SqliteStorage, SyncServer
            >>> async def main() -> None:
            ...     async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
            ...         async with SyncClient(Store({}, device_id=1), url) as client:
            ...             await client.wait_online()
            ...             print(await client.get("never-written"))
            >>> asyncio.run(main())
            (None, -1)
        """
        request_id = next(self._request_ids)
        answer = await self._request(request_id, Get(request_id, key))
        assert isinstance(answer, Value)
        return DELETED if answer.deleted is True else answer.value, answer.server_revision

    async def _write(self, key: str, value: Any, local_revision: int, device_id: int) -> Committed:
        if device_id != self._store.device_id:
            raise InvalidArgumentError(
                f"device_id {device_id} is not the store's ({self._store.device_id}): "
                "send the device id the store passed to send_value_to_server"
            )
        request_id = next(self._request_ids)
        message: Set | Delete = (
            Delete(request_id, key, local_revision, device_id)
            if value is DELETED
            else Set(request_id, key, value, local_revision, device_id)
        )
        answer = await self._request(request_id, message)
        assert isinstance(answer, Committed)
        return answer

    async def _request(
        self, request_id: int, message: Set | Delete | Get | Subscribe
    ) -> Committed | Value | Subscribed:
        connection = self._connection
        if connection is None or not self._online:
            raise ClientConnectionError(
                f"offline: the client is not connected to {self._url}; "
                "retry once online (see wait_online())"
            )
        answer = await self._request_on(connection, request_id, message)
        assert not isinstance(answer, Authed)  # only an auth is answered so
        return answer

    async def _request_on(
        self,
        connection: ClientConnection,
        request_id: int,
        message: Set | Delete | Get | Subscribe | Auth,
    ) -> Committed | Value | Subscribed | Authed:
        """Send ``message`` on ``connection``; its answer, or its error raised."""
        future: asyncio.Future[Committed | Value | Subscribed | Authed]
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await connection.send(encode(message), text=True)
            self._traced("sent", message)
            return await future
        except ConnectionClosed as error:
            raise _dropped() from error
        finally:
            self._pending.pop(request_id, None)

    # -- the connection ----------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._connect_and_serve()
        finally:
            self._drop()
            self._stopped = True
            self._ready.set()  # wakes wait_online(), which says why

    async def _connect_and_serve(self) -> None:
        delays: Iterator[float] | None = None
        refusals = 0
        while True:
            try:
                token = await self._token_now()
            except Exception as error:
                logger.exception("the token provider failed; retrying with backoff")
                self._failed(error)
                if not self._reconnect:
                    return
                delays = delays or backoff()
                await asyncio.sleep(next(delays))
                continue
            try:
                # A cancellation mid-handshake aborts the socket (websockets does).
                connection = await connect(self._url, max_size=_MAX_FRAME)
            except Exception as error:
                self._connection_failed(error)
                if not self._reconnect:
                    return
                delays = delays or backoff()
                await asyncio.sleep(next(delays))
                continue
            delays = None
            reached = await self._serve(connection, token)
            if not self._reconnect:
                return
            # Closed before its replay (the device id still held by a dead
            # connection, say): reconnecting at once would be refused again.
            refusals = 0 if reached else refusals + 1
            if refusals:
                await asyncio.sleep(min(0.05 * 2**refusals, 5.0))

    def _connection_failed(self, error: Exception) -> None:
        if process_exception(error) is not None:  # websockets' judgement: retrying won't help
            self._last_error = error
            raise ServerRefusedError(
                f"the server at {self._url} refused the connection: {error}; "
                "check the URL (its path, ws:// or wss://) and create a new client"
            ) from error
        self._failed(error)

    def _failed(self, error: Exception) -> None:
        """An attempt failed: keep the error, and log the first of an outage as a warning."""
        self._last_error = error
        if self._warned:
            logger.debug("still cannot reach %s: %s", self._url, error)
            return
        self._warned = True
        logger.warning(
            "cannot reach the server at %s: %s; retrying in the background "
            "(client.last_error holds the latest failure)",
            self._url,
            error,
        )

    async def _token_now(self) -> str | None:
        """The token for the next hello or refresh: the ``str``, or the provider's answer."""
        if self._token is None or isinstance(self._token, str):
            return self._token
        token = await self._token()
        if not isinstance(token, str):
            raise ArgumentTypeError(f"the token provider must return a str, got {token!r}")
        return token

    async def _serve(self, connection: ClientConnection, token: str | None) -> bool:
        """Run one connection's session; whether it got online. The socket is closed on
        every way out, cancellation included: a task cancelled at ``close()`` must not
        leave the server waiting for a close frame that never comes."""
        self._connection = connection
        push_failed = False
        try:
            await self._session(connection, token)
        except ConnectionClosed as error:
            self._last_error = error
        except _PushNotTakenError as error:
            self._last_error = error
            push_failed = True  # counted as a refused attempt: the retry backs off
        finally:
            reached = self._online and not push_failed
            self._stop_refreshing()
            self._drop()
            # A normal closure (1000) whatever the reason: ``async with connection``
            # would say 1011, "internal error", for a cancellation at close().
            await connection.close()
        return reached

    async def _session(self, connection: ClientConnection, token: str | None) -> None:
        hello = Hello(
            device_id=self._store.device_id,
            since=self._cursor,
            token=token,
            generation=self._generation,
            # Left out when unknown: a server from before digests refuses the field.
            digest=self._digest if self._digest and self._cursor else msgspec.UNSET,
            # Left out when there is none, for the same reason.
            device_secret=msgspec.UNSET if self._device_secret is None else self._device_secret,
            # Left out for every key, for the same reason.
            prefixes=msgspec.UNSET if self._prefixes is None else list(self._prefixes),
        )
        self._said_hello = True
        await connection.send(encode(hello), text=True)
        self._traced("sent", hello)
        async for frame in connection:
            try:
                message = decode_server(frame)
            except ProtocolError as error:
                logger.warning("ignored a malformed message from the server: %s", error)
                continue
            outcome = None
            try:
                outcome = self._handle(message)
            finally:
                self._traced("received", message, outcome)

    def _traced(
        self,
        direction: Literal["sent", "received"],
        message: ClientMessage | ServerMessage,
        outcome: PushOutcome | None = None,
    ) -> None:
        if self._trace is None:
            return
        try:
            self._trace(Traced(direction, message, outcome))
        except Exception:
            logger.exception("the trace callback failed")

    def _handle(self, message: ServerMessage) -> PushOutcome | None:
        if isinstance(message, Push):
            return self._push(message)
        if isinstance(message, Welcome):
            self._welcome(message)
        elif isinstance(message, Ready):
            self._last_error = None
            self._warned = False
            self._set_online(True)
        elif isinstance(message, Error) and message.request_id is None:
            self._unnumbered_error(message)
        elif (
            isinstance(message, Error)
            and message.request_id == self._auth_request_id
            and message.code not in _REFRESH_RETRIED
        ):
            self._refresh_refused(message)
        elif message.request_id is not None:
            future = self._pending.get(message.request_id)
            if future is not None and not future.done():
                if isinstance(message, Error):
                    future.set_exception(RequestRefusedError(message.code, message.message))
                else:
                    future.set_result(message)
        return None

    def _unnumbered_error(self, error: Error) -> None:
        if error.code == "token_expired":  # at hello, or the server's expiry timer
            raise ServerRefusedError(
                f"the server at {self._url} closed the connection: token_expired: "
                f"{error.message}; give the client a token provider that returns fresh "
                "tokens (token=async () -> str) and create a new client",
                error.code,
            )
        # The server answers a connection's requests in order: an error it could
        # not number (a frame it could not read its request id from, such as one
        # nested too deep) answers the oldest one waiting.
        waiting = [future for future in self._pending.values() if not future.done()]
        if self._online and waiting:
            waiting[0].set_exception(RequestRefusedError(error.code, error.message))
        elif error.code in _FATAL:
            fix = _FIXES.get(error.code, "fix the token (or the client's version)")
            raise ServerRefusedError(
                f"the server at {self._url} refused this client for good: "
                f"{error.code}: {error.message}; {fix} and create a new client",
                error.code,
            )
        elif not self._online:  # refused at hello (device_in_use): the client retries
            self._failed(
                ClientConnectionError(
                    f"the server refused the connection: {error.code}: {error.message}"
                )
            )
        else:
            logger.warning("server error: %s %s", error.code, error.message)

    def _welcome(self, welcome: Welcome) -> None:
        if not isinstance(welcome.expires_at, msgspec.UnsetType):
            self._refresh_before(welcome.expires_at)
        self._reset_by_compaction = welcome.reset and welcome.compacted is True
        if welcome.reset:
            self._set_position(0, welcome.generation, "")
            for listener in list(self._reset_listeners):
                self._call(listener, "a reset listener")
        else:
            self._set_position(self._cursor, welcome.generation, self._digest)

    def _push(self, push: Push) -> PushOutcome | None:
        metadata = PushMetadata(
            server_revision=push.server_revision,
            local_revision=push.local_revision,
            device_id=push.device_id,
        )
        outcome = None
        value = DELETED if push.deleted is True else push.value
        if self._apply_value is not None:
            outcome = self._apply_to_store(push, value, metadata, self._apply_value)
        for listener in list(self._push_listeners):
            try:
                taken = listener(push.key, value, metadata)
            except Exception as error:
                # Not taken (a store's on_change vetoed it, say): the cursor stays
                # before it, and the connection starts over so that the replay has it.
                logger.exception("a push listener failed; reconnecting to replay the push")
                raise _PushNotTakenError from error
            if isinstance(taken, PushOutcome):
                outcome = taken  # a served field's verdict, for the trace
        if push.server_revision >= self._cursor:
            self._set_position(push.server_revision, self._generation, entry_digest(push))
        return outcome

    def _apply_to_store(
        self,
        push: Push,
        value: Any,
        metadata: PushMetadata,
        apply_value: Callable[[S, str, Any, int], S],
    ) -> PushOutcome:
        key: Hashable = push.key
        return self._store.server_push(
            key=key,
            push_metadata=metadata,
            apply_server_push_to_state=lambda state, key, revision: apply_value(
                state, push.key, value, revision
            ),
            get_server_revision_from_state=lambda key: self._get_revision(push.key),
        )

    def _set_position(self, cursor: int, generation: str, digest: str) -> None:
        if (cursor, generation, digest) == (self._cursor, self._generation, self._digest):
            return
        self._cursor, self._generation, self._digest = cursor, generation, digest
        for listener in list(self._position_listeners):
            self._call(listener, "a position listener", cursor, generation)

    def _drop(self) -> None:
        self._connection = None
        self._set_online(False)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(_dropped())

    def _set_online(self, online: bool) -> None:
        if online == self._online:
            return
        self._online = online
        if online:
            self._ready.set()
        elif not self._stopped:
            self._ready.clear()
        for listener in list(self._status_listeners):
            self._call(listener, "a status listener", online)

    # -- listeners ---------------------------------------------------------------------

    @staticmethod
    def _subscribe(listeners: list[Any], listener: Any, what: str) -> Callable[[], None]:
        _check_callable(listener, what)
        listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):  # a second call does nothing
                listeners.remove(listener)

        return unsubscribe

    @staticmethod
    def _call(listener: Callable[..., object], what: str, *arguments: Any) -> None:
        try:
            listener(*arguments)
        except Exception:
            logger.exception("%s failed; the client goes on", what)

    # -- token refresh -------------------------------------------------------------------

    def _refresh_before(self, expires_at: float | None) -> None:
        """Send a fresh token before ``expires_at``, if a provider can make one."""
        self._stop_refreshing()
        connection = self._connection
        if expires_at is None or not callable(self._token) or connection is None:
            return
        self._refresher = asyncio.create_task(self._refresh(connection, expires_at))

    def _stop_refreshing(self) -> None:
        if self._refresher is not None and self._refresher is not asyncio.current_task():
            self._refresher.cancel()
        self._refresher = None

    async def _refresh(self, connection: ClientConnection, expires_at: float) -> None:
        """Wait until ``refresh_margin`` before ``expires_at``, then send ``auth`` until admitted.

        A refused token is handled as it arrives (:meth:`_refresh_refused`);
        an ``unavailable`` or ``rate_limited`` answer, or a provider that
        fails, is retried a little later, until the server closes at expiry.
        """
        remaining = expires_at - time.time()
        await asyncio.sleep(max(remaining - self._refresh_margin, remaining / 2, 0.0))
        while True:
            try:
                authed = await self._send_auth(connection)
            except (RequestRefusedError, ArgumentTypeError) as error:
                logger.warning("the token refresh failed (%s); retrying", error)
            except ClientConnectionError:  # the connection dropped
                return
            except Exception:
                logger.exception("the token provider failed; retrying the refresh")
            else:
                self._refresh_before(authed.expires_at)
                return
            remaining = expires_at - time.time()
            await asyncio.sleep(max(min(1.0, remaining / 4), 0.05))

    async def _send_auth(self, connection: ClientConnection) -> Authed:
        token = await self._token_now()
        assert token is not None  # only a provider refreshes
        request_id = next(self._request_ids)
        self._auth_request_id = request_id
        try:
            answer = await self._request_on(connection, request_id, Auth(request_id, token))
        finally:
            self._auth_request_id = None
        assert isinstance(answer, Authed)  # the server answers an auth so, or with an error
        return answer

    def _refresh_refused(self, error: Error) -> None:
        """The server refused the refreshed token for good: the client stops."""
        raise ServerRefusedError(
            f"the server at {self._url} refused the refreshed token: {error.code}: "
            f"{error.message}; the client stops: fix the token provider and create a new client",
            error.code,
        )


# A refresh answered with these is sent again a little later (RequestRefusedError).
_REFRESH_RETRIED: Final = ("unavailable", "rate_limited")


class _PushNotTakenError(Exception):
    """A push listener failed: this connection ends, and the next one replays the push."""


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("the subscription was not changed: %s", task.exception())


def _dropped() -> ClientConnectionError:
    return ClientConnectionError(
        "the connection dropped while the request was in flight: it may or may not "
        "have been committed; the replay after reconnecting tells"
    )
