"""The demo's output: a timeline in side-by-side columns, and what each device says in it.

Example:
    >>> import io
    >>> from examples.live.timeline import Timeline
    >>> out = io.StringIO()
    >>> timeline = Timeline(out, clock=lambda: 0.0)
    >>> timeline.add(1, "tap like=true (request)")
    >>> print(out.getvalue().rstrip())
         0 |                                         | tap like=true (request)
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TextIO

from examples.live.client import LiveDevice, item_of, wire_of
from optisync import PushOutcome
from optisync.client import Traced
from optisync.server import Change
from optisync.server.protocol import canonical_json
from optisync.transport import store_key
from optisync.wire import (
    Committed,
    Error,
    Get,
    Hello,
    Push,
    Ready,
    Set,
    Value,
)

__all__ = ["Narrator", "Timeline", "describe", "matches", "print_table", "show", "tap"]

_WIDTH = 42


def show(value: Any) -> str:
    """A value as the timeline prints it: its JSON, or ``-`` for none.

    Example:
        >>> from examples.live.timeline import show
        >>> show("red"), show(None)
        ('"red"', '-')
    """
    return "-" if value is None else canonical_json(value).decode()


def describe(event: Traced, outcome: PushOutcome | None = None) -> str:
    """One protocol message as a line (``""`` for the welcome: the ready line says the rest).

    A device's messages are about items: the line names the item
    (``like``), not the key the server keeps it under (``values/like``).

    Example:
        >>> from optisync.client import Traced
        >>> from optisync.wire import Set
        >>> from examples.live.timeline import describe
        >>> sent = Set(request_id=1, key="values/like", value=True, local_revision=2)
        >>> describe(Traced("sent", sent))
        '-> set like=true lr 2'
    """
    message = event.message
    if isinstance(message, Push):
        whose = " mine" if message.device_id else ""
        verdict = f": {outcome.value}" if outcome else ""
        revision = message.server_revision
        return f"<- push {_item(message.key)}={show(message.value)} r{revision}{whose}{verdict}"
    line = _LINES.get(type(message))
    return "" if line is None else line(message)


def _item(key: str) -> str:
    return item_of(key) or key


# Each message but the push (which has an outcome too) and the welcome, as a line.
_LINES: dict[type, Callable[[Any], str]] = {
    Hello: lambda m: f"-> hello since {m.since}",
    Set: lambda m: f"-> set {_item(m.key)}={show(m.value)} lr {m.local_revision}",
    Get: lambda m: f"-> get {_item(m.key)} (reload)",
    Committed: lambda m: f"<- ack {_item(m.key)} rev {m.server_revision}",
    Ready: lambda m: f"connected, rev {m.server_revision}",
    Value: lambda m: f"<- value {_item(m.key)}={show(m.value)} r{m.server_revision}",
    Error: lambda m: f"<- error {m.code}: {m.message}",
}


class Timeline:
    """Lines in columns (0: the server, then one per device), with the time since the start."""

    def __init__(self, out: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._start = clock()

    def header(self, titles: Sequence[str]) -> None:
        """Print the column titles."""
        cells = "".join(f"| {title:<{_WIDTH - 2}}" for title in titles).rstrip()
        rule = ("+" + "-" * (_WIDTH - 1)) * len(titles)
        self._out.write(f"{'ms':>6} {cells}\n{'-' * 6} {rule}\n")

    def step(self, title: str) -> None:
        """Print a step of the script across the whole width."""
        self._out.write(f"\n== {title}\n")

    def note(self, text: str) -> None:
        """Print a line of its own, outside the columns."""
        self._out.write(f"{text}\n")

    def add(self, column: int, text: str) -> None:
        """Print ``text`` in ``column``."""
        elapsed = round((self._clock() - self._start) * 1000)
        cells = [""] * (column + 1)
        cells[column] = text if len(text) <= _WIDTH - 3 else text[: _WIDTH - 4] + "~"
        row = "".join(f"| {cell:<{_WIDTH - 2}}" for cell in cells).rstrip()
        self._out.write(f"{elapsed:>6} {row}\n")


class Narrator:
    """Says in one column what a device sends, receives and does.

    Pass :meth:`trace` as the device's ``trace`` and :meth:`error` as its
    ``on_error``, then :meth:`watch` the device once it is built.

    Example:
        >>> import io
        >>> from examples.live.timeline import Narrator, Timeline
        >>> from optisync.client import Traced
        >>> from optisync.wire import Committed
        >>> out = io.StringIO()
        >>> ack = Committed(request_id=1, key="values/like", value=True, server_revision=4)
        >>> Narrator(Timeline(out, clock=lambda: 0.0), 2).trace(Traced("received", ack))
        >>> out.getvalue().split("|")[-1].strip()
        '<- ack like rev 4'
    """

    def __init__(self, timeline: Timeline, column: int) -> None:
        self._timeline = timeline
        self._column = column
        self._replayed = 0
        self._was_online = False
        self._device: LiveDevice | None = None

    def say(self, text: str) -> None:
        """Print ``text`` in this device's column."""
        self._timeline.add(self._column, text)

    def watch(self, device: LiveDevice) -> None:
        """Say when ``device`` goes offline, and what each of its pushes did."""
        self._device = device
        device.client.subscribe_status(self._status)

    def error(self, error: BaseException) -> None:
        """Say that a request nobody awaited failed."""
        self.say(f"failed: {type(error).__name__}")

    def trace(self, event: Traced) -> None:
        """Say what one protocol message was (a ``trace`` for the device's client)."""
        message = event.message
        if isinstance(message, Hello):
            self._replayed = 0
        elif isinstance(message, Push):
            self._replayed += 1
        elif isinstance(message, Ready):
            self.say(f"connected, {self._replayed} replayed, rev {message.server_revision}")
            return
        outcome = None
        if isinstance(message, Push) and self._device is not None:
            outcome = self._device.store.push_outcomes.get(store_key(message.key))
        text = describe(event, outcome)
        if text:
            self.say(text)

    def _status(self, online: bool) -> None:
        if online:
            self._was_online = True
        elif self._was_online:
            self._was_online = False
            self.say("disconnected")


