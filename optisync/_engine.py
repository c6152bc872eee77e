"""The sync machinery every strategy shares.

A :class:`SyncEngine` belongs to one store. It keeps each key's bookkeeping
(local and server revisions, the lock), applies taps, and runs each lock
cycle in a task it owns: it frees the key in a ``finally``, runs
``on_finish`` once, hands the outcome to awaiters, and cancels everything on
close. The strategies (``optimistic_sync``, ``optimistic_sync_with_push``,
``optimistic_command``) talk to it through the methods below and never see
the store's internals; the engine sees the store only through :class:`Host`,
which is the store's public API.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from optisync._loop import LoopBinding, is_being_cancelled, report
from optisync._tasks import Cycle, CycleResult
from optisync._types import OnFinish
from optisync.errors import (
    ArgumentTypeError,
    CommandInProgressError,
    RequestCancelledError,
    StateError,
    StoreClosedError,
)
from optisync.revisions import revision_from_state

__all__ = ["Host", "KeyState", "Requests", "SyncEngine"]

S = TypeVar("S")
T = TypeVar("T")


class Requests(Protocol):
    """One lock cycle's requests, as its strategy decides them, in plain methods."""

    def first(self) -> Awaitable[Any]:
        """The first request (the send's awaitable)."""

    def request_done(self) -> None:
        """Called when a request ends, whether it succeeded or not."""

    def next(self, response: Any) -> Awaitable[Any] | None:
        """After a response: the follow-up request, or None when the key is stable."""

    def failed(self, error: Exception) -> Awaitable[None] | None:
        """After a failure, with the lock still held: what to await first (a rollback), if any."""


def _chained(error: Exception, cause: Exception | None) -> Exception:
    """``error``, which replaces ``cause``, with ``cause`` as its context."""
    if error.__context__ is None and error is not cause:
        error.__context__ = cause
    return error


class Host(Protocol[S]):
    """What the engine needs of its store: the Cubit part of the public API."""

    @property
    def state(self) -> S: ...

    @property
    def device_id(self) -> int: ...

    @property
    def is_closed(self) -> bool: ...

    def emit(self, state: S) -> None: ...

    def on_error(self, error: BaseException) -> None: ...


class KeyState:
    """One key's bookkeeping. Read it through the store's per-key status methods."""

    __slots__ = ("command", "from_push", "local_revision", "locked", "server_revision")

    def __init__(self, local_revision: int) -> None:
        self.local_revision = local_revision
        self.server_revision = -1
        # Whether the key's latest change came from a push (then a request in
        # flight gets no follow-up: the push is the server's newer word).
        self.from_push = False
        self.locked = False
        # Whether the lock is an optimistic_command's, which nothing may join.
        self.command = False


class CycleTask(asyncio.Task[None]):
    """A lazily started cycle's task, which frees its cycle if cancelled before it starts.

    A task cancelled before its first step never runs its coroutine, so the
    cycle's ``finally`` cannot free the key. Whoever cancels it (close(), the
    loop's shutdown, an app cancelling "all other tasks") goes through
    :meth:`cancel`, which frees it then: cheaper than a done callback on
    every cycle, which only this rare case needs.
    """

    __slots__ = ("cycle", "engine")

    engine: SyncEngine[Any]
    cycle: Cycle

    def cancel(self, msg: Any = None) -> bool:
        if not self.done() and not self.cycle.started:
            self.engine.free_never_started(self)
        return super().cancel(msg)


