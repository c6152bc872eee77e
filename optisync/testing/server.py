"""A last-write-wins server that numbers its commits and pushes each one to every device."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import attrs

from optisync.errors import ArgumentTypeError
from optisync.revisions import PushMetadata

__all__ = ["Commit", "SimulatedServer"]


@attrs.frozen
class Commit:
    """One write the server accepted: what it stores, and what it pushes.

    Attributes:
        key: the key written.
        value: the value now stored for ``key`` (typed ``Any``: your state
            knows what it wrote).
        server_revision: the server's revision after this write; it increases
            with every commit, whatever the key.
        local_revision: the writer's local revision, sent with the write.
        device_id: the writer's device id.

    Example:
        >>> from optisync.testing import Commit
        >>> commit = Commit("like", True, server_revision=3, local_revision=1, device_id=7)
        >>> commit.push_metadata
        PushMetadata(server_revision=3, local_revision=1, device_id=7)
    """

    key: Hashable
    value: Any
    server_revision: int
    local_revision: int
    device_id: int

    @property
    def push_metadata(self) -> PushMetadata:
        """The metadata to hand to ``Store.server_push``.

        Example:
            >>> from optisync.testing import Commit
            >>> Commit("k", 1, 5, 2, 9).push_metadata.server_revision
            5
        """
        return PushMetadata(
            server_revision=self.server_revision,
            local_revision=self.local_revision,
            device_id=self.device_id,
        )


class SimulatedServer:
    """Last write wins per key; one revision counter that only goes up.

    Every :meth:`write` is a :class:`Commit`: it is stored, logged, and handed to
    every subscriber (the network pushes it to every connected device, the
    writer included, so devices receive echoes of their own writes). The server
    itself never fails: failures and delays belong to
    :class:`~optisync.testing.SimulatedNetwork`. A delete is a write of
    :data:`~optisync.DELETED`: kept as the key's value (a tombstone) and
    pushed like any other, so :meth:`value` reads ``DELETED``.

    Example:
        >>> from optisync.testing import SimulatedServer
        >>> server = SimulatedServer()
        >>> server.write("like", True, local_revision=1, device_id=7).server_revision
        1
        >>> server.write("like", False, local_revision=1, device_id=8).server_revision
        2
        >>> server.value("like"), server.revision_of("like")
        (False, 2)
    """

    def __init__(self) -> None:
        self._latest: dict[Hashable, Commit] = {}
        self._log: list[Commit] = []
        self._subscribers: list[Callable[[Commit], None]] = []

    @property
    def revision(self) -> int:
        """The revision of the newest commit, over all keys (0 before any).

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> SimulatedServer().revision
            0
        """
        return len(self._log)

    @property
    def log(self) -> Sequence[Commit]:
        """Every commit, oldest first; ``log[r - 1]`` has revision ``r``.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> server = SimulatedServer()
            >>> _ = server.write("a", 1, local_revision=1, device_id=1)
            >>> [c.value for c in server.log]
            [1]
        """
        return tuple(self._log)

    def keys(self) -> list[Hashable]:
        """The keys written so far, in the order of their first write.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> server = SimulatedServer()
            >>> _ = server.write("b", 1, local_revision=1, device_id=1)
            >>> server.keys()
            ['b']
        """
        return list(self._latest)

    def latest(self, key: Hashable) -> Commit | None:
        """The commit that holds ``key``'s value, or ``None`` if it was never written.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> SimulatedServer().latest("nothing") is None
            True
        """
        return self._latest.get(key)

    def value(self, key: Hashable, default: Any = None) -> Any:
        """The value stored for ``key`` (``default`` if never written).

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> SimulatedServer().value("k", default=0)
            0
        """
        commit = self._latest.get(key)
        return default if commit is None else commit.value

    def revision_of(self, key: Hashable) -> int:
        """The server revision of ``key``'s value, -1 if it was never written.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> SimulatedServer().revision_of("k")
            -1
        """
        commit = self._latest.get(key)
        return -1 if commit is None else commit.server_revision

    def commits_after(self, revision: int) -> list[Commit]:
        """The commits newer than ``revision``, oldest first (what a reconnect replays).

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> server = SimulatedServer()
            >>> for n in range(3):
            ...     _ = server.write("k", n, local_revision=n, device_id=1)
            >>> [c.server_revision for c in server.commits_after(1)]
            [2, 3]
        """
        return self._log[max(revision, 0) :]

    def write(self, key: Hashable, value: object, *, local_revision: int, device_id: int) -> Commit:
        """Store ``value`` for ``key`` (last write wins), push it, and return the commit.

        An unhashable ``key`` raises :class:`~optisync.ArgumentTypeError` and changes nothing.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> server = SimulatedServer()
            >>> server.subscribe(lambda c: print("push", c.key, c.value, c.server_revision))
            >>> _ = server.write("k", "v", local_revision=1, device_id=1)
            push k v 1
        """
        try:
            hash(key)  # an unhashable key fails here, before the log or any device sees it
        except TypeError:
            raise ArgumentTypeError(
                f"a key must be hashable (a str, say), got {type(key).__name__}"
            ) from None
        commit = Commit(key, value, len(self._log) + 1, local_revision, device_id)
        self._log.append(commit)
        self._latest[key] = commit
        for subscriber in tuple(self._subscribers):
            subscriber(commit)
        return commit

    def subscribe(self, subscriber: Callable[[Commit], None]) -> None:
        """Call ``subscriber(commit)`` for every commit from now on.

        Example:
            >>> from optisync.testing import SimulatedServer
            >>> server = SimulatedServer()
            >>> seen = []
            >>> server.subscribe(seen.append)
            >>> _ = server.write("k", 1, local_revision=1, device_id=1)
            >>> len(seen)
            1
        """
        self._subscribers.append(subscriber)
