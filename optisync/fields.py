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

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import (
    TYPE_CHECKING,
    Any,
    Generic,
    Literal,
    Protocol,
    Self,
    TypeVar,
    overload,
    runtime_checkable,
)

from optisync.errors import (
    AlreadyAttachedError,
    ArgumentTypeError,
    InvalidArgumentError,
    StateError,
)
from optisync.revisions import PushMetadata, PushOutcome
from optisync.store import latest_change_is_push
from optisync.transport import (
    DELETED,
    Ack,
    ReportsCompaction,
    Resumable,
    SubscribesByPrefix,
    SyncRequest,
    Transport,
    store_key,
    wire_key,
)

if TYPE_CHECKING:
    from optisync.store import Store

__all__ = [
    "Ack",
    "BoundField",
    "BoundMap",
    "BoundMapWithPush",
    "BoundValue",
    "BoundValueWithPush",
    "Retrier",
    "StoreFields",
    "SyncRequest",
    "SyncedMap",
    "SyncedMapWithPush",
    "SyncedValue",
    "SyncedValueWithPush",
    "declared_fields",
    "serve",
    "store_fields",
]

S = TypeVar("S")
I = TypeVar("I", bound=Hashable)  # noqa: E741 - the item id, as in dict[I, T]
T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - the store class a sender is a method of
R = TypeVar("R")

OnRefused = Literal["reload", "keep"]
"""What a served field does when the server refuses a write (see :func:`serve`).

``"reload"`` (the default): fetch the key's value from the server and show
it, unless the user changed the key since. ``"keep"``: leave the state as it
is. A ``@field.reloader`` replaces either."""
B = TypeVar("B")  # the class of a field bound to a store


@runtime_checkable
class Retrier(Protocol):
    """What retries a field's sends while the server is unreachable (an outbox).

    :class:`optisync.outbox.Outbox` is the one that ships; it plugs itself
    into a store with :meth:`StoreFields.attach_retrier`.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import Retrier
        >>> from optisync.outbox import Outbox
        >>> isinstance(Outbox(Store(0)), Retrier)
        True
    """

    def deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> Awaitable[R]:
        """Run ``attempt`` (again) until it does not raise ``ConnectionError``.

        Example:
            What a field's sync calls, for each send::

                answer = await retrier.deliver(key, attempt)
        """
        ...


# -- the fields, as declared on the class ------------------------------------------


def _is_scope(scope: object) -> bool:
    return isinstance(scope, str) and (scope == "" or scope.endswith("/"))


def _bad_scope(scope: object, where: str = "") -> str:
    return (
        f"a field's scope is '' or a str ending in '/' (or a function of the store "
        f"returning one), got {scope!r}{where}"
    )


class _Field(Generic[S, I, T, B]):
    """What every declared field shares: its name, its lenses, its bound objects (``B``)."""

    bound_class: Callable[[Any, Any, Any], Any]  # set below, once the bound classes exist
    #: One value (key: the name), not a collection (key: ``(name, item)``).
    single = False
    #: Synced with ``optimistic_sync_with_push`` (True) or ``optimistic_sync``.
    with_push = False
    #: Whether items can be deleted (a map field declared with ``remove=``).
    deletable = False

    def __init__(
        self,
        get: Callable[[S, I], T],
        set: Callable[[S, I, T], S],  # noqa: A002 - reads best at the call site
        max_follow_up_requests: int,
        on_refused: OnRefused,
        scope: str | Callable[[Any], str] = "",
    ) -> None:
        if not callable(get) or not callable(set):
            raise ArgumentTypeError("a synced field needs callable get= and set= functions")
        if on_refused not in ("reload", "keep"):
            raise InvalidArgumentError(f"on_refused must be 'reload' or 'keep', got {on_refused!r}")
        self.get = get
        self.set = set
        self.max_follow_up_requests = max_follow_up_requests
        self.on_refused: OnRefused = on_refused
        if not (callable(scope) or _is_scope(scope)):
            raise InvalidArgumentError(_bad_scope(scope))
        self.scope = scope
        self.name = ""
        #: The ``@field.sender`` method as ``(store, item, value[, request])``; None: none declared.
        self.custom_sender: Callable[..., Awaitable[Any]] | None = None
        #: The ``@field.reloader`` method as ``(store, item)``; None: none declared.
        self.custom_reloader: Callable[[Any, I], Awaitable[T]] | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def takes_tombstone(self, state: S) -> bool:
        """Whether a delete pushed for one of this field's items can be applied to ``state``.

        A deletable field can; a map field without ``remove=`` can when the
        state is a dict (the item's key is dropped); a single value cannot.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags.on.takes_tombstone({}), Flags.on.takes_tombstone([])
            (True, False)
        """
        return self.deletable or (not self.single and isinstance(state, dict))

    def key(self, item: I) -> Hashable:
        """The store key of ``item``: ``(name, item)``; a single value's is its name.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags.on.key("dark")
            ('on', 'dark')
        """
        return (self.name, item)

    def scope_of(self, store: Any) -> str:
        """The prefix of this field's wire keys on ``store`` (``""``: unscoped).

        Raises:
            InvalidArgumentError: the scope's function returned something other
                than ``""`` or a ``str`` ending in ``"/"``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Notes(Store[dict[str, str]]):
            ...     text = SyncedMap[dict[str, str], str, str](
            ...         lambda s, n: s.get(n, ""), lambda s, n, t: {**s, n: t},
            ...         scope=lambda store: f"user/{store.user}/")
            ...     def __init__(self, user: str) -> None:
            ...         super().__init__({})
            ...         self.user = user
            >>> Notes.text.scope_of(Notes("ada"))
            'user/ada/'
        """
        scope = self.scope(store) if callable(self.scope) else self.scope
        if not _is_scope(scope):
            raise InvalidArgumentError(_bad_scope(scope, f" (from the scope of {self.name!r})"))
        return scope

    def item_of(self, key: Hashable) -> tuple[bool, I]:
        """``(True, item)`` if ``key`` is one of this field's keys, else ``(False, None)``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags.on.item_of(("on", "dark")), Flags.on.item_of("on")
            ((True, 'dark'), (False, None))
        """
        if isinstance(key, tuple) and len(key) == 2 and key[0] == self.name:
            return True, key[1]
        return False, None  # type: ignore[return-value]

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
        bound: B = self.bound_class(self, store, store_fields(store))
        # Like functools.cached_property: the bound object replaces the lookup
        # from now on, under the field's own name (no other name is used).
        vars(store)[self.name] = bound
        return bound


