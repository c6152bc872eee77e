"""The flags of ``python -m examples.live``: only the server, or one interactive device.

Run a server in one terminal and a device in each of two others::

    python -m examples.live --server --port 8765 --db live.sqlite3
    python -m examples.live --client ws://127.0.0.1:8765 --storage phone.sqlite3
    python -m examples.live --client ws://127.0.0.1:8765 --storage laptop.sqlite3

A device reads commands on its standard input: ``toggle ITEM``, ``set ITEM
JSON``, ``show``, ``drop`` (cut the connection), ``quit``. End of input quits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import threading
from pathlib import Path

from examples.live.client import LiveStore
from examples.live.protocol import (
    AckMessage,
    ErrorMessage,
    GetMessage,
    PushMessage,
    ReadyMessage,
    SetMessage,
    ValueMessage,
    canonical_json,
)
from examples.live.server import LiveServer
from optisync import PushOutcome

__all__ = ["run_client", "run_server"]

_PATIENCE = 3.0  # seconds to wait for the first connection, and for syncs at the end
_HELP = "commands: toggle ITEM | set ITEM JSON | show | drop | quit"


async def run_server(host: str, port: int, database: Path) -> None:
    """Serve until SIGINT or SIGTERM, printing every commit and replay.

    Example:
        >>> from examples.live.interactive import run_server
        >>> callable(run_server)
        True
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stop.set)
    server = LiveServer(database, trace=lambda line: print("server:", line, flush=True))
    await server.start(host, port)
    print(f"serving {server.url} with {database}; Ctrl-C stops", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(number)
    print("stopped")


class _ConsoleDevice(LiveStore):
    """A device that prints its traffic."""

    def on_connected(self, ready: ReadyMessage, replayed: int) -> None:
        print(f"connected: {replayed} changes replayed, server at revision {ready.server_revision}")

    def on_disconnected(self, error: BaseException | None) -> None:
        print(f"disconnected ({type(error).__name__ if error else 'closed'}); retrying")

    def on_sent(self, message: SetMessage | GetMessage) -> None:
        print(f"-> {type(message).__name__.removesuffix('Message').lower()} {message.item}")

    def on_ack(self, ack: AckMessage) -> None:
        print(f"<- ack {ack.item} revision {ack.server_revision}")

    def on_push(self, push: PushMessage, outcome: PushOutcome) -> None:
        mine = " (mine)" if push.device_id == self.device_id else ""
        print(
            f"<- push {push.item}={canonical_json(push.value)} revision "
            f"{push.server_revision}{mine}: {outcome.value}"
        )

    def on_reload(self, reply: ValueMessage, applied: bool) -> None:
        verdict = "applied" if applied else "kept"
        print(f"<- value {reply.item}={canonical_json(reply.value)}: {verdict}")

    def on_server_error(self, error: ErrorMessage) -> None:
        print(f"<- error {error.code}: {error.message}")

    def on_error(self, error: BaseException) -> None:
        print(f"failed: {type(error).__name__}: {error}")


def _read_lines(loop: asyncio.AbstractEventLoop, lines: asyncio.Queue[str | None]) -> None:
    # A daemon thread: a blocked readline() must not keep the process alive.
    for line in sys.stdin:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)


async def run_client(url: str, storage: Path) -> None:
    """Run one device against ``url``, driven by commands on standard input.

    Example:
        >>> from examples.live.interactive import run_client
        >>> callable(run_client)
        True
    """
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    async with _ConsoleDevice(url, storage_path=storage) as device:
        # Only once the storage file is ours (it may be refused as in use).
        threading.Thread(target=_read_lines, args=(loop, lines), daemon=True).start()
        print(f"device {device.device_id} ({storage}) -> {url}; {_HELP}")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PATIENCE):
                await device.wait_ready()
        while (line := await lines.get()) is not None:
            words = line.split(maxsplit=2)
            if not words:
                continue
            command, arguments = words[0], words[1:]
            if command == "quit":
                break
            with contextlib.suppress(Exception):  # the hooks already printed it
                _run_command(device, command, arguments)
        # Give the syncs in flight a moment to land before closing cancels them.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_PATIENCE):
                await device.wait_until(lambda: not device.unconfirmed_items)


def _run_command(device: LiveStore, command: str, arguments: list[str]) -> None:
    if command == "toggle" and len(arguments) == 1:
        device.toggle(arguments[0])
    elif command == "set" and len(arguments) == 2:
        try:
            value = json.loads(arguments[1])
        except ValueError:
            print("the value must be JSON, e.g. 42, true or '\"red\"'")
            return
        device.set_value(arguments[0], value)
    elif command == "show":
        for item, value in sorted(device.state.values.items()):
            revision = device.state.revisions.get(item, -1)
            print(f"  {item} = {canonical_json(value)} (revision {revision})")
    elif command == "drop":
        device.drop_connection()
    else:
        print(_HELP)
