"""``python -m examples.live --client URL --storage FILE``: one device, driven by commands.

Run a server in one terminal and a device in each of two others::

    python -m examples.live --server --port 8765 --db live.sqlite3
    python -m examples.live --client ws://127.0.0.1:8765 --storage phone.sqlite3
    python -m examples.live --client ws://127.0.0.1:8765 --storage laptop.sqlite3

A device reads commands on its standard input: ``toggle ITEM``, ``set ITEM
VALUE`` (the rest of the line, no quotes: ``42``, ``true`` and other JSON
are read as such, anything else as text), ``show``, ``quit``. End of input quits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from pathlib import Path
from typing import Any

from examples.live.client import LiveDevice, NotABooleanError
from examples.live.timeline import describe, show
from optisync.client import Traced
from optisync.wire import Hello

__all__ = ["run_client"]

_PATIENCE = 3.0  # seconds to wait for the first connection, and for syncs at the end
_HELP = "commands: toggle ITEM | set ITEM VALUE (e.g. set color dark red) | show | quit"


def _print_traffic(event: Traced) -> None:
    if not isinstance(event.message, Hello) and (line := describe(event)):
        print(line)


def _read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    # A daemon thread: a blocked readline() must not keep the process alive.
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def run_client(url: str, storage: Path) -> None:
    """Run one device against ``url``, driven by commands on standard input.

    Raises:
        optisync.device.StorageInUseError: another device has ``storage`` open.
    """
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    quitting = False

    def on_status(online: bool) -> None:
        if not (online or quitting):
            print("disconnected; retrying")

    def on_error(error: BaseException) -> None:
        print(f"failed: {type(error).__name__}: {error}")

    async with LiveDevice.open(url, storage, trace=_print_traffic, on_error=on_error) as device:
        device.client.subscribe_status(on_status)
        # Only once the storage file is ours (it may be refused as in use).
        threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
        print(f"device {device.device_id} ({storage}) -> {url}; {_HELP}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PATIENCE):
                await device.client.wait_online()
        while (line := await lines.get()) is not None:
            words = line.split(maxsplit=2)
            if words and words[0] == "quit":
                break
            if words:
                _run_command(device, words[0], words[1:])
        # Give the syncs in flight a moment to land; what is left stays in the outbox,
        # saved, and is sent on the next start.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PATIENCE):
                await device.wait_until(lambda: not device.unconfirmed_items)
        quitting = True  # the disconnect that closing makes is not news


def _value(text: str) -> Any:
    """``42``, ``true``, ``"quoted"`` and other JSON as such; any other text as a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _run_command(device: LiveDevice, command: str, arguments: list[str]) -> None:
    if command == "toggle" and len(arguments) == 1:
        try:
            device.toggle(arguments[0])
        except NotABooleanError as error:
            print(error)
    elif command == "set" and len(arguments) == 2:
        device.set_value(arguments[0], _value(arguments[1].strip()))
    elif command == "show":
        for item, value in sorted(device.values.items()):
            print(f"  {item} = {show(value)} (revision {device.revision(item)})")
    else:
        print(_HELP)