def _lift_get(get: Callable[[S], T]) -> Callable[[S, None], T]:
    return lambda state, item: get(state)


def _lift_set(put: Callable[[S, T], S]) -> Callable[[S, None, T], S]:
    return lambda state, item, value: put(state, value)


def _contains(state: Any, item: Any) -> bool:
    try:
        return item in state
    except TypeError:
        raise StateError(
            f"a state of type {type(state).__name__} does not support `in`: give the "
            "deletable field contains=(state, item) -> bool"
        ) from None


def _reads_deleted(
    get: Callable[[S, I], T], contains: Callable[[S, I], bool]
) -> Callable[[S, I], T]:
    """``get`` that reads :data:`DELETED` for an item absent from the state."""

    def read(state: S, item: I) -> T:
        if contains(state, item):
            return get(state, item)
        deleted: Any = DELETED
        return deleted  # type: ignore[no-any-return]

    return read


def _writes_deleted(
    name: Callable[[], str], put: Callable[[S, I, T], S], remove: Callable[[S, I], S] | None
) -> Callable[[S, I, T], S]:
    """``set`` that writes :data:`DELETED` as the removal of the item.

    Without ``remove``, a dict-valued state loses the item's key; any other
    state refuses (a tombstone push for a field that cannot remove).
    """

    def write(state: S, item: I, value: T) -> S:
        if value is not DELETED:
            return put(state, item, value)
        if remove is not None:
            return remove(state, item)
        if isinstance(state, dict):
            without: Any = {k: v for k, v in state.items() if k != item}
            return without  # type: ignore[no-any-return]
        raise StateError(
            f"the field {name()!r} cannot remove the deleted item {item!r} from a "
            f"{type(state).__name__}: declare it with remove=(state, item) -> state"
        )

    return write


class _MapField(_Field[S, I, T, B]):
    """A declared collection: ``get`` and ``set`` take the item id.

    With ``remove=(state, item) -> state`` its items can be deleted
    (:meth:`BoundMapWithPush.delete`, ``del store.field[item]``): an item
    absent from the state (``contains``, by default ``item in state``) reads
    as :data:`~optisync.DELETED`.
    """

    def __init__(
        self,
        get: Callable[[S, I], T],
        set: Callable[[S, I, T], S],  # noqa: A002
        *,
        remove: Callable[[S, I], S] | None = None,
        contains: Callable[[S, I], bool] | None = None,
        max_follow_up_requests: int = 10_000,
        on_refused: OnRefused = "reload",
        scope: str | Callable[[Any], str] = "",
    ) -> None:
        super().__init__(get, set, max_follow_up_requests, on_refused, scope)
        if remove is not None and not callable(remove):
            raise ArgumentTypeError(
                f"remove= must be callable (state, item) -> state, got {remove!r}"
            )
        if contains is not None and (remove is None or not callable(contains)):
            raise ArgumentTypeError(
                "contains= must be callable (state, item) -> bool, and goes with remove="
            )
        #: Whether items can be deleted: ``remove=`` was given.
        self.deletable = remove is not None
        if remove is not None:
            self.get = _reads_deleted(get, contains or _contains)
        self.set = _writes_deleted(lambda: self.name, set, remove)

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
        self.custom_reloader = fn
        return fn


class _ValueField(_Field[S, None, T, B]):
    """A declared single value: its key is its name."""

    single = True

    def __init__(
        self,
        get: Callable[[S], T],
        set: Callable[[S, T], S],  # noqa: A002
        *,
        max_follow_up_requests: int = 10_000,
        on_refused: OnRefused = "reload",
        scope: str | Callable[[Any], str] = "",
    ) -> None:
        super().__init__(_lift_get(get), _lift_set(set), max_follow_up_requests, on_refused, scope)

    def key(self, item: None = None) -> Hashable:
        """The store key of the value: the field's name.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> Name.name.key()
            'name'
        """
        return self.name

    def item_of(self, key: Hashable) -> tuple[bool, None]:
        """``(True, None)`` if ``key`` is this value's key (its name), else ``(False, None)``.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> Name.name.item_of("name")
            (True, None)
        """
        return key == self.name, None

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
        self.custom_reloader = lambda store, item: fn(store)
        return fn


