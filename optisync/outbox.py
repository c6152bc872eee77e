"""The offline outbox: a change made while the server is unreachable is kept and sent later.

Give a store an :class:`Outbox` and its declared fields (:mod:`optisync.fields`)
treat a ``ConnectionError`` raised by their sender (and every subclass: the
client transport raises one when the connection drops) as "unreachable", not
as a failure: the change is **not** rolled back or reloaded, the key stays
pending (its lock stays held, so later taps coalesce into it), and the value
the state shows is sent again after a backoff (exponential, by
`tenacity <https://tenacity.readthedocs.io>`_), until the server takes it.
Any other error is a refusal and ends the sync as before, in ``on_finish``.

So the outbox holds at most one entry per key, however many taps: the key's
latest value. With ``optisync.persistence`` it is saved, and resent after
a restart.

Example:
    >>> import asyncio
    >>> from optisync import Store
    >>> from optisync.fields import SyncRequest, SyncedValueWithPush
    >>> from optisync.outbox import Backoff, Outbox
    >>> attempts = []
    >>> class Theme(Store[str]):
    ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
    ...
    ...     @theme.sender
    ...     async def send_theme(self, theme: str, request: SyncRequest) -> int:
    ...         attempts.append(theme)
    ...         if len(attempts) < 3:
    ...             raise ConnectionError("no network")
    ...         return 1
    >>> async def main() -> None:
    ...     async with Theme("light") as store:
    ...         outbox = Outbox(store, backoff=Backoff(initial=0.01, jitter=0.0))
    ...         store.theme.set("dark")
    ...         await outbox.synced()
    ...         print(store.state, attempts)
    >>> asyncio.run(main())
    dark ['dark', 'dark', 'dark']
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from optisync.errors import ArgumentTypeError, InvalidArgumentError, StoreClosedError
from optisync.fields import store_fields

if TYPE_CHECKING:
    from optisync.store import Store
    from optisync.transport import Transport

__all__ = ["Backoff", "Outbox"]

R = TypeVar("R")


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ArgumentTypeError(f"{attribute.name} must be a number of seconds, got {value!r}")
    if not value >= 0:
        raise InvalidArgumentError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen
class Backoff:
    """How long to wait between two attempts to reach the server.

    The n-th wait is ``initial * multiplier ** (n - 1)`` seconds, at most
    ``maximum``, plus a random ``[0, jitter]`` seconds so that many clients
    coming back at once do not all retry together (``jitter=0`` makes the
    waits exact, for simulations that must replay).

    Example:
        >>> from optisync.outbox import Backoff
        >>> Backoff(initial=1.0, maximum=8.0, jitter=0.0).waits(5)
        [1.0, 2.0, 4.0, 8.0, 8.0]
        >>> Backoff(initial=-1)
        Traceback (most recent call last):
        ...
        optisync.errors.InvalidArgumentError: initial must be >= 0, got -1
    """

    initial: float = attrs.field(default=0.5, validator=_non_negative)
    maximum: float = attrs.field(default=30.0, validator=_non_negative)
    multiplier: float = attrs.field(default=2.0, validator=_non_negative)
    jitter: float = attrs.field(default=0.5, validator=_non_negative)

    def waits(self, count: int) -> list[float]:
        """The first ``count`` waits, without jitter.

        Example:
            >>> from optisync.outbox import Backoff
            >>> Backoff(initial=0.5).waits(3)
            [0.5, 1.0, 2.0]
        """
        strategy = self._exponential()
        return [strategy(_Attempt(n)) for n in range(1, count + 1)]

    def _exponential(self) -> Any:
        return _tenacity().wait_exponential(
            multiplier=self.initial, max=self.maximum, exp_base=self.multiplier
        )

    def tenacity_wait(self) -> Any:
        """These waits as a `tenacity <https://tenacity.readthedocs.io>`_ wait strategy.

        Example:
            >>> from optisync.outbox import Backoff
            >>> wait = Backoff(initial=1.0, jitter=0.0).tenacity_wait()
            >>> callable(wait)
            True
        """
        if self.jitter == 0:
            return self._exponential()
        return self._exponential() + _tenacity().wait_random(0, self.jitter)


def _tenacity() -> Any:
    try:
        import tenacity
    except ImportError as error:  # pragma: no cover - depends on the install
        raise ImportError("the outbox needs tenacity: pip install 'optisync[offline]'") from error
    return tenacity


@attrs.define
class _Attempt:
    """The one field of tenacity's retry state that its wait strategies read."""

    attempt_number: int