class SyncEngine(Generic[S]):
    """Per-key revisions and locks, and the lock cycles of one store."""

    __slots__ = (
        "binding",
        "eager_start",
        "host",
        "keys",
        "local_revision_base",
        "next_token",
        "on_undelivered",
        "status_listeners",
        "tasks",
    )

    def __init__(
        self,
        host: Host[S],
        binding: LoopBinding,
        *,
        eager_start: bool = False,
        local_revision_base: int = 0,
    ) -> None:
        self.host = host
        self.binding = binding
        self.keys: dict[Hashable, KeyState] = {}
        self.tasks: dict[asyncio.Task[None], Cycle] = {}
        self.status_listeners: dict[int, Callable[[Hashable], object]] = {}
        self.next_token = 0
        self.eager_start = eager_start
        # Every key's local revision starts here (see Store's local_revision_base).
        self.local_revision_base = local_revision_base
        # One bound method for every cycle, rather than a new one per cycle.
        self.on_undelivered = self.report_undelivered

    # -- per-key status ------------------------------------------------------

    def key_state(self, key: Hashable) -> KeyState:
        state = self.keys.get(key)
        if state is None:
            state = self.keys[key] = KeyState(self.local_revision_base)
        return state

    def subscribe_status(self, listener: Callable[[Hashable], object]) -> Callable[[], None]:
        if not callable(listener):
            raise ArgumentTypeError(f"listener must be callable, got {type(listener).__name__}")
        token = self.next_token
        self.next_token += 1
        self.status_listeners[token] = listener

        def unsubscribe() -> None:
            self.status_listeners.pop(token, None)

        return unsubscribe

    def status_changed(self, key: Hashable) -> None:
        if not self.status_listeners:
            return
        for listener in tuple(self.status_listeners.values()):
            try:
                listener(key)
            except Exception as error:  # a listener's bug must not break a sync
                report(self.host.on_error, error)

    def seed_server_revision(self, key: Hashable, key_state: KeyState, revision: int) -> bool:
        """Raise the key's known server revision to ``revision``; whether it rose."""
        if revision <= key_state.server_revision:
            return False
        key_state.server_revision = revision
        return True

    def forget_server_revisions(self) -> None:
        for key_state in self.keys.values():
            key_state.server_revision = -1

    def forget_idle_keys(self, keys: Iterable[Hashable] | None) -> int:
        forget = list(self.keys) if keys is None else list(keys)
        forgotten = 0
        for key in forget:
            key_state = self.keys.get(key)
            if key_state is not None and not key_state.locked:
                del self.keys[key]
                forgotten += 1
        return forgotten

    # -- taps ----------------------------------------------------------------

    def coalesce(
        self,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
    ) -> bool:
        """The hot path: a tap on a key whose request is in flight.

        Applies and counts the tap, which the cycle in flight will see as a
        follow-up, and returns True; returns False, doing nothing, when the
        key is free. Kept to a dict lookup and an emit (no scans).
        """
        try:
            key_state = self.keys.get(key)
        except TypeError:
            raise ArgumentTypeError(
                f"key must be hashable, got {type(key).__name__}: {key!r}"
            ) from None
        if key_state is None or not key_state.locked:
            return False
        if threading.get_ident() != self.binding.thread:
            self.binding.check_thread()
        if key_state.command:
            raise CommandInProgressError(key)
        host = self.host
        if host.is_closed:
            raise StoreClosedError("Cannot start a sync: the store is closed.")
        new_state = apply_optimistic_value_to_state(host.state, value_to_apply())
        self.count_tap(key, key_state, new_state, take_lock=False)
        return True

    def take_lock(
        self,
        key: Hashable,
        value_to_apply: Callable[[], T],
        apply_optimistic_value_to_state: Callable[[S, T], S],
        *,
        seed_from: Callable[[Any], int] | None = None,
        command: bool = False,
    ) -> tuple[KeyState, T, int]:
        """A tap on a free key: apply and count it, and take the key's lock.

        ``seed_from`` (``get_server_revision_from_state``) gives the server
        revision the state holds, which raises the key's known one. Returns
        the key's state, the value applied and the local revision it got.
        Nothing changes if a callback raises. ``command``: the lock is an
        optimistic_command's.
        """
        if self.host.is_closed:
            raise StoreClosedError("Cannot start a sync: the store is closed.")
        self.binding.bind()
        seed = -1 if seed_from is None else revision_from_state(seed_from, key)
        value = value_to_apply()
        new_state = apply_optimistic_value_to_state(self.host.state, value)
        key_state = self.key_state(key)
        if seed > key_state.server_revision:
            key_state.server_revision = seed
        revision = self.count_tap(key, key_state, new_state, take_lock=True, command=command)
        return key_state, value, revision

    def count_tap(
        self,
        key: Hashable,
        key_state: KeyState,
        new_state: S,
        *,
        take_lock: bool,
        command: bool = False,
    ) -> int:
        """Count a tap, take the lock if asked, and emit; undo it all if on_change vetoes.

        Returns the local revision this tap got (read before the emit: a
        listener may tap the same key again during it).
        """
        from_push = key_state.from_push
        key_state.local_revision += 1
        revision = key_state.local_revision
        key_state.from_push = False
        # Take the lock before emit: a listener that taps the same key
        # re-entrantly must be coalesced, not start a second request.
        if take_lock:
            key_state.locked = True
            key_state.command = command
        try:
            self.host.emit(new_state)
        except BaseException:
            # on_change vetoed the tap (a listener's error never gets here):
            # it never happened, so it must not cause a follow-up either.
            if take_lock:
                key_state.locked = key_state.command = False
            key_state.local_revision -= 1
            key_state.from_push = from_push
            raise
        if self.status_listeners:  # skip the call when nobody listens
            self.status_changed(key)
        return revision

    # -- lock cycles ---------------------------------------------------------

    def start_cycle(
        self,
        key: Hashable,
        key_state: KeyState,
        on_finish: OnFinish[S] | None,
        requests: Requests,
    ) -> CycleResult:
        """Run the key's lock cycle, whose requests ``requests`` decides, in a task it owns."""
        loop = self.binding.loop
        assert loop is not None
        assert key_state.locked
        cycle = Cycle(key, self.on_undelivered)
        coro = self.run_cycle(cycle, key_state, on_finish, requests)
        try:
            if self.eager_start and sys.version_info >= (3, 12):
                # Runs up to the send's first await right here, as Dart does.
                task = asyncio.Task(coro, loop=loop, eager_start=True)
            else:
                task = CycleTask(coro, loop=loop)
                task.engine = self
                task.cycle = cycle
        except BaseException:
            coro.close()
            key_state.locked = key_state.command = False
            raise
        cycle.task = task
        if not task.done():  # an eager cycle may have ended inside create_task
            self.tasks[task] = cycle
        return CycleResult(cycle)

    async def run_cycle(
        self,
        cycle: Cycle,
        key_state: KeyState,
        on_finish: OnFinish[S] | None,
        requests: Requests,
    ) -> None:
        """The cycle's task: the requests, the key freed, on_finish, the outcome handed out.

        One coroutine per cycle: the strategy decides each request in plain
        methods, so no coroutine of its own is held while a request is in flight.
        """
        cycle.started = True
        error: Exception | None = None
        try:
            try:
                try:
                    request: Awaitable[Any] | None = requests.first()
                    while request is not None:
                        try:
                            response = await request
                        finally:
                            requests.request_done()
                        request = requests.next(response)
                except asyncio.CancelledError as cancelled:
                    error = self.failure_of(cycle.key, cancelled)
                except Exception as failure:
                    error = failure
                if error is not None:
                    recovery = requests.failed(error)  # the lock is still held
                    if recovery is not None:
                        await recovery
            except Exception as failure:  # the recovery itself failed
                error = _chained(failure, error)
            finally:
                key_state.locked = key_state.command = False
                if self.status_listeners:
                    self.status_changed(cycle.key)
            if on_finish is not None:
                try:
                    await self.finish(cycle, key_state, on_finish, error)
                except Exception as failure:  # on_finish's error replaces the cycle's
                    error = _chained(failure, error)
        except BaseException as stop:  # cancelled by close() or the loop's shutdown
            self.end(cycle, stop)
            raise
        self.end(cycle, error)

    def end(self, cycle: Cycle, outcome: BaseException | None) -> None:
        """The cycle's last act: forget its task and hand the outcome out."""
        if cycle.task is not None:
            self.tasks.pop(cycle.task, None)
        handed = cycle.finish(outcome)
        if isinstance(outcome, Exception) and not handed:
            # Nobody waits now; a caller may still await it in this turn.
            asyncio.get_running_loop().call_soon(self.on_undelivered, cycle)

    def report_undelivered(self, cycle: Cycle) -> None:
        if cycle.error is not None and not cycle.delivered:
            report(self.host.on_error, cycle.error)

    def failure_of(self, key: Hashable, cancelled: asyncio.CancelledError) -> Exception:
        """What a ``CancelledError`` out of a callback means for the cycle.

        If close() or the loop's shutdown cancelled the cycle, it stands: it
        is raised again. If nobody did, a callback raised it on its own (say,
        a client whose task was cancelled): that is a failed request, and
        must not look like our cancellation.
        """
        if self.host.is_closed or is_being_cancelled():
            raise cancelled
        failure = RequestCancelledError(key)
        failure.__cause__ = cancelled
        return failure

    async def finish(
        self,
        cycle: Cycle,
        key_state: KeyState,
        on_finish: OnFinish[S],
        error: Exception | None,
    ) -> None:
        taps = key_state.local_revision
        try:
            result = on_finish(error)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError as cancelled:
            raise self.failure_of(cycle.key, cancelled) from cancelled
        if result is None or self.host.is_closed:
            return
        if key_state.local_revision != taps:
            # The key was tapped while on_finish ran: that tap is on screen and
            # on its way to the server, and newer than whatever on_finish read.
            return
        self.host.emit(result)

    def free_never_started(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs the cycle's
        # finally: free its key and tell its awaiters here.
        cycle = self.tasks.pop(task, None)
        if cycle is None:
            return
        cycle.finish(asyncio.CancelledError())
        key_state = self.keys.get(cycle.key)
        if key_state is not None and key_state.locked:
            key_state.locked = key_state.command = False
            self.status_changed(cycle.key)

    async def close(self, timeout: float | None) -> None:  # noqa: ASYNC109 - see Store.close
        """Cancel every cycle and wait for them, ``timeout`` seconds at most."""
        current = asyncio.current_task()
        tasks = [task for task in self.tasks if task is not current]
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            key = self.tasks[task].key
            report(
                self.host.on_error,
                StateError(
                    f"The sync of key {key!r} did not stop when close() cancelled it "
                    f"(a callback swallowed the cancellation); close() stopped waiting "
                    f"after {timeout} s and left it running."
                ),
            )
