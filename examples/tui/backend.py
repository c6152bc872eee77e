"""What the demo needs from a server: the :class:`Backend` interface and its record.

The app talks to the server only through this interface, so the in-process
simulated server (:mod:`examples.tui.simulated`) and a live server can be
swapped by a command-line flag.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

__all__ = ["Backend", "RequestFailedError", "ServerRecord"]


@attrs.frozen
class ServerRecord:
    """The liked flag as the server's database holds it.

    Attributes:
        liked: the value.
        revision: the server revision of the value (0: never written).
        device_id: the device that wrote it last (None: nobody yet).
        local_revision: the local revision that device sent with the write.

    Example:
        >>> record = ServerRecord(liked=True, revision=3, device_id=7, local_revision=1)
        >>> ServerRecord.from_json(record.to_json()) == record
        True
    """

    liked: bool = False
    revision: int = 0
    device_id: int | None = None
    local_revision: int = 0

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this record."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerRecord:
        """The record a :meth:`to_json` dict describes."""
        device_id = data["device_id"]
        return cls(
            liked=bool(data["liked"]),
            revision=int(data["revision"]),
            device_id=None if device_id is None else int(device_id),
            local_revision=int(data["local_revision"]),
        )


class RequestFailedError(Exception):
    """A request to the server failed (the simulated failure, or a network error).

    Example:
        >>> str(RequestFailedError("the server said no"))
        'the server said no'
    """


class Backend(Protocol):
    """The server as the demo app sees it.

    The first group serves the app's store (requests and pushes); the second
    serves the bottom half of the screen (the database and its controls).

    Example:
        >>> from examples.tui.simulated import SimulatedServer
        >>> backend: Backend = SimulatedServer()
        >>> backend.database.revision
        0
    """

    # -- for the store -------------------------------------------------------

    async def write(self, liked: bool, *, local_revision: int, device_id: int) -> ServerRecord:
        """Set the value as ``device_id``; return the record the server stored.

        Raises:
            RequestFailedError: the request failed; nothing was stored.
        """
        ...

    async def read(self) -> ServerRecord:
        """Fetch the current record (the reload after an error)."""
        ...

    def subscribe_pushes(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Call ``listener`` with every record the server pushes; return an unsubscribe."""
        ...

    # -- for the database panel ----------------------------------------------

    @property
    def database(self) -> ServerRecord:
        """What the server's database holds now."""
        ...

    def watch_database(self, listener: Callable[[ServerRecord], object]) -> Callable[[], None]:
        """Call ``listener`` after every change of the database (pushes on or off)."""
        ...

    push_enabled: bool
    """Whether the server pushes database changes to the app."""

    latency: float
    """Seconds a response takes to come back."""

    fail_next_request: bool
    """Whether the app's next request fails (then it resets itself)."""

    @property
    def other_device_id(self) -> int:
        """The id of the "other device" whose writes the bottom half makes."""
        ...

    @property
    def description(self) -> str:
        """Which server this is, for the screen (e.g. "live server ws://127.0.0.1:8765")."""
        ...

    async def write_as_other_device(self, liked: bool) -> ServerRecord:
        """Set the value as the other device, as if someone used another phone."""
        ...

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Connect (nothing to do for an in-process server)."""
        ...

    async def aclose(self) -> None:
        """Disconnect and free every resource."""
        ...