def matches(device: LiveDevice, database: Mapping[str, Change], item: str) -> bool:
    """Whether ``device`` shows ``item`` as ``database`` holds it: value and revision.

    Example:
        >>> from examples.live.timeline import matches
        >>> callable(matches)
        True
    """
    change = database.get(wire_of(item))
    if change is None:
        return item not in device.values
    value = canonical_json(device.value(item))
    return value == change.value and device.revision(item) == change.server_revision


def print_table(
    out: TextIO,
    names: Sequence[str],
    devices: Sequence[LiveDevice],
    database: Mapping[str, Change],
    items: Sequence[str] | None = None,
) -> bool:
    """Print each item in the database and on each device; return whether all are equal.

    ``database`` holds the server's keys (``values/like``); the table shows items.

    Example:
        >>> import io
        >>> from examples.live.timeline import print_table
        >>> print_table(io.StringIO(), [], [], {})
        True
    """
    in_database = {item for key in database if (item := item_of(key)) is not None}
    shown = sorted(in_database.union(*(d.values for d in devices))) if items is None else items
    out.write("\nFinal state (value @ server revision; the database keeps item X as values/X)\n")
    titles = "".join(f"| {title:<18}" for title in ["database", *names])
    out.write(f"{'item':<8}{titles}| check\n")
    all_equal = True
    for item in shown:
        change = database.get(wire_of(item))
        cells = ["-" if change is None else f"{change.value.decode()} @ {change.server_revision}"]
        cells += [f"{show(device.value(item))} @ {device.revision(item)}" for device in devices]
        equal = all(matches(device, database, item) for device in devices)
        all_equal = all_equal and equal
        row = "".join(f"| {cell:<18}" for cell in cells)
        out.write(f"{item:<8}{row}| {'equal' if equal else 'DIFFERENT'}\n")
    for name, device in zip(names, devices, strict=True):
        if device.unconfirmed_items:
            all_equal = False
            out.write(f"unconfirmed on {name}: {sorted(device.unconfirmed_items)}\n")
    return all_equal


def tap(device: LiveDevice, narrator: Narrator, item: str, value: Any = None) -> Awaitable[None]:
    """Toggle ``item`` (or set it to ``value``) on ``device`` and say so.

    Example:
        >>> from examples.live.timeline import tap
        >>> callable(tap)
        True
    """
    busy = "coalesced" if item in device.unconfirmed_items else "request"
    result = device.toggle(item) if value is None else device.set_value(item, value)
    narrator.say(f"tap {item}={show(device.value(item))} ({busy})")
    return result
