"""The one contract between a store and a server: :class:`Transport`, and the key codec.

A transport carries a store's declared fields (``optisync.fields``) to a
server and the server's pushes back. :class:`optisync.client.SyncClient` (a
WebSocket connection to ``python -m optisync.server``) and
:class:`optisync.testing.DeviceLink` (a device on the simulator) are the two
that ship; the same store code runs over either.

What a transport does, as a :class:`typing.Protocol`:

* :meth:`~Transport.send` a value for a wire key with its :class:`SyncRequest`
  and get back an :class:`Ack` (the server's revision and the value it holds);
  the value :data:`DELETED` deletes the key (a tombstone), and a push, an
  ack or a get of a deleted key carries :data:`DELETED` as its value;
* :meth:`~Transport.get` a key's value and revision from the server;
* :meth:`~Transport.subscribe_pushes`: every push, replayed or live, as
  ``listener(wire_key, value, PushMetadata)``;
* :attr:`~Transport.online` and :meth:`~Transport.subscribe_status`;
* :meth:`~Transport.caught_up`: wait until every write made so far is
  acknowledged and the server's head at the time of the call has arrived.

Store keys and wire keys. A store key is a field's ``(name, item)`` (or a
single value's ``name``, or any plain ``str``); a wire key is a ``str``.
:func:`wire_key` and :func:`store_key` convert between them, reversibly and
without collisions:

* a ``str`` key is percent-encoded (``urllib.parse.quote`` with no safe
  characters): ``"theme"`` stays ``"theme"``, ``"a/b"`` becomes ``"a%2Fb"``;
* ``(name, item)`` with a ``str`` item is ``quote(name) + "/" + quote(item)``;
* ``(name, item)`` with an ``int`` item is ``quote(name) + "/#" + str(item)``
  (``quote`` never leaves a ``#``, so ``"#1"`` and ``1`` stay apart).

Only ``str`` and ``int`` items are allowed (not ``bool``, which would equal
``0``/``1`` as a dict key, nor floats, tuples or ``None``):
:class:`~optisync.InvalidArgumentError` says so at the first sync of such
an item. The server limits a wire key to 200 characters, so keep names and
items short (a percent-escaped character takes three).

Example:
    >>> from optisync.transport import store_key, wire_key
    >>> wire_key(("done", "buy milk/eggs")), wire_key(("done", 7)), wire_key("theme")
    ('done/buy%20milk%2Feggs', 'done/#7', 'theme')
    >>> store_key("done/buy%20milk%2Feggs"), store_key("done/#7"), store_key("theme")
    (('done', 'buy milk/eggs'), ('done', 7), 'theme')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final, Generic, Protocol, TypeAlias, TypeVar, final, runtime_checkable
from urllib.parse import quote, unquote

import attrs

from optisync.errors import ArgumentTypeError, InvalidArgumentError
from optisync.revisions import PushMetadata

__all__ = [
    "DELETED",
    "Ack",
    "Deleted",
    "ProvesDevice",
    "ReportsCompaction",
    "Resumable",
    "SubscribesByPrefix",
    "SyncRequest",
    "Transport",
    "checked_prefixes",
    "store_key",
    "wire_key",
]

T = TypeVar("T")

# The server's bounds on a subscription: optisync.wire.MAX_PREFIXES and
# MAX_KEY_CHARS (not imported: the wire needs msgspec, the core does not).
_MAX_PREFIXES = 64
_MAX_PREFIX_CHARS = 200


@final
class Deleted:
    """The type of :data:`DELETED`, the value of a deleted key; it has that one instance.

    Falsy, equal only to itself, and the same object after ``copy``,
    ``deepcopy`` and ``pickle``.

    Example:
        >>> import pickle
        >>> from optisync.transport import DELETED, Deleted
        >>> Deleted() is DELETED, pickle.loads(pickle.dumps(DELETED)) is DELETED, bool(DELETED)
        (True, True, False)
    """

    __slots__ = ()
    _instance: Deleted | None = None

    def __new__(cls) -> Deleted:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DELETED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "DELETED"  # pickled by name: unpickling gives this module's one instance

    def __copy__(self) -> Deleted:
        return self

    def __deepcopy__(self, memo: object) -> Deleted:
        return self


DELETED: Final = Deleted()
"""The value of a deleted key: what travels where a value does when a key is deleted.