class Outbox:
    """The offline policy of one store: retry while unreachable, and report what is pending.

    Make it right after the store (before :meth:`Persistence.attach
    <optisync.persistence.Persistence.attach>`, whose resent keys then retry
    too). It applies to every declared field of the store.

    Args:
        store: the store, whose class declares synced fields.
        backoff: the waits between attempts.

    Example:
        >>> import asyncio
        >>> from optisync import Store
        >>> from optisync.fields import SyncRequest, SyncedValueWithPush
        >>> from optisync.outbox import Outbox
        >>> class Theme(Store[str]):
        ...     theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)
        ...
        ...     @theme.sender
        ...     async def send_theme(self, theme: str, request: SyncRequest) -> int:
        ...         return 1
        >>> async def main() -> None:
        ...     async with Theme("light") as store:
        ...         outbox = Outbox(store)
        ...         outbox.set_reachable(False)  # the transport says: offline
        ...         store.theme.set("dark")
        ...         await asyncio.sleep(0)
        ...         print(outbox.pending_keys(), outbox.unreachable_keys())
        ...         outbox.set_reachable(True)
        ...         await outbox.synced()
        ...         print(outbox.pending_keys(), store.theme.server_revision())
        >>> asyncio.run(main())
        frozenset({'theme'}) frozenset({'theme'})
        frozenset() 1
    """

    def __init__(self, store: Store[Any], *, backoff: Backoff | None = None) -> None:
        self.store = store
        self.backoff = Backoff() if backoff is None else backoff
        self._fields = store_fields(store)
        self._fields.attach_retrier(self)
        self._unreachable: set[Hashable] = set()
        self._reachable = asyncio.Event()
        self._reachable.set()
        self._wake: asyncio.Event | None = None
        self._listeners: dict[int, Callable[[], object]] = {}
        self._next_listener = 0
        self._fields.when_served(self._follow)

    def _follow(self, transport: Transport) -> None:
        # A served store's outbox knows what its transport knows: no attempt
        # while offline, every waiting key at once when it is back.
        self.set_reachable(transport.online)
        stop: Callable[[], None] | None = None

        def follow(online: bool) -> None:
            if self.store.is_closed and stop is not None:
                stop()  # a transport that outlives the store (a simulator's link) forgets us
                return
            self.set_reachable(online)

        stop = transport.subscribe_status(follow)

    # -- what the fields call ----------------------------------------------------

    def deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> Awaitable[R]:
        """Run ``attempt`` until it does not raise ``ConnectionError``. Used by the fields.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.outbox import Backoff, Outbox
            >>> async def main() -> None:
            ...     outbox = Outbox(Store(0), backoff=Backoff(initial=0.001, jitter=0))
            ...     calls = []
            ...     async def attempt() -> str:
            ...         calls.append(1)
            ...         if len(calls) == 1:
            ...             raise ConnectionError
            ...         return "sent"
            ...     print(await outbox.deliver("k", attempt), len(calls))
            >>> asyncio.run(main())
            sent 2
        """
        return self._deliver(key, attempt)

    async def _deliver(self, key: Hashable, attempt: Callable[[], Awaitable[R]]) -> R:
        tenacity = _tenacity()

        async def when_reachable() -> R:
            if not self._reachable.is_set():
                self._mark(key, unreachable=True)
                await self._reachable.wait()
            return await attempt()

        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception_type(ConnectionError),
            wait=self.backoff.tenacity_wait(),
            stop=tenacity.stop_never,
            sleep=self._sleep,
            before_sleep=lambda _: self._mark(key, unreachable=True),
            reraise=True,
        )
        try:
            result: R = await retrying(when_reachable)
        finally:
            self._mark(key, unreachable=False)
        return result

    async def _sleep(self, seconds: float) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
        wake = self._wake
        try:
            async with asyncio.timeout(seconds):
                await wake.wait()
        except TimeoutError:
            pass

    def _mark(self, key: Hashable, *, unreachable: bool) -> None:
        before = len(self._unreachable)
        if unreachable:
            self._unreachable.add(key)
        else:
            self._unreachable.discard(key)
        if len(self._unreachable) != before:
            for listener in tuple(self._listeners.values()):
                try:
                    listener()
                except Exception as error:  # a listener's bug must not stop a sync
                    self.store.on_error(error)

    # -- what the app calls ------------------------------------------------------

    def set_reachable(self, reachable: bool) -> None:
        """Tell the outbox what the transport knows: is the server reachable now?

        While unreachable, no attempt is made (the keys wait, pending); when
        it becomes reachable, every waiting key is sent at once, and every
        backoff in progress is cut short. Without a transport that knows,
        ``ConnectionError`` and backoff alone do the job.

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> outbox = Outbox(Store(0))
            >>> outbox.set_reachable(False)
            >>> outbox.is_reachable
            False
        """
        if reachable:
            self._reachable.set()
            self.retry_now()
        else:
            self._reachable.clear()

    @property
    def is_reachable(self) -> bool:
        """What :meth:`set_reachable` was last told (True at first).

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> Outbox(Store(0)).is_reachable
            True
        """
        return self._reachable.is_set()

    def retry_now(self) -> None:
        """Cut every backoff in progress short: each waiting key is attempted now.

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> Outbox(Store(0)).retry_now()  # nothing waits: nothing happens
        """
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def pending_keys(self) -> frozenset[Hashable]:
        """The keys of declared fields whose latest change the server has not taken yet.

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> Outbox(Store(0)).pending_keys()
            frozenset()
        """
        store = self.store
        return frozenset(
            key
            for bound in self._fields.by_name.values()
            for key, _ in bound.items()
            if store.is_syncing(key)
        )

    def unreachable_keys(self) -> frozenset[Hashable]:
        """The pending keys waiting for the server to be reachable again.

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> Outbox(Store(0)).unreachable_keys()
            frozenset()
        """
        return frozenset(self._unreachable)

    def subscribe(self, listener: Callable[[], object]) -> Callable[[], None]:
        """Call ``listener()`` when :meth:`unreachable_keys` becomes empty or not, and back.

        For an "offline" badge; a per-key "Saving..." listens to the store's
        ``subscribe_sync_status``. Returns a function that unsubscribes.

        Example:
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> outbox = Outbox(Store(0))
            >>> unsubscribe = outbox.subscribe(lambda: print(outbox.unreachable_keys()))
            >>> unsubscribe()
        """
        token = self._next_listener
        self._next_listener += 1
        self._listeners[token] = listener

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def synced(self) -> None:
        """Wait until no key of a declared field is pending.

        Each change was then taken by the server, or refused for good (and
        handled by ``on_finish``): nothing is left to send.

        Raises:
            StoreClosedError: the store closed before that.

        Example:
            >>> import asyncio
            >>> from optisync import Store
            >>> from optisync.outbox import Outbox
            >>> async def main() -> None:
            ...     async with Store(0) as store:
            ...         await Outbox(store).synced()  # nothing pending: returns at once
            ...         print("synced")
            >>> asyncio.run(main())
            synced
        """
        store = self.store
        changed = asyncio.Event()
        stop = store.subscribe_sync_status(lambda key: changed.set())
        try:
            while True:
                if store.is_closed:
                    raise StoreClosedError("The store was closed before everything was synced.")
                if not self.pending_keys():
                    return
                changed.clear()
                await changed.wait()
        finally:
            stop()
