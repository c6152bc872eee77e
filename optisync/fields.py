"""Declared synced fields: say once how a value is read, written and sent; get the rest.

The low-level calls (``optimistic_sync_with_push``, ``server_push``,
``optimistic_sync``) take eight callbacks per action. Most of them follow from
three facts about the value: how to read it from the state, how to write it
into the state, and how to send it. Declare those once on the store class, and
the field derives ``value_to_apply``, the getters, the server-revision
storage, response handling and the push handler:

* :class:`SyncedMapWithPush` / :class:`SyncedValueWithPush`: a collection keyed
  by item id (``liked`` per post), or one value (a setting), synced with a
  server that pushes (``optimistic_sync_with_push`` and ``server_push``);
* :class:`SyncedMap` / :class:`SyncedValue`: the same for a server that does
  not push (``optimistic_sync``).

On an instance, a field is a bound object: ``store.liked[item]`` reads,
``store.liked.set(item, value)`` changes and syncs, ``store.liked.push(item,
value, metadata)`` applies a push. The key of item ``i`` of field ``liked``
is ``("liked", i)``; the key of a single value is the field's name.

Server revisions are kept by the field, per key, not in your state: after any
request or push, ``field.server_revision(item)`` and the store's
``server_revision(key)`` agree, and ``optisync.persistence`` saves them.

Example:
    >>> import asyncio, attrs
    >>> from optisync import Store
    >>> from optisync.fields import SyncRequest, SyncedValueWithPush
    >>> class Settings(Store[str]):
    ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, theme: theme)
    ...
    ...     @theme.sender
    ...     async def send_theme(self, theme: str, request: SyncRequest) -> int:
    ...         return 7  # the server's revision after the write
    >>> async def main() -> None:
    ...     async with Settings("light") as settings:
    ...         await settings.theme.set("dark")
    ...         print(settings.state, settings.theme.server_revision())
    >>> asyncio.run(main())
    dark 7
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, Self, TypeVar, overload

import attrs

from optisync.errors import StateError
from optisync.revisions import PushMetadata, PushOutcome
from optisync.store import latest_change_is_push

if TYPE_CHECKING:
    from optisync.store import Store

__all__ = [
    "Ack",
    "BoundMap",
    "BoundMapWithPush",
    "BoundValue",
    "BoundValueWithPush",
    "SyncRequest",
    "SyncedMap",
    "SyncedMapWithPush",
    "SyncedValue",
    "SyncedValueWithPush",
    "declared_fields",
]

S = TypeVar("S")
I = TypeVar("I", bound=Hashable)  # noqa: E741 - the item id, as in dict[I, T]
T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - the store class a sender is a method of
R = TypeVar("R")
B = TypeVar("B")  # the class of a field bound to a store


@attrs.frozen
class SyncRequest:
    """What a push-aware sender passes to the server along with the value.

    Attributes:
        key: the key being synced, e.g. ``("liked", "post-1")``.
        local_revision: the local revision of this change; send it.
        device_id: this store's device id; send it.

    Example:
        >>> from optisync.fields import SyncRequest
        >>> SyncRequest(("liked", "p"), local_revision=3, device_id=9).local_revision
        3
    """

    key: Hashable
    local_revision: int
    device_id: int


@attrs.frozen
class Ack(Generic[T]):
    """A sender's answer when the server changed the value it stored (say, normalised it).

    A sender returns the server's revision (an ``int``) when the server
    stored the value as sent, or an ``Ack`` with the revision and the value it
    stored; that value is applied to the state once the key is stable.

    Example:
        >>> from optisync.fields import Ack
        >>> Ack(server_revision=4, value="Dark").value
        'Dark'
    """

    server_revision: int
    value: T


class _Retrier(Protocol):
    """What ``optisync.outbox`` plugs into a store: retries while unreachable."""

    def deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> Awaitable[R]: ...


# -- the fields, as declared on the class ------------------------------------------


class _Field(Generic[S, I, T, B]):
    """What every declared field shares: its name, its lenses, its bound objects (``B``)."""

    _bound_class: Callable[[Any, Any], Any]  # set below, once the bound classes exist
    _single = False  # one value (key: the name), not a collection (key: (name, item))

    def __init__(
        self,
        get: Callable[[S, I], T],
        set: Callable[[S, I, T], S],  # noqa: A002 - reads best at the call site
        max_follow_up_requests: int,
    ) -> None:
        if not callable(get) or not callable(set):
            raise TypeError("a synced field needs callable get= and set= functions")
        self.get = get
        self.set = set
        self.max_follow_up_requests = max_follow_up_requests
        self.name = ""
        self._send: Callable[..., Awaitable[Any]] | None = None
        self._reload: Callable[[Any, I], Awaitable[T]] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def _key(self, item: I) -> Hashable:
        return (self.name, item)

    @overload
    def __get__(self, store: None, owner: type) -> Self: ...
    @overload
    def __get__(self, store: Store[S], owner: type) -> B: ...
    def __get__(self, store: Store[S] | None, owner: type) -> Self | B:
        if store is None:
            return self
        return self._bind(store)

    def _bind(self, store: Store[S]) -> B:
        if not self.name:
            raise StateError("a synced field must be assigned to a name in a Store class body")
        bound: B = self._bound_class(self, store)
        # Like functools.cached_property: the bound object replaces the lookup
        # from now on, under the field's own name (no other name is used).
        vars(store)[self.name] = bound
        return bound


def _lift_get(get: Callable[[S], T]) -> Callable[[S, None], T]:
    return lambda state, item: get(state)


def _lift_set(put: Callable[[S, T], S]) -> Callable[[S, None, T], S]:
    return lambda state, item, value: put(state, value)


class _MapField(_Field[S, I, T, B]):
    """A declared collection: ``get`` and ``set`` take the item id."""

    def __init__(
        self,
        get: Callable[[S, I], T],
        set: Callable[[S, I, T], S],  # noqa: A002
        *,
        max_follow_up_requests: int = 10_000,
    ) -> None:
        super().__init__(get, set, max_follow_up_requests)

    def reloader(self, fn: Callable[[O, I], Awaitable[T]]) -> Callable[[O, I], Awaitable[T]]:
        """Declare how to fetch the server's value of an item after a failed sync.

        Decorates an ``async def`` method ``(self, item) -> value``. When a
        sync of the field fails for good (``on_finish`` gets an error), the
        value it returns is written into the state: the screen shows the
        truth instead of the failed guess.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, todo: s[todo], lambda s, todo, d: {**s, todo: d})
            ...
            ...     @done.reloader
            ...     async def fetch_done(self, todo: str) -> bool:
            ...         return False
        """
        self._reload = fn
        return fn


class _ValueField(_Field[S, None, T, B]):
    """A declared single value: its key is its name."""

    _single = True

    def __init__(
        self,
        get: Callable[[S], T],
        set: Callable[[S, T], S],  # noqa: A002
        *,
        max_follow_up_requests: int = 10_000,
    ) -> None:
        super().__init__(_lift_get(get), _lift_set(set), max_follow_up_requests)

    def _key(self, item: None) -> Hashable:
        return self.name

    def reloader(self, fn: Callable[[O], Awaitable[T]]) -> Callable[[O], Awaitable[T]]:
        """Declare how to fetch the server's value after a failed sync: ``async (self) -> value``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            ...
            ...     @name.reloader
            ...     async def fetch_name(self) -> str:
            ...         return "Ada"
        """
        self._reload = lambda store, item: fn(store)
        return fn


class SyncedMapWithPush(_MapField[S, I, T, "BoundMapWithPush[S, I, T]"]):
    """A collection of values keyed by item id, synced with a server that pushes.

    Declare it in the store's class body with the state type, the item id
    type and the value type, then give it a sender with :meth:`sender`:

    Args:
        get: ``(state, item) -> value``.
        set: ``(state, item, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync_with_push``.

    On an instance it is a :class:`BoundMapWithPush`.

    Example:
        >>> import asyncio
        >>> from optisync import PushMetadata, Store
        >>> from optisync.fields import SyncRequest, SyncedMapWithPush
        >>> Likes = dict[str, bool]
        >>> class ItemStore(Store[Likes]):
        ...     liked = SyncedMapWithPush[Likes, str, bool](
        ...         lambda s, item: s.get(item, False), lambda s, item, v: {**s, item: v})
        ...
        ...     @liked.sender
        ...     async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int:
        ...         return 10 + request.local_revision  # the server's revision
        >>> async def main() -> None:
        ...     async with ItemStore({}, device_id=1) as store:
        ...         await store.liked.set("post", True)
        ...         other = PushMetadata(server_revision=20, local_revision=1, device_id=2)
        ...         print(store.liked.push("photo", True, other).name, store.state)
        ...         key = store.liked.key("post")
        ...         print(store.liked.server_revision("post"), store.server_revision(key))
        >>> asyncio.run(main())
        APPLIED {'post': True, 'photo': True}
        11 11
    """

    def sender(
        self, fn: Callable[[O, I, T, SyncRequest], Awaitable[int | Ack[T]]]
    ) -> Callable[[O, I, T, SyncRequest], Awaitable[int | Ack[T]]]:
        """Declare how an item's value is sent: an ``async def`` method of the store.

        It is called as ``self.method(item, value, request)`` with a
        :class:`SyncRequest`, and returns the server's revision after the
        write (or an :class:`Ack`). Raising fails the request; a
        ``ConnectionError`` is retried instead when the store has an
        :class:`~optisync.outbox.Outbox`.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncRequest, SyncedMapWithPush
            >>> class Stars(Store[dict[int, int]]):
            ...     stars = SyncedMapWithPush[dict[int, int], int, int](
            ...         lambda s, i: s.get(i, 0), lambda s, i, n: {**s, i: n})
            ...
            ...     @stars.sender
            ...     async def send_stars(self, item: int, n: int, request: SyncRequest) -> int:
            ...         return 1
        """
        self._send = fn
        return fn


class SyncedMap(_MapField[S, I, T, "BoundMap[S, I, T]"]):
    """A collection of values keyed by item id, synced with a server that does not push.

    The same as :class:`SyncedMapWithPush`, over ``optimistic_sync``: no
    revisions, and a follow-up is sent when the value in the state differs
    from the value sent. Its sender is ``async (self, item, value) -> the
    server's value, or None``; a non-None answer is applied once stable.

    Args:
        get: ``(state, item) -> value``.
        set: ``(state, item, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync``.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.fields import SyncedMap
        >>> class Todos(Store[dict[str, bool]]):
        ...     done = SyncedMap[dict[str, bool], str, bool](
        ...         lambda s, todo: s[todo], lambda s, todo, d: {**s, todo: d})
        ...
        ...     @done.sender
        ...     async def send_done(self, todo: str, done: bool) -> bool:
        ...         return done
        >>> async def main() -> None:
        ...     async with Todos({"milk": False}) as todos:
        ...         await todos.done.set("milk", not todos.done["milk"])
        ...         print(todos.state)
        >>> asyncio.run(main())
        {'milk': True}
    """

    def sender(
        self, fn: Callable[[O, I, T], Awaitable[T | None]]
    ) -> Callable[[O, I, T], Awaitable[T | None]]:
        """Declare how an item's value is sent: ``async (self, item, value) -> value or None``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            ...
            ...     @on.sender
            ...     async def send_on(self, flag: str, on: bool) -> None:
            ...         return None
        """
        self._send = fn
        return fn


class SyncedValueWithPush(_ValueField[S, T, "BoundValueWithPush[S, T]"]):
    """One value (a setting), synced with a server that pushes. Its key is its name.

    Args:
        get: ``state -> value``.
        set: ``(state, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync_with_push``.

    Its sender is ``async (self, value, request) -> server revision or Ack``.
    On an instance it is a :class:`BoundValueWithPush`.

    Example:
        >>> import asyncio
        >>> from optisync import PushMetadata, Store
        >>> from optisync.fields import SyncRequest, SyncedValueWithPush
        >>> class Volume(Store[int]):
        ...     level = SyncedValueWithPush[int, int](lambda s: s, lambda s, v: v)
        ...
        ...     @level.sender
        ...     async def send_level(self, level: int, request: SyncRequest) -> int:
        ...         return 1
        >>> async def main() -> None:
        ...     async with Volume(3, device_id=1) as volume:
        ...         meta = PushMetadata(server_revision=2, local_revision=1, device_id=2)
        ...         print(volume.level.push(8, meta).name, volume.level.value)
        >>> asyncio.run(main())
        APPLIED 8
    """

    def sender(
        self, fn: Callable[[O, T, SyncRequest], Awaitable[int | Ack[T]]]
    ) -> Callable[[O, T, SyncRequest], Awaitable[int | Ack[T]]]:
        """Declare how the value is sent: ``async (self, value, request) -> revision or Ack``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncRequest, SyncedValueWithPush
            >>> class Theme(Store[str]):
            ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
            ...
            ...     @theme.sender
            ...     async def send_theme(self, theme: str, request: SyncRequest) -> int:
            ...         return 1
        """
        self._send = lambda store, item, value, request: fn(store, value, request)
        return fn


class SyncedValue(_ValueField[S, T, "BoundValue[S, T]"]):
    """One value, synced with a server that does not push (``optimistic_sync``).

    Args:
        get: ``state -> value``.
        set: ``(state, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync``.

    Its sender is ``async (self, value) -> the server's value, or None``.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.fields import SyncedValue
        >>> class Name(Store[str]):
        ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
        ...
        ...     @name.sender
        ...     async def send_name(self, name: str) -> str:
        ...         return name.strip()  # the server trims it
        >>> async def main() -> None:
        ...     async with Name("") as store:
        ...         await store.name.set(" Ada ")
        ...         print(repr(store.state))
        >>> asyncio.run(main())
        'Ada'
    """

    def sender(
        self, fn: Callable[[O, T], Awaitable[T | None]]
    ) -> Callable[[O, T], Awaitable[T | None]]:
        """Declare how the value is sent: ``async (self, value) -> value or None``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Mode(Store[str]):
            ...     mode = SyncedValue[str, str](lambda s: s, lambda s, m: m)
            ...
            ...     @mode.sender
            ...     async def send_mode(self, mode: str) -> None:
            ...         return None
        """
        self._send = lambda store, item, value: fn(store, value)
        return fn


def declared_fields(store_class: type) -> dict[str, _Field[Any, Any, Any, Any]]:
    """The synced fields declared on a store class (and its bases), by name.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedValue, declared_fields
        >>> class Name(Store[str]):
        ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
        >>> list(declared_fields(Name))
        ['name']
    """
    found: dict[str, _Field[Any, Any, Any, Any]] = {}
    for cls in reversed(store_class.__mro__):
        for name, value in vars(cls).items():
            if isinstance(value, _Field):
                found[name] = value
            else:
                found.pop(name, None)  # a subclass replaced it
    return found


# -- the fields, bound to a store ---------------------------------------------------


class _Bound(Generic[S, I, T]):
    """A field on one store: its keys, its sync calls, and its server revisions."""

    def __init__(self, field: _Field[S, I, T, Any], store: Store[S]) -> None:
        self._field = field
        self._store = store
        self._items: dict[Hashable, I] = {}  # every key this field synced: key -> item
        self._revisions: dict[Hashable, int] = {}
        self._retrier: _Retrier | None = None

    # reading

    def _get(self, item: I) -> T:
        return self._field.get(self._store.state, item)

    def _send_fn(self) -> Callable[..., Awaitable[Any]]:
        send = self._field._send
        if send is None:
            raise StateError(
                f"the synced field {self._field.name!r} has no sender: "
                f"decorate an async method with @{self._field.name}.sender"
            )
        return send

    def _on_finish(self, item: I) -> Callable[[Exception | None], Awaitable[S | None]] | None:
        reload = self._field._reload
        if reload is None:
            return None
        field, store = self._field, self._store

        async def reload_on_error(error: Exception | None) -> S | None:
            if error is None:
                return None
            value = await reload(store, item)
            return field.set(store.state, item, value)

        return reload_on_error

    def _deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> Awaitable[R]:
        if self._retrier is None:
            return attempt()
        return self._retrier.deliver(key, attempt)

    # what persistence and the outbox read and restore

    def _keys(self) -> Iterator[tuple[Hashable, I]]:
        return iter(self._items.items())

    def _revision(self, key: Hashable) -> int:
        return self._revisions.get(key, -1)

    def _learn(self, key: Hashable) -> None:
        known = self._store.server_revision(key)
        if known > self._revisions.get(key, -1):
            self._revisions[key] = known

    def _restore_revision(self, item: I, revision: int) -> None:
        key = self._field._key(item)
        self._items[key] = item
        self._revisions[key] = max(revision, self._revisions.get(key, -1))

    def _resend(self, item: I) -> Awaitable[None]:
        return self._set(item, self._get(item))

    def _set(self, item: I, value: T) -> Awaitable[None]:
        raise NotImplementedError

    # public

    def is_pending(self, item: I) -> bool:
        """Whether the item's latest change is still being sent (its key is syncing).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({}).on.is_pending("dark-mode")
            False
        """
        return self._store.is_syncing(self._field._key(item))

    def key(self, item: I) -> Hashable:
        """The store key of an item: ``(field name, item)`` (a single value: its name).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({}).on.key("dark-mode")
            ('on', 'dark-mode')
        """
        return self._field._key(item)


class _BoundWithPush(_Bound[S, I, T]):
    def _set(self, item: I, value: T) -> Awaitable[None]:
        field, store = self._field, self._store
        key = field._key(item)
        self._items[key] = item
        send = self._send_fn()
        get, put = field.get, field.set

        async def send_value(
            sent: T, local_revision: int, device_id: int, inform: Callable[[int], None]
        ) -> T:
            value, revision, attempts = sent, local_revision, 0

            async def attempt() -> T:
                nonlocal value, revision, attempts
                attempts += 1
                if attempts > 1:  # a retry sends what the state shows now, as its newest change
                    value, revision = get(store.state, item), store.local_revision(key)
                if latest_change_is_push(store, key):
                    # A push came after the last tap (while this waited to be sent):
                    # the server's newer word is on screen and nothing of ours is
                    # left to send, as for a follow-up. Sending would write over
                    # whatever the server committed since.
                    now = get(store.state, item)
                    return self._inform(key, store.server_revision(key), now, inform)
                answer = await send(store, item, value, SyncRequest(key, revision, device_id))
                return self._inform(key, answer, value, inform)

            return await self._deliver(key, attempt)

        return store.optimistic_sync_with_push(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: put(state, item, v),
            get_value_from_state=lambda state: get(state, item),
            send_value_to_server=send_value,
            get_server_revision_from_state=self._revision,
            apply_server_response_to_state=lambda state, v: put(state, item, v),
            on_finish=self._on_finish(item),
            max_follow_up_requests=field.max_follow_up_requests,
        )

    def _inform(
        self, key: Hashable, answer: int | Ack[T], sent: T, inform: Callable[[int], None]
    ) -> T:
        if isinstance(answer, Ack):
            inform(answer.server_revision)
            value: T = answer.value
        else:
            inform(answer)
            value = sent
        self._learn(key)
        return value

    def _push(self, item: I, value: T, metadata: PushMetadata) -> PushOutcome:
        field = self._field
        key = field._key(item)
        self._items[key] = item
        outcome = self._store.server_push(
            key=key,
            push_metadata=metadata,
            apply_server_push_to_state=lambda state, k, revision: field.set(state, item, value),
            get_server_revision_from_state=self._revision,
        )
        self._learn(key)
        return outcome


class _BoundWithoutPush(_Bound[S, I, T]):
    def _set(self, item: I, value: T) -> Awaitable[None]:
        field, store = self._field, self._store
        key = field._key(item)
        self._items[key] = item
        send = self._send_fn()
        get, put = field.get, field.set

        async def send_value(sent: T) -> T | None:
            attempts = 0

            async def attempt() -> T | None:
                nonlocal attempts
                attempts += 1
                value = sent if attempts == 1 else get(store.state, item)
                answer: T | None = await send(store, item, value)
                return answer

            return await self._deliver(key, attempt)

        return store.optimistic_sync(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: put(state, item, v),
            get_value_from_state=lambda state: get(state, item),
            send_value_to_server=send_value,
            apply_server_response_to_state=lambda state, v: put(state, item, v),
            on_finish=self._on_finish(item),
            max_follow_up_requests=field.max_follow_up_requests,
        )


class _MapShape(_Bound[S, I, T]):
    """What a bound collection offers, whatever its sync strategy."""

    def __getitem__(self, item: I) -> T:
        """The item's value in the current state.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> Likes({"post": True}).liked["post"]
            True
        """
        return self._get(item)

    def set(self, item: I, value: T) -> Awaitable[None]:
        """Show ``value`` for ``item`` at once and sync it.

        A field with push syncs with ``optimistic_sync_with_push``, one
        without with ``optimistic_sync``; this returns the awaitable they
        return (awaiting it is optional).

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s[t], lambda s, t, d: {**s, t: d})
            ...
            ...     @done.sender
            ...     async def send_done(self, todo: str, done: bool) -> None:
            ...         return None
            >>> async def main() -> None:
            ...     async with Todos({"milk": False}) as todos:
            ...         synced = todos.done.set("milk", True)
            ...         print(todos.state)  # shown before the request completes
            ...         await synced
            >>> asyncio.run(main())
            {'milk': True}
        """
        return self._set(item, value)


class _ValueShape(_Bound[S, None, T]):
    """What a bound single value offers, whatever its sync strategy."""

    @property
    def value(self) -> T:
        """The value in the current state.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> Name("Ada").name.value
            'Ada'
        """
        return self._get(None)

    @property
    def pending(self) -> bool:
        """Whether the latest change is still being sent.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> Name("Ada").name.pending
            False
        """
        return self.is_pending(None)

    def set(self, value: T) -> Awaitable[None]:
        """Show ``value`` at once and sync it (see :meth:`BoundMap.set`).

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            ...
            ...     @name.sender
            ...     async def send_name(self, name: str) -> None:
            ...         return None
            >>> async def main() -> None:
            ...     async with Name("") as store:
            ...         await store.name.set("Ada")
            ...         print(store.state)
            >>> asyncio.run(main())
            Ada
        """
        return self._set(None, value)


class BoundMapWithPush(_MapShape[S, I, T], _BoundWithPush[S, I, T]):
    """A :class:`SyncedMapWithPush` on one store: ``store.<field>``.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.fields import SyncRequest, SyncedMapWithPush
        >>> class Likes(Store[dict[str, bool]]):
        ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
        ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
        ...
        ...     @liked.sender
        ...     async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int:
        ...         return 3
        >>> async def main() -> None:
        ...     async with Likes({}) as likes:
        ...         await likes.liked.set("post", not likes.liked["post"])
        ...         print(likes.liked["post"], likes.liked.server_revision("post"))
        >>> asyncio.run(main())
        True 3
    """

    def push(self, item: I, value: T, metadata: PushMetadata) -> PushOutcome:
        """Apply a value the server pushed for ``item``, unless stale or a self-echo.

        The revision is recorded by the field (no revision in your state).

        Example:
            >>> from optisync import PushMetadata, Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> likes = Likes({}, device_id=1)
            >>> meta = PushMetadata(server_revision=5, local_revision=1, device_id=2)
            >>> likes.liked.push("post", True, meta), likes.liked.push("post", False, meta)
            (<PushOutcome.APPLIED: 'applied'>, <PushOutcome.STALE: 'stale'>)
        """
        return self._push(item, value, metadata)

    def server_revision(self, item: I) -> int:
        """The newest server revision known for ``item`` (-1 if none).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> Likes({}).liked.server_revision("post")
            -1
        """
        return self._revision(self._field._key(item))


class BoundMap(_MapShape[S, I, T], _BoundWithoutPush[S, I, T]):
    """A :class:`SyncedMap` on one store: ``store.<field>``.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedMap
        >>> class Todos(Store[dict[str, bool]]):
        ...     done = SyncedMap[dict[str, bool], str, bool](
        ...         lambda s, t: s[t], lambda s, t, d: {**s, t: d})
        >>> Todos({"milk": True}).done["milk"]
        True
    """


class BoundValueWithPush(_ValueShape[S, T], _BoundWithPush[S, None, T]):
    """A :class:`SyncedValueWithPush` on one store: ``store.<field>``.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedValueWithPush
        >>> class Theme(Store[str]):
        ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
        >>> Theme("dark").theme.value
        'dark'
    """

    def push(self, value: T, metadata: PushMetadata) -> PushOutcome:
        """Apply a pushed value, unless stale or a self-echo.

        Example:
            >>> from optisync import PushMetadata, Store
            >>> from optisync.fields import SyncedValueWithPush
            >>> class Theme(Store[str]):
            ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
            >>> store = Theme("light", device_id=1)
            >>> meta = PushMetadata(server_revision=2, local_revision=1, device_id=2)
            >>> store.theme.push("dark", meta)
            <PushOutcome.APPLIED: 'applied'>
        """
        return self._push(None, value, metadata)

    def server_revision(self) -> int:
        """The newest server revision known for the value (-1 if none).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValueWithPush
            >>> class Theme(Store[str]):
            ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
            >>> Theme("light").theme.server_revision()
            -1
        """
        return self._revision(self._field._key(None))


class BoundValue(_ValueShape[S, T], _BoundWithoutPush[S, None, T]):
    """A :class:`SyncedValue` on one store: ``store.<field>``.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedValue
        >>> class Name(Store[str]):
        ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
        >>> Name("Ada").name.value
        'Ada'
    """


SyncedMapWithPush._bound_class = BoundMapWithPush
SyncedMap._bound_class = BoundMap
SyncedValueWithPush._bound_class = BoundValueWithPush
SyncedValue._bound_class = BoundValue