``transport.send(key, DELETED, request)`` deletes ``key`` on the server (a
tombstone, ordered against the key's sets by last write wins); a push, an
ack or a get of a deleted key has the value ``DELETED``. Declared fields
(``optisync.fields``) turn it into the removal of an item from the state
(``remove=``); it is never meant to be stored in a state. Falsy, so that
``if store.done[item]:`` reads a deleted item as not done.

Example:
    >>> import optisync
    >>> from optisync.transport import DELETED
    >>> optisync.DELETED is DELETED, DELETED, bool(DELETED)
    (True, DELETED, False)
"""


@attrs.frozen
class SyncRequest:
    """What a push-aware sender passes to the server along with the value.

    Attributes:
        key: the store key being synced, e.g. ``("liked", "post-1")``.
        local_revision: the local revision of this change; send it.
        device_id: this store's device id; send it.

    Example:
        >>> from optisync.transport import SyncRequest
        >>> SyncRequest(("liked", "p"), local_revision=3, device_id=9).local_revision
        3
    """

    key: Hashable
    local_revision: int
    device_id: int


@attrs.frozen
class Ack(Generic[T]):
    """The server's answer to a write: the revision it committed at, and the value it holds.

    A transport's :meth:`~Transport.send` returns one. A field's own sender
    returns either the bare revision (an ``int``: the server stored the value
    as sent) or an ``Ack`` (it stored ``value``, say normalised); that value
    is applied to the state once the key is stable.

    Example:
        >>> from optisync.transport import Ack
        >>> Ack(server_revision=4, value="Dark").value
        'Dark'
    """

    server_revision: int
    value: T


PushListener: TypeAlias = Callable[[str, Any, PushMetadata], object]
"""``listener(wire_key, value, metadata)``: what :meth:`Transport.subscribe_pushes` calls."""


@runtime_checkable
class Transport(Protocol):
    """A connection from one device to a server, as declared fields use it.

    ``SyncClient`` and the simulator's ``DeviceLink`` implement it; so can
    your own (an HTTP API with server-sent events, say). A transport raises
    a ``ConnectionError`` (:class:`~optisync.TransportError`) when the
    server cannot be reached or the connection drops during a request, so
    that an :class:`~optisync.outbox.Outbox` keeps the change and retries;
    any other error is a refusal.

    Example:
        >>> from optisync.transport import Transport
        >>> from optisync import testing
        >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
        >>> isinstance(link, Transport)
        True
    """

    @property
    def device_id(self) -> int:
        """The device id the server knows this connection by (the store's).

        Example:
            :func:`optisync.fields.serve` checks it::

                assert transport.device_id == store.device_id
        """
        ...

    async def send(self, key: str, value: Any, request: SyncRequest) -> Ack[Any]:
        """Write ``value`` at wire ``key``; return once the server has committed it.

        ``value`` :data:`DELETED` deletes the key; the ``Ack``'s value is
        :data:`DELETED` when the server holds a tombstone for it.

        Example:
            What a served field's sync sends::

                ack = await transport.send("done/milk", True, request)
                ack.server_revision, ack.value  # (12, True)
        """
        ...

    async def get(self, key: str) -> tuple[Any, int]:
        """The server's value of wire ``key`` and its revision; ``(None, -1)``: never written.

        A deleted key answers ``(DELETED, revision of the delete)``.

        Example:
            What a served field reloads after a refused write::

                value, revision = await transport.get("done/milk")
        """
        ...

    def subscribe_pushes(self, listener: PushListener) -> Callable[[], None]:
        """Call ``listener(wire_key, value, metadata)`` for every push; returns an unsubscribe.

        The push of a delete has the value :data:`DELETED`.

        Replayed pushes (after a reconnect) are delivered the same way.

        Example:
            What :func:`optisync.fields.serve` subscribes::

                stop = transport.subscribe_pushes(lambda key, value, metadata: ...)
        """
        ...

    @property
    def online(self) -> bool:
        """Whether requests can be sent now (connected, and the replay received).

        Example:
            An "offline" badge::

                badge.visible = not transport.online
        """
        ...

    def subscribe_status(self, listener: Callable[[bool], object]) -> Callable[[], None]:
        """Call ``listener(online)`` on every change of :attr:`online`; returns an unsubscribe.

        Example:
            What an :class:`~optisync.outbox.Outbox` of a served store follows::

                stop = transport.subscribe_status(outbox.set_reachable)
        """
        ...

    async def caught_up(self) -> None:
        """Wait until every write is acknowledged and the server's head has arrived.

        "The server's head" is its newest revision at the time of the call:
        once this returns, the store shows every change committed before it.

        Example:
            A test, or a "synced" indicator::

                await transport.caught_up()
        """
        ...


@runtime_checkable
class ProvesDevice(Protocol):
    """A transport that proves its device id with a secret the device keeps (``SyncClient`` is one).

    :class:`optisync.persistence.Persistence` keeps a secret beside the
    device id, made with it, and hands it over when the transport serves the
    store, before it connects: a restarted device proves the same id.

    Example:
        >>> from optisync import Store
        >>> from optisync.client import SyncClient
        >>> from optisync.transport import ProvesDevice
        >>> isinstance(SyncClient(Store(0, device_id=1), "ws://127.0.0.1:1"), ProvesDevice)
        True
    """

    def use_device_secret(self, secret: str) -> None:
        """Send ``secret`` in every hello from now on (before the transport starts).

        Example:
            Called by :class:`~optisync.persistence.Persistence`::

                transport.use_device_secret(saved.device_secret)
        """
        ...


@runtime_checkable
class Resumable(Protocol):
    """A transport that resumes from a replay position an app saves (``SyncClient`` is one).

    :class:`optisync.persistence.Persistence` saves the position with the
    state it covers, and restores it before the transport starts.

    Example:
        >>> from optisync import Store
        >>> from optisync.client import SyncClient
        >>> from optisync.transport import Resumable
        >>> isinstance(SyncClient(Store(0, device_id=1), "ws://127.0.0.1:1"), Resumable)
        True
    """

    @property
    def cursor(self) -> int:
        """The newest server revision received: the server replays what came after it.

        Example:
            Saved by :class:`~optisync.persistence.Persistence`::

                snapshot = attrs.evolve(snapshot, cursor=transport.cursor)
        """
        ...

    @property
    def generation(self) -> str:
        """The server generation (its database) the cursor belongs to; ``""``: none yet.

        Example:
            Saved beside the cursor::

                saved = (transport.cursor, transport.generation)
        """
        ...

    @property
    def digest(self) -> str:
        """The digest of the entry at the cursor (``""``: unknown), saved beside it.

        With it, the server recognises a database restored from a backup
        even once that database has been written past the cursor. (Added
        after ``cursor`` and ``generation``: a transport without it is not
        ``Resumable`` and its position is not saved.)

        Example:
            Saved with the cursor::

                saved = (transport.cursor, transport.generation, transport.digest)
        """
        ...

    def resume(self, cursor: int, generation: str, digest: str = "") -> None:
        """Start from a saved position; call it before the transport starts.

        Example:
            What :meth:`Persistence.attach <optisync.persistence.Persistence.attach>` does::

                transport.resume(snapshot.cursor, snapshot.generation, snapshot.digest)
        """
        ...

    def subscribe_position(self, listener: Callable[[int, str], object]) -> Callable[[], None]:
        """Call ``listener(cursor, generation)`` whenever either changes; returns an unsubscribe.

        The :attr:`digest` changes with the cursor.

        Example:
            A saver::

                stop = transport.subscribe_position(lambda cursor, generation: save())
        """
        ...

    def subscribe_reset(self, listener: Callable[[], object]) -> Callable[[], None]:
        """Call ``listener()`` when the server says the position is from another database.

        Example:
            Forget what the old database said::

                stop = transport.subscribe_reset(lambda: print("server replaced"))
        """
        ...


@runtime_checkable
class ReportsCompaction(Protocol):
    """A transport that says why the server reset its position (``SyncClient`` is one).

    A server that compacts its tombstones resets a device whose position is
    older than them: the replay then starts at 0 and a key it does not
    mention was deleted. :func:`optisync.fields.serve` reads this when the
    reset comes, and removes such items instead of writing them back (what
    it does after a reset for a database restored from a backup).

    Example:
        >>> from optisync import Store
        >>> from optisync.client import SyncClient
        >>> from optisync.transport import ReportsCompaction
        >>> client = SyncClient(Store(0, device_id=1), "ws://127.0.0.1:1")
        >>> isinstance(client, ReportsCompaction), client.reset_by_compaction
        (True, False)
    """

    @property
    def reset_by_compaction(self) -> bool:
        """Whether the latest reset came from the server's compaction (read it in a reset listener).

        Example:
            In a reset listener::

                drop_unheard = transport.reset_by_compaction
        """
        ...


@runtime_checkable
class SubscribesByPrefix(Protocol):
    """A transport that delivers only the keys under some prefixes (partial sync).

    ``SyncClient`` and the simulator's ``DeviceLink`` are such transports:
    :func:`optisync.fields.serve` subscribes a store whose every field is
    bound to a scope to the union of their scopes. A prefix matches as a
    plain string prefix of a wire key; what the server lets the device read
    still bounds what arrives.

    Example:
        >>> from optisync import testing
        >>> from optisync.transport import SubscribesByPrefix
        >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
        >>> isinstance(link, SubscribesByPrefix)
        True
    """

    def use_prefixes(self, prefixes: Iterable[str] | None) -> None:
        """Receive only the keys starting with one of ``prefixes`` (None: every key).

        Before the transport connects, what it connects with; later, the
        subscription changes in the background, keys newly in scope arriving
        from revision 0.

        Example:
            What :func:`optisync.fields.serve` calls for scoped fields::

                transport.use_prefixes(["shared/", "user/ada/"])
        """
        ...

    async def subscribe(self, prefixes: Iterable[str] | None) -> None:
        """As :meth:`use_prefixes`, and wait until the keys newly in scope have arrived.

        Example:
            Open a second document on the same connection::

                await transport.subscribe([*transport_prefixes, "doc/42/"])
        """
        ...


def checked_prefixes(prefixes: Iterable[str] | None) -> tuple[str, ...] | None:
    """``prefixes`` as a tuple without repeats, checked against the server's bounds.

    At most 64 prefixes (``optisync.wire.MAX_PREFIXES``), each at most 200
    characters (``MAX_KEY_CHARS``). None (every key) stays None.

    Raises:
        ArgumentTypeError: ``prefixes`` is one ``str``, or holds a non-``str``.
        InvalidArgumentError: too many prefixes, or one too long.

    Example:
        >>> from optisync.transport import checked_prefixes
        >>> checked_prefixes(["a/", "b/", "a/"])
        ('a/', 'b/')
        >>> checked_prefixes("a/")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optisync.errors.ArgumentTypeError: prefixes must be a list of str, not one str: ...
    """
    if prefixes is None:
        return None
    if isinstance(prefixes, str):
        raise ArgumentTypeError(f"prefixes must be a list of str, not one str: [{prefixes!r}]")
    checked = tuple(dict.fromkeys(prefixes))
    for prefix in checked:
        if not isinstance(prefix, str):
            raise ArgumentTypeError(f"a key prefix must be a str, got {prefix!r}")
        if len(prefix) > _MAX_PREFIX_CHARS:
            raise InvalidArgumentError(
                f"a key prefix holds at most {_MAX_PREFIX_CHARS} characters, got {len(prefix)}"
            )
    if len(checked) > _MAX_PREFIXES:
        raise InvalidArgumentError(
            f"a device subscribes to at most {_MAX_PREFIXES} prefixes, got {len(checked)}: "
            "use shorter prefixes that cover several"
        )
    return checked


# -- the key codec ---------------------------------------------------------------


_INT = re.compile(r"-?[0-9]+")


def _quote(text: str) -> str:
    return quote(text, safe="")


def wire_key(key: Hashable) -> str:
    """The wire key of a store key (see the module's text for the encoding).

    Raises:
        InvalidArgumentError: an item that is not a ``str`` or an ``int``, or an
            empty name.
        ArgumentTypeError: a key that is neither a ``str`` nor a ``(name, item)`` pair.

    Example:
        >>> from optisync.transport import wire_key
        >>> wire_key(("title", "a#b")), wire_key(("title", -3))
        ('title/a%23b', 'title/#-3')
        >>> wire_key(("done", 1.5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        optisync.errors.InvalidArgumentError: the item 1.5 of 'done' cannot be sent: ...
    """
    if isinstance(key, str):
        if not key:
            raise InvalidArgumentError("an empty key cannot be sent")
        return _quote(key)
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        raise ArgumentTypeError(f"a key to send must be a str or a (name, item) pair, got {key!r}")
    name, item = key
    if not name:
        raise InvalidArgumentError(f"the key {key!r} has an empty name")
    if isinstance(item, str):
        return f"{_quote(name)}/{_quote(item)}"
    if isinstance(item, int) and not isinstance(item, bool):
        return f"{_quote(name)}/#{item}"
    raise InvalidArgumentError(
        f"the item {item!r} of {name!r} cannot be sent: item ids must be str or int, "
        f"got {type(item).__name__}"
    )


def store_key(wire: str) -> Hashable:
    """The store key of a wire key: the inverse of :func:`wire_key`.

    Raises:
        InvalidArgumentError: ``wire`` is not the output of :func:`wire_key`.

    Example:
        >>> from optisync.transport import store_key
        >>> store_key("title/a%23b"), store_key("a%2Fb")
        (('title', 'a#b'), 'a/b')
    """
    name, slash, item = wire.partition("/")
    try:
        if not slash:
            key: Hashable = unquote(name, errors="strict")
        elif item.startswith("#") and _INT.fullmatch(item[1:]):
            key = (unquote(name, errors="strict"), int(item[1:]))
        else:
            key = (unquote(name, errors="strict"), unquote(item, errors="strict"))
        canonical = wire_key(key)
    except (UnicodeDecodeError, InvalidArgumentError):
        canonical = None
    if canonical != wire:  # another spelling of a key would be a second name for it
        raise InvalidArgumentError(f"{wire!r} is not a wire key optisync made")
    return key