class SyncedMapWithPush(_MapField[S, I, T, "BoundMapWithPush[S, I, T]"]):
    """A collection of values keyed by item id, synced with a server that pushes.

    Declare it in the store's class body with the state type, the item id
    type and the value type, then give it a sender with :meth:`sender`:

    Args:
        get: ``(state, item) -> value``.
        set: ``(state, item, value) -> new state``.
        remove: ``(state, item) -> new state`` without the item: lets items be
            deleted (:meth:`BoundMapWithPush.delete`). Without it, a pushed
            delete removes the item's key from a dict-valued state.
        contains: ``(state, item) -> bool`` (with ``remove``; default
            ``item in state``): an absent item reads as :data:`~optisync.DELETED`.
        max_follow_up_requests: as for ``optimistic_sync_with_push``.
        scope: the prefix of the field's wire keys when a transport serves
            it: ``""`` (none), a ``str`` ending in ``"/"`` such as
            ``"shared/"``, or a function of the store returning one, such as
            ``lambda store: f"user/{store.user}/"``. A store whose every
            field has a scope receives only their keys (see :func:`serve`).

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

    with_push = True

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
        self.custom_sender = fn
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
        scope: the prefix of the field's wire keys when a transport serves
            it: ``""`` (none), a ``str`` ending in ``"/"`` such as
            ``"shared/"``, or a function of the store returning one, such as
            ``lambda store: f"user/{store.user}/"``. A store whose every
            field has a scope receives only their keys (see :func:`serve`).

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
        self.custom_sender = fn
        return fn


class SyncedValueWithPush(_ValueField[S, T, "BoundValueWithPush[S, T]"]):
    """One value (a setting), synced with a server that pushes. Its key is its name.

    Args:
        get: ``state -> value``.
        set: ``(state, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync_with_push``.
        scope: the prefix of the field's wire keys when a transport serves
            it: ``""`` (none), a ``str`` ending in ``"/"`` such as
            ``"shared/"``, or a function of the store returning one, such as
            ``lambda store: f"user/{store.user}/"``. A store whose every
            field has a scope receives only their keys (see :func:`serve`).

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

    with_push = True

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
        self.custom_sender = lambda store, item, value, request: fn(store, value, request)
        return fn


class SyncedValue(_ValueField[S, T, "BoundValue[S, T]"]):
    """One value, synced with a server that does not push (``optimistic_sync``).

    Args:
        get: ``state -> value``.
        set: ``(state, value) -> new state``.
        max_follow_up_requests: as for ``optimistic_sync``.
        scope: the prefix of the field's wire keys when a transport serves
            it: ``""`` (none), a ``str`` ending in ``"/"`` such as
            ``"shared/"``, or a function of the store returning one, such as
            ``lambda store: f"user/{store.user}/"``. A store whose every
            field has a scope receives only their keys (see :func:`serve`).

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
        self.custom_sender = lambda store, item, value: fn(store, value)
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


# -- one store's fields: the seam the outbox, persistence and transports use ----------

_REGISTRY = "__optisync_fields__"  # the StoreFields of a store, in its instance dict


class StoreFields:
    """The declared fields of one store, and what serves them: its transport and retrier.

    Get it with :func:`store_fields`. It is the public seam between the fields
    and the parts built on them: ``optisync.outbox`` attaches its retrier
    here, ``optisync.persistence`` reads and restores the fields' keys and
    revisions here, and a :class:`~optisync.transport.Transport` serves the
    fields through :func:`serve`.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedMapWithPush, store_fields
        >>> class Likes(Store[dict[str, bool]]):
        ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
        ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
        >>> fields = store_fields(Likes({}))
        >>> list(fields.by_name), fields.field_of(("liked", "post"))[1]
        (['liked'], 'post')
    """

    def __init__(self, store: Store[Any]) -> None:
        self.store = store
        self.__by_name: dict[str, BoundField[Any, Any, Any]] | None = None
        self.__by_scope: list[BoundField[Any, Any, Any]] | None = None
        self.__retrier: Retrier | None = None
        self.__transport: Transport | None = None
        self.__on_transport: list[Callable[[Transport], object]] = []

    @property
    def by_name(self) -> Mapping[str, BoundField[Any, Any, Any]]:
        """Every declared field of the store, bound to it, by name.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import store_fields
            >>> store_fields(Store(0)).by_name
            {}
        """
        if self.__by_name is None:
            store = self.store
            self.__by_name = {name: getattr(store, name) for name in declared_fields(type(store))}
        return self.__by_name

    def field_of(self, key: Hashable) -> tuple[BoundField[Any, Any, Any] | None, Any]:
        """The bound field a store key belongs to and its item; ``(None, None)`` for other keys.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue, store_fields
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> bound, item = store_fields(Name("")).field_of("name")
            >>> bound.name, item
            ('name', None)
        """
        if isinstance(key, str):
            name = key
        elif isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str):
            name = key[0]
        else:
            return None, None
        bound = self.by_name.get(name)
        if bound is None:
            return None, None
        found, item = bound.field.item_of(key)
        return (bound, item) if found else (None, None)

    def field_of_wire(self, wire: str) -> tuple[BoundField[Any, Any, Any] | None, Any]:
        """The bound field a wire key belongs to and its item; ``(None, None)`` for other keys.

        The inverse of :meth:`BoundField.wire_key`: the field's scope, then
        the :func:`~optisync.transport.wire_key` of its store key. Of two
        fields that could both own the key, the one with the longer scope wins.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap, store_fields
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s.get(t, False), lambda s, t, d: {**s, t: d}, scope="shared/")
            >>> bound, item = store_fields(Todos({})).field_of_wire("shared/done/milk")
            >>> bound.name, item
            ('done', 'milk')
        """
        if self.__by_scope is None:  # longest scope first, sorted once
            self.__by_scope = sorted(self.by_name.values(), key=lambda b: -len(b.scope))
        for bound in self.__by_scope:
            if not wire.startswith(bound.scope):
                continue
            try:
                key = store_key(wire[len(bound.scope) :])
            except InvalidArgumentError:
                continue
            found, item = bound.field.item_of(key)
            if found:
                return bound, item
        return None, None

    @property
    def scopes(self) -> tuple[str, ...] | None:
        """The scopes of the store's fields, or None if a field is unscoped (or none is declared).

        What :func:`serve` subscribes a transport to.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap, store_fields
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s.get(t, False), lambda s, t, d: {**s, t: d}, scope="shared/")
            >>> store_fields(Todos({})).scopes
            ('shared/',)
        """
        scopes = tuple(dict.fromkeys(bound.scope for bound in self.by_name.values()))
        return None if not scopes or "" in scopes else scopes

    # -- the retrier (an outbox) ---------------------------------------------------

    @property
    def retrier(self) -> Retrier | None:
        """The retrier attached with :meth:`attach_retrier`, if any.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import store_fields
            >>> store_fields(Store(0)).retrier is None
            True
        """
        return self.__retrier

    def attach_retrier(self, retrier: Retrier) -> None:
        """Route every send of the store's fields through ``retrier.deliver``.

        Raises:
            AlreadyAttachedError: the store has a retrier (an outbox) already.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import store_fields
            >>> from optisync.outbox import Outbox
            >>> store = Store(0)
            >>> outbox = Outbox(store)  # attaches itself
            >>> store_fields(store).retrier is outbox
            True
        """
        if self.__retrier is not None:
            raise AlreadyAttachedError("this store already has an outbox")
        self.__retrier = retrier

    # -- the transport -----------------------------------------------------------

    @property
    def transport(self) -> Transport | None:
        """The transport serving the store (see :func:`serve`), if any.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import store_fields
            >>> store_fields(Store(0)).transport is None
            True
        """
        return self.__transport

    def when_served(self, listener: Callable[[Transport], object]) -> None:
        """Call ``listener(transport)`` once the store is served (at once if it is).

        For the parts that follow the transport: the outbox follows its online
        status, persistence saves its replay position.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import store_fields
            >>> store_fields(Store(0)).when_served(print)  # called later, by serve()
        """
        if self.__transport is not None:
            listener(self.__transport)
        else:
            self.__on_transport.append(listener)

    def set_transport(self, transport: Transport) -> None:
        """Record ``transport`` as the store's and tell :meth:`when_served`'s listeners.

        :func:`serve` calls it; a transport is set once per store.

        Raises:
            AlreadyAttachedError: the store is served already.

        Example:
            >>> from optisync import Store, testing
            >>> from optisync.fields import store_fields
            >>> link = testing.SimulatedNetwork(testing.SimulatedServer()).device(1)
            >>> fields = store_fields(Store(0, device_id=1))
            >>> fields.set_transport(link)
            >>> fields.transport is link
            True
        """
        if self.__transport is not None:
            raise AlreadyAttachedError("this store is served by a transport already")
        self.__transport = transport
        listeners, self.__on_transport = self.__on_transport, []
        for listener in listeners:
            listener(transport)


def store_fields(store: Store[Any]) -> StoreFields:
    """The :class:`StoreFields` of ``store`` (made on first use, one per store).

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import store_fields
        >>> store = Store(0)
        >>> store_fields(store) is store_fields(store)
        True
    """
    found = vars(store).get(_REGISTRY)
    if found is None:
        found = vars(store)[_REGISTRY] = StoreFields(store)
    fields: StoreFields = found
    return fields


def serve(store: Store[Any], transport: Transport) -> Callable[[], None]:
    """Let ``transport`` send the store's declared fields and deliver their pushes.

    After it, a field with no ``@sender`` sends through
    ``transport.send(wire_key(key), value, request)``, and every push the
    transport delivers for one of the fields' wire keys reaches the field
    (revisions, self-echoes and staleness as with :meth:`BoundMapWithPush.push`).
    Pushes of keys no field declares are ignored. A field bound to a scope
    (``scope="shared/"``) sends and receives its keys under that prefix;
    when every field has a scope and the transport takes prefixes
    (:class:`~optisync.transport.SubscribesByPrefix`), it is subscribed to
    the union of the scopes, so that the device receives nothing else.
    When the server says it
    is another database (a ``Resumable`` transport's reset: new, or restored
    from a backup), the fields forget their server revisions, so that its
    replay is applied; a key whose change is pending keeps it (its replayed
    pushes are skipped) and sends it once the replay is done, and a key the
    old database had confirmed but the replay does not mention (a backup
    older than its last write) is written back from the device. A write the server refuses
    follows the field's ``on_refused`` (``"reload"``: the key is fetched and
    shown, at once or once the transport is online again).
    :class:`optisync.client.SyncClient` calls it for you; returns a function
    that stops delivering pushes.

    Raises:
        InvalidArgumentError: the transport's device id is not the store's.
        AlreadyAttachedError: the store is served already.

    Example:
        >>> from optisync import Store, testing
        >>> from optisync.fields import SyncedValueWithPush, serve
        >>> class Theme(Store[str]):
        ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
        >>> async def main() -> None:
        ...     network = testing.SimulatedNetwork(testing.SimulatedServer())
        ...     async with Theme("light", device_id=1) as phone:
        ...         serve(phone, network.device(1))
        ...         await phone.theme.set("dark")  # no sender: the link sends it
        ...         other = network.device(2)
        ...         await other.write("theme", "blue", local_revision=1)
        ...         await network.settle()
        ...         print(phone.state, phone.theme.server_revision())
        >>> testing.run(main())
        blue 2
    """
    if transport.device_id != store.device_id:
        raise InvalidArgumentError(
            f"the transport's device id {transport.device_id} is not the store's "
            f"{store.device_id}: build the transport for this store"
        )
    fields = store_fields(store)
    fields.set_transport(transport)
    # Keys whose change was pending at a reset. With the revisions forgotten,
    # the replay would apply entries the device saw before its change and drop
    # it; so their replayed pushes are skipped until the transport is online
    # (the replay done), and the change is sent then, after all of them.
    held: set[Hashable] = set()
    # Keys the old database had confirmed, at a reset: those its replacement's
    # replay does not mention (a backup older than their last write) are written
    # back from this device once the replay is done, so no device keeps a value
    # the database lacks.
    unheard: dict[Hashable, tuple[BoundField[Any, Any, Any], Any]] = {}

    def on_push(wire: str, value: Any, metadata: PushMetadata) -> PushOutcome | None:
        if store.is_closed:
            return None  # a transport that outlives its store: nothing to apply to
        bound, item = fields.field_of_wire(wire)
        if bound is None or not bound.field.with_push:
            return None  # a key no declared field made
        key = bound.key(item)
        unheard.pop(key, None)
        if key in held:
            return PushOutcome.STALE
        return bound.apply_push(item, value, metadata)

    # Whether the last reset came from the server's compaction: the keys its
    # replay does not mention were deleted (their tombstones dropped), so they
    # are removed here rather than written back.
    compacted = [False]

    def on_status(online: bool) -> None:
        if online:
            held.clear()
            if compacted[0]:
                _drop_deleted(store, unheard)
            else:
                _write_back(store, unheard)
            _reload_waiting(fields)

    def on_reset() -> None:
        compacted[0] = isinstance(transport, ReportsCompaction) and transport.reset_by_compaction
        held.clear()
        held.update(
            key
            for bound in fields.by_name.values()
            for key, _ in bound.items()
            if store.is_syncing(key)
        )
        unheard.clear()
        unheard.update(
            (key, (bound, item))
            for bound in fields.by_name.values()
            for key, item in bound.items()
            if key not in held and bound.known_revision(key) >= 0
        )
        _forget_revisions(fields)

    scopes = fields.scopes
    if scopes is not None and isinstance(transport, SubscribesByPrefix):
        transport.use_prefixes(scopes)  # every field is scoped: only their keys
    stops = [transport.subscribe_pushes(on_push), transport.subscribe_status(on_status)]
    if isinstance(transport, Resumable):
        stops.append(transport.subscribe_reset(on_reset))

    def stop() -> None:
        for unsubscribe in stops:
            unsubscribe()

    return stop


def _write_back(
    store: Store[Any], unheard: dict[Hashable, tuple[BoundField[Any, Any, Any], Any]]
) -> None:
    for key, (bound, item) in list(unheard.items()):
        if not store.is_closed and not store.is_syncing(key):
            bound.resend(item)  # its failure, if any, reaches the store's on_error
    unheard.clear()


def _drop_deleted(
    store: Store[Any], unheard: dict[Hashable, tuple[BoundField[Any, Any, Any], Any]]
) -> None:
    for key, (bound, item) in list(unheard.items()):
        if not store.is_closed and not store.is_syncing(key):
            bound.drop_deleted(item)
    unheard.clear()


def _forget_revisions(fields: StoreFields) -> None:
    # The server is another database now (new, or restored from a backup): its
    # revisions start over, so the replay that follows must not look stale.
    for bound in fields.by_name.values():
        bound.forget_revisions()
    fields.store.forget_server_revisions()


def _reload_waiting(fields: StoreFields) -> None:
    for bound in fields.by_name.values():
        bound.reload_waiting()


# -- the fields, bound to a store ---------------------------------------------------


class BoundField(Generic[S, I, T]):
    """A declared field on one store: its keys, its sync calls, and its server revisions.

    Every bound field (:class:`BoundMapWithPush`, :class:`BoundMap`,
    :class:`BoundValueWithPush`, :class:`BoundValue`) is one of these, with a
    strategy chosen by the declaration: with push (``optimistic_sync_with_push``
    and server revisions) or without (``optimistic_sync``). A single value is
    a collection with one item, ``None``. The methods here are the seam the
    outbox and persistence use; apps use the shapes' ``set``, ``push``,
    ``[item]`` and ``value``.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import BoundField, SyncedMap
        >>> class Flags(Store[dict[str, bool]]):
        ...     on = SyncedMap[dict[str, bool], str, bool](
        ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
        >>> flags = Flags({})
        >>> isinstance(flags.on, BoundField), flags.on.name
        (True, 'on')
    """

    def __init__(self, field: _Field[S, I, T, Any], store: Store[S], fields: StoreFields) -> None:
        self.field = field
        self.store = store
        self.__fields = fields
        self.__items: dict[Hashable, I] = {}  # every key this field synced: key -> item
        self.__revisions: dict[Hashable, int] = {}
        self.__reloads: dict[Hashable, int] = {}  # key -> local revision when it failed
        # key -> the value shown before the lock cycle: what a write the server refused
        # shows again when the server never held the key (nothing to reload)
        self.__before: dict[Hashable, T] = {}
        self.__tasks: set[asyncio.Task[None]] = set()
        self.__strategy: _Strategy = _WithPush() if field.with_push else _WithoutPush()
        self.__scope: str | None = None  # the field's scope on this store, once asked

    @property
    def name(self) -> str:
        """The field's name on the store class.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Name(Store[str]):
            ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
            >>> Name("").name.name
            'name'
        """
        return self.field.name

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
        return self.field.key(item)

    @property
    def scope(self) -> str:
        """The prefix of this field's wire keys on this store (``""``: unscoped).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValue
            >>> class Theme(Store[str]):
            ...     theme = SyncedValue[str, str](lambda s: s, lambda s, t: t, scope="prefs/")
            >>> Theme("light").theme.scope
            'prefs/'
        """
        if self.__scope is None:
            self.__scope = self.field.scope_of(self.store)
        return self.__scope

    def wire_key(self, item: I) -> str:
        """The key a transport sends ``item`` under: the scope, then its store key encoded.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s.get(t, False), lambda s, t, d: {**s, t: d}, scope="shared/")
            >>> Todos({}).done.wire_key("buy milk")
            'shared/done/buy%20milk'
        """
        return self.scope + wire_key(self.field.key(item))

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
        return self.store.is_syncing(self.field.key(item))

    def get(self, item: I) -> T:
        """The item's value in the current state.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({"dark": True}).on.get("dark")
            True
        """
        return self.field.get(self.store.state, item)

    # -- what persistence and the outbox read and restore ---------------------------

    def items(self) -> list[tuple[Hashable, I]]:
        """Every ``(key, item)`` this field synced, received or restored on this store.

        Example:
            >>> from optisync import PushMetadata, Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> likes = Likes({}, device_id=1)
            >>> _ = likes.liked.push("post", True, PushMetadata(3, 1, 2))
            >>> likes.liked.items()
            [(('liked', 'post'), 'post')]
        """
        return list(self.__items.items())

    def known_revision(self, key: Hashable) -> int:
        """The newest server revision this field knows for ``key`` (-1: none).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> Likes({}).liked.known_revision(("liked", "post"))
            -1
        """
        return self.__revisions.get(key, -1)

    def learn_revision(self, key: Hashable) -> None:
        """Take the store's server revision of ``key`` if it is newer than the field's.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValueWithPush
            >>> class Theme(Store[str]):
            ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
            >>> store = Theme("light")
            >>> store.theme.learn_revision("theme")  # the store knows none: nothing to learn
            >>> store.theme.known_revision("theme")
            -1
        """
        known = self.store.server_revision(key)
        if known > self.__revisions.get(key, -1):
            self.__revisions[key] = known

    def restore(self, item: I, revision: int) -> None:
        """Record ``item`` with a server revision saved by an earlier run (persistence).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> likes = Likes({})
            >>> likes.liked.restore("post", 7)
            >>> likes.liked.server_revision("post")
            7
        """
        key = self.field.key(item)
        self.__items[key] = item
        self.__revisions[key] = max(revision, self.__revisions.get(key, -1))

    def forget_revisions(self) -> None:
        """Forget every server revision (the server was replaced, or restored from a backup).

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedValueWithPush
            >>> class Theme(Store[str]):
            ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
            >>> store = Theme("light")
            >>> store.theme.restore(None, 4)
            >>> store.theme.forget_revisions()
            >>> store.theme.server_revision()
            -1
        """
        self.__revisions.clear()

    def drop_deleted(self, item: I) -> None:
        """Remove ``item`` from the state, unsent: the server no longer holds it.

        What :func:`serve` does, after a reset by the server's compaction, to
        each item the replay does not mention (its tombstone was dropped). It
        forgets the item's server revision; a field that cannot remove items
        (:meth:`takes_tombstone`) leaves the state as it is.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, t: s[t], lambda s, t, d: {**s, t: d},
            ...         remove=lambda s, t: {k: v for k, v in s.items() if k != t})
            >>> todos = Todos({"milk": True, "eggs": False})
            >>> todos.done.drop_deleted("milk")
            >>> todos.state
            {'eggs': False}
        """
        field, store = self.field, self.store
        self.__revisions.pop(field.key(item), None)
        if not field.takes_tombstone(store.state):
            return
        state: Any = store.state  # a dict, when the field is not deletable
        present = self.get(item) is not DELETED if field.deletable else item in state
        if present:  # an item deleted here already is left alone: no state to emit
            deleted: Any = DELETED
            store.emit(field.set(store.state, item, deleted))

    def resend(self, item: I) -> Awaitable[None]:
        """Sync the value the state shows for ``item`` again (an unsent change after a restart).

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            ...
            ...     @on.sender
            ...     async def send_on(self, flag: str, on: bool) -> None:
            ...         print("sent", flag, on)
            >>> async def main() -> None:
            ...     async with Flags({"dark": True}) as flags:
            ...         await flags.on.resend("dark")
            >>> asyncio.run(main())
            sent dark True
        """
        return self.sync(item, self.get(item))

    # -- syncing ---------------------------------------------------------------------

    def sync(self, item: I, value: T) -> Awaitable[None]:
        """Show ``value`` for ``item`` at once and sync it; what the shapes' ``set`` calls.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            ...
            ...     @on.sender
            ...     async def send_on(self, flag: str, on: bool) -> None:
            ...         return None
            >>> async def main() -> None:
            ...     async with Flags({}) as flags:
            ...         await flags.on.sync("dark", True)
            ...         print(flags.state)
            >>> asyncio.run(main())
            {'dark': True}
        """
        key = self.field.key(item)
        if self.field.custom_sender is None:
            wire_key(key)  # an item the transport could not send: refuse before the tap shows
        self.__items[key] = item
        if not self.store.is_syncing(key):  # a new lock cycle: what the screen showed before it
            self.__before[key] = self.get(item)
        return self.__strategy.sync(self, item, key, value)

    def apply_push(self, item: I, value: T, metadata: PushMetadata) -> PushOutcome:
        """Apply a value the server pushed for ``item``, unless stale or a self-echo.

        Raises:
            StateError: the field is declared without push (``SyncedMap``, ``SyncedValue``).

        Example:
            >>> from optisync import PushMetadata, Store
            >>> from optisync.fields import SyncedMapWithPush
            >>> class Likes(Store[dict[str, bool]]):
            ...     liked = SyncedMapWithPush[dict[str, bool], str, bool](
            ...         lambda s, i: s.get(i, False), lambda s, i, v: {**s, i: v})
            >>> likes = Likes({}, device_id=1)
            >>> likes.liked.apply_push("post", True, PushMetadata(5, 1, 2)).name
            'APPLIED'
        """
        if not self.field.with_push:
            raise StateError(
                f"the field {self.name!r} is declared without push: "
                "declare it SyncedMapWithPush or SyncedValueWithPush to apply pushes"
            )
        field = self.field
        key = field.key(item)
        if value is DELETED and not field.takes_tombstone(self.store.state):
            self.store.on_error(
                StateError(
                    f"the field {self.name!r} got a delete of {key!r} it cannot apply: "
                    "declare it with remove=(state, item) -> state"
                )
            )
            return PushOutcome.STALE
        self.__items[key] = item
        outcome = self.store.server_push(
            key=key,
            push_metadata=metadata,
            apply_server_push_to_state=lambda state, k, revision: field.set(state, item, value),
            get_server_revision_from_state=self.known_revision,
        )
        self.learn_revision(key)
        return outcome

    def sender_for(self, item: I) -> Callable[[T, SyncRequest], Awaitable[int | Ack[T] | T | None]]:
        """``send(value, request)`` for ``item``: the ``@sender`` method, else the transport's.

        Raises:
            StateError: the field has no sender and the store no transport.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({}).on.sender_for("dark")  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            optisync.errors.StateError: the synced field 'on' has no sender: ...
        """
        custom, store = self.field.custom_sender, self.store
        if custom is not None:
            if self.field.with_push:
                return lambda value, request: custom(store, item, value, request)
            return lambda value, request: custom(store, item, value)
        transport = self.__fields.transport
        if transport is None:
            raise StateError(
                f"the synced field {self.name!r} has no sender: decorate an async method "
                f"with @{self.name}.sender, or serve the store with a transport "
                "(optisync.client.SyncClient(store, url))"
            )
        wire = self.wire_key(item)
        served = transport

        async def send(value: T, request: SyncRequest) -> Ack[T] | T:
            ack: Ack[T] = await served.send(wire, value, request)
            return ack if self.field.with_push else ack.value

        return send

    def deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> Awaitable[R]:
        """Run one send ``attempt``, through the store's retrier (outbox) if it has one.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> async def attempt() -> str:
            ...     return "sent"
            >>> asyncio.run(Flags({}).on.deliver(("on", "dark"), attempt))
            'sent'
        """
        retrier = self.__fields.retrier
        if retrier is None:
            return attempt()
        return retrier.deliver(key, attempt)

    # -- after a failure ---------------------------------------------------------------

    def on_finish_for(self, item: I) -> Callable[[Exception | None], Awaitable[S | None]] | None:
        """The ``on_finish`` of ``item``'s syncs: the ``@reloader``, or the served policy.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({}).on.on_finish_for("dark") is None  # no reloader, no transport
            True
        """
        reload = self.field.custom_reloader
        field, store = self.field, self.store
        if reload is not None:

            async def reload_on_error(error: Exception | None) -> S | None:
                if error is None:
                    return None
                value = await reload(store, item)
                return field.set(store.state, item, value)

            return reload_on_error
        if self.__fields.transport is None and field.custom_sender is None:
            return None
        if field.on_refused == "keep" or field.custom_sender is not None:
            return None
        key = field.key(item)

        async def reload_from_server(error: Exception | None) -> None:
            if error is None:
                self.__reloads.pop(key, None)  # the server has this key's latest change
            else:
                self.__reloads[key] = store.local_revision(key)
                self.__items[key] = item
                self.reload_waiting()

        return reload_from_server

    def reload_waiting(self) -> None:
        """Fetch, from the transport, each key whose write failed; show what the server holds.

        A key the user changed since its failure is left alone (that change
        is being synced). While offline, the keys wait for the next time the
        transport is online (:func:`serve` calls this then). A key the server
        never held shows again what it showed before the refused change.

        Example:
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Flags(Store[dict[str, bool]]):
            ...     on = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, f: s.get(f, False), lambda s, f, v: {**s, f: v})
            >>> Flags({}).on.reload_waiting()  # nothing failed: nothing to do
        """
        transport = self.__fields.transport
        if transport is None or not transport.online or self.store.is_closed:
            return
        for key in list(self.__reloads):
            task = asyncio.get_running_loop().create_task(self.__reload(transport, key))
            self.__tasks.add(task)
            task.add_done_callback(self.__tasks.discard)

    async def __reload(self, transport: Transport, key: Hashable) -> None:
        marked = self.__reloads.get(key)
        if marked is None:
            return  # reloaded already
        try:
            value, revision = await transport.get(self.scope + wire_key(key))
        except ConnectionError:
            return  # tried again once online
        except Exception as error:  # a refusal: nothing better to show
            self.__reloads.pop(key, None)
            self.store.on_error(error)
            return
        store = self.store
        if self.__reloads.get(key) != marked or store.is_closed:
            return  # failed again since: that failure's reload applies
        del self.__reloads[key]
        if store.is_syncing(key) or store.local_revision(key) != marked:
            return  # the user changed it since: that change is being synced
        if revision < max(self.known_revision(key), store.server_revision(key)):
            return  # a newer push is on screen already
        item = self.__items[key]
        if value is DELETED and not self.field.takes_tombstone(store.state):
            return  # a delete this field cannot show: nothing better to show
        if revision < 0:  # the server never held it: show what the screen showed before
            if key in self.__before:
                store.emit(self.field.set(store.state, item, self.__before[key]))
            return
        self.__revisions[key] = max(revision, self.__revisions.get(key, -1))
        store.emit(self.field.set(store.state, item, value))


class _Strategy(Protocol):
    def sync(
        self, bound: BoundField[Any, Any, Any], item: Any, key: Hashable, value: Any
    ) -> Awaitable[None]: ...


class _WithPush:
    """``optimistic_sync_with_push``: revisions, self-echoes, stale responses."""

    def sync(self, bound: BoundField[S, I, T], item: I, key: Hashable, value: T) -> Awaitable[None]:
        field, store = bound.field, bound.store
        send = bound.sender_for(item)
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
                    return _informed(bound, key, store.server_revision(key), now, inform)
                answer = await send(value, SyncRequest(key, revision, device_id))
                return _informed(bound, key, answer, value, inform)

            return await bound.deliver(key, attempt)

        return store.optimistic_sync_with_push(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: put(state, item, v),
            get_value_from_state=lambda state: get(state, item),
            send_value_to_server=send_value,
            get_server_revision_from_state=bound.known_revision,
            apply_server_response_to_state=lambda state, v: put(state, item, v),
            on_finish=bound.on_finish_for(item),
            max_follow_up_requests=field.max_follow_up_requests,
        )


def _informed(
    bound: BoundField[Any, Any, T],
    key: Hashable,
    answer: Any,
    sent: T,
    inform: Callable[[int], None],
) -> T:
    if isinstance(answer, Ack):
        inform(answer.server_revision)
        value: T = answer.value
    else:
        inform(answer)
        value = sent
    bound.learn_revision(key)
    return value


class _WithoutPush:
    """``optimistic_sync``: a follow-up when the state moved on; no revisions."""

    def sync(self, bound: BoundField[S, I, T], item: I, key: Hashable, value: T) -> Awaitable[None]:
        field, store = bound.field, bound.store
        send = bound.sender_for(item)
        get, put = field.get, field.set

        async def send_value(sent: T) -> T | None:
            attempts = 0

            async def attempt() -> T | None:
                nonlocal attempts
                attempts += 1
                value = sent if attempts == 1 else get(store.state, item)
                request = SyncRequest(key, store.local_revision(key), store.device_id)
                answer: T | None = await send(value, request)  # type: ignore[assignment]
                return answer

            return await bound.deliver(key, attempt)

        return store.optimistic_sync(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: put(state, item, v),
            get_value_from_state=lambda state: get(state, item),
            send_value_to_server=send_value,
            apply_server_response_to_state=lambda state, v: put(state, item, v),
            on_finish=bound.on_finish_for(item),
            max_follow_up_requests=field.max_follow_up_requests,
        )


class _MapShape(BoundField[S, I, T]):
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
        return self.get(item)

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
        return self.sync(item, value)

    def delete(self, item: I) -> Awaitable[None]:
        """Remove ``item`` from the state at once and sync its delete, like :meth:`set`.

        Optimistic and coalesced like a set: a set, a delete and a set of one
        item while a request is in flight end as the last tap. Over a
        transport it is a tombstone on the server, ordered against the item's
        sets by last write wins; other devices see the item removed. A
        ``@sender`` gets :data:`~optisync.DELETED` as the value.

        Raises:
            StateError: the field is declared without ``remove=``.

        Example:
            >>> import asyncio
            >>> from optisync import DELETED, Store
            >>> from optisync.fields import SyncedMap
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s[t], lambda s, t, d: {**s, t: d},
            ...         remove=lambda s, t: {k: v for k, v in s.items() if k != t})
            ...
            ...     @done.sender
            ...     async def send_done(self, todo: str, done: bool) -> None:
            ...         print("sent", todo, done)
            >>> async def main() -> None:
            ...     async with Todos({"milk": True, "eggs": False}) as todos:
            ...         synced = todos.done.delete("milk")
            ...         print(todos.state, todos.done["milk"])  # gone before the request
            ...         await synced
            >>> asyncio.run(main())
            {'eggs': False} DELETED
            sent milk DELETED
        """
        if not self.field.deletable:
            raise StateError(
                f"the field {self.name!r} cannot delete items: declare it with "
                "remove=(state, item) -> state"
            )
        deleted: Any = DELETED
        return self.sync(item, deleted)

    def __delitem__(self, item: I) -> None:
        """``del store.field[item]``: :meth:`delete`, without waiting for the server.

        A failure of the sync goes to the store's ``on_error``.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.fields import SyncedMap
            >>> class Todos(Store[dict[str, bool]]):
            ...     done = SyncedMap[dict[str, bool], str, bool](
            ...         lambda s, t: s[t], lambda s, t, d: {**s, t: d},
            ...         remove=lambda s, t: {k: v for k, v in s.items() if k != t})
            ...
            ...     @done.sender
            ...     async def send_done(self, todo: str, done: bool) -> None:
            ...         return None
            >>> async def main() -> None:
            ...     async with Todos({"milk": True}) as todos:
            ...         del todos.done["milk"]
            ...         print(todos.state)
            >>> asyncio.run(main())
            {}
        """
        self.delete(item)


class _ValueShape(BoundField[S, None, T]):
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
        return self.get(None)

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
        return self.sync(None, value)


class BoundMapWithPush(_MapShape[S, I, T]):
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
        return self.apply_push(item, value, metadata)

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
        return self.known_revision(self.key(item))


class BoundMap(_MapShape[S, I, T]):
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


class BoundValueWithPush(_ValueShape[S, T]):
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
        return self.apply_push(None, value, metadata)

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
        return self.known_revision(self.key(None))


class BoundValue(_ValueShape[S, T]):
    """A :class:`SyncedValue` on one store: ``store.<field>``.

    Example:
        >>> from optisync import Store
        >>> from optisync.fields import SyncedValue
        >>> class Name(Store[str]):
        ...     name = SyncedValue[str, str](lambda s: s, lambda s, v: v)
        >>> Name("Ada").name.value
        'Ada'
    """


SyncedMapWithPush.bound_class = BoundMapWithPush
SyncedMap.bound_class = BoundMap
SyncedValueWithPush.bound_class = BoundValueWithPush
SyncedValue.bound_class = BoundValue
