"""Attackers for tests/server/test_adversarial.py, in a process of their own.

Run as ``python -m tests.server.adversaries KIND URL COUNT``: COUNT attackers
of KIND (``replay`` or ``flood``) from 127.0.0.3, driven line by line on
stdin, so that their work never delays the honest device the test times:

- ``go``: start; the process answers ``engaged`` once every attacker is past
  its first connection;
- ``stop``: every attacker ends its connection and returns; answers ``stopped``;
- ``report``: answers one line of JSON with what the attackers saw, and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

ATTACKER = "127.0.0.3"


async def close(connection: ClientConnection) -> None:
    """Close, unless the server already did (websockets may then fail in ``abort``)."""
    if connection.close_code is None:
        with contextlib.suppress(AttributeError):  # its transport already gone
            await connection.close()


async def open_device(
    url: str,
    device_id: int,
    *,
    source: str,
    since: int = 0,
    hello_sent: Callable[[], object] = lambda: None,
) -> tuple[ClientConnection, list[str]]:
    """A device from ``source`` past its welcome and replay; the frames of its replay."""
    connection = await connect(url, local_addr=(source, 0), compression=None, max_size=None)
    try:
        await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": since}))
        hello_sent()
        welcome = json.loads(await connection.recv())
        if welcome["type"] != "welcome":
            await connection.close()
            raise ConnectionRefusedError(welcome)
        replay: list[str] = []
        while True:
            frame = str(await connection.recv())
            if json.loads(frame)["type"] == "ready":
                return connection, replay
            replay.append(frame)
    except asyncio.CancelledError:
        # Stopped while the server holds it: end it, as every attacker's
        # connection ends with its phase (else it stays open, held, unread).
        connection.transport.abort()
        raise


class Attack:
    """What an attacker is given: when to stop, and a way to say it is under way."""

    def __init__(self, attackers: int) -> None:
        self.stop = asyncio.Event()
        self.engaged = asyncio.Event()
        self._waiting = set(range(attackers))

    def under_way(self, attacker: int) -> None:
        """Attacker ``attacker`` is past its first connection (the first frame of its
        replay, the first answer to its flood): measuring may start."""
        self._waiting.discard(attacker)
        if not self._waiting:
            self.engaged.set()


async def replay_once(url: str, device_id: int, attack: Attack, index: int) -> int | None:
    """Hello since 0 from the attacker's address: the bytes of the replay, None if cut short.

    Cut short by ``stop`` (the connection closes mid-replay) or refused (rate limited).
    """
    connection = await connect(url, local_addr=(ATTACKER, 0), compression=None, max_size=None)
    try:
        await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))

        async def read_replay() -> int | None:
            if json.loads(await connection.recv())["type"] != "welcome":
                attack.under_way(index)
                return None  # refused: rate limited
            received = 0
            while json.loads(frame := str(await connection.recv()))["type"] != "ready":
                attack.under_way(index)  # the replay flows: its first page was read
                received += len(frame.encode())
            attack.under_way(index)
            return received

        reading = asyncio.create_task(read_replay())
        stopping = asyncio.create_task(attack.stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not reading.done():
            reading.cancel()
            # Unread frames would hold the server's close frame back: just drop it.
            connection.transport.abort()
            return None
        return reading.result()
    except ConnectionClosed:
        attack.under_way(index)
        return None
    finally:
        await connection.close()


class Replays:
    """Hellos since 0 in a loop: the bytes of each completed replay."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.hellos = 0
        self.replays: list[int] = []
        self._device_ids = iter(range(1_000, 10**9))

    async def attacker(self, attack: Attack, index: int) -> None:
        while not attack.stop.is_set():
            self.hellos += 1
            received = await replay_once(self.url, next(self._device_ids), attack, index)
            if received is not None:
                self.replays.append(received)

    def report(self) -> dict[str, Any]:
        return {"hellos": self.hellos, "replays": self.replays}


BAD_GET = '{"type":"get","request_id":%d}'  # no key: missing_field, unread past its size
DODGE = {True: '{"type":"get","request_id":%d,"key":"k"}', False: BAD_GET}
JUNK = "x" * 1_000_000  # over the frame limit (128 KiB): closed (1009) at its header
SMALL_JUNK = "x" * 120_000  # under the frame limit, over the message limit: too_large
BAD_FRAMES = 20  # Limits.max_bad_frames


class Flood:
    """What the flooders saw: answers by code, close codes, frames and bytes sent."""

    def __init__(self) -> None:
        self.answers: dict[str, int] = {}
        self.closes: dict[tuple[int, str], int] = {}
        self.bad_answers_per_connection: list[int] = []
        self.frames = 0
        self.bytes = 0

    async def connection(
        self, url: str, device_id: int, attack: Attack, index: int, *, mode: str
    ) -> None:
        """One connection sending ``mode`` frames until the server closes it or the phase ends.

        ``bad``: gets without a key; ``junk``: 1 MB frames of no JSON; ``small
        junk``: 120 KB ones; ``dodge``: a valid get after each 9 bad ones,
        never 20 bad in a row.
        """
        # A flooding address's new connections wait unread (the server's abuse
        # penalty): an attacker whose hello is out is under way, held there, and
        # the phase may end while it waits.
        opening = asyncio.create_task(
            open_device(url, device_id, source=ATTACKER, hello_sent=lambda: attack.under_way(index))
        )
        stopping = asyncio.create_task(attack.stop.wait())
        await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await opening
            return
        try:
            connection, _ = opening.result()
        except (ConnectionClosed, ConnectionRefusedError):  # refused: rate limited
            attack.under_way(index)
            self.answers["refused hello"] = self.answers.get("refused hello", 0) + 1
            return
        reading = asyncio.create_task(self._read(connection, attack, index))
        sending = asyncio.create_task(self._send(connection, mode))
        stopping = asyncio.create_task(attack.stop.wait())
        await asyncio.wait({reading, sending, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        sending.cancel()
        # AttributeError: websockets may fail so when the server closed first.
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, AttributeError):
            await sending
        if attack.stop.is_set():  # unread frames would hold the close back: drop it
            connection.transport.abort()
        await close(connection)
        bad = await reading
        attack.under_way(index)  # closed before any answer
        if connection.close_code is not None and connection.close_reason:
            key = (connection.close_code, connection.close_reason)
            self.closes[key] = self.closes.get(key, 0) + 1
            if mode != "dodge":  # a dodger's bad frames are never 20 in a row
                self.bad_answers_per_connection.append(bad)

    async def _send(self, connection: ClientConnection, mode: str) -> None:
        n = 0
        while True:
            n += 1
            frame = {
                "bad": BAD_GET % n,
                "junk": JUNK,
                "small junk": SMALL_JUNK,
                "dodge": DODGE[n % 10 == 0] % n,
            }[mode]
            await connection.send(frame)
            self.frames += 1
            self.bytes += len(frame)
            await asyncio.sleep(0)  # a send may not yield: let the answers be read

    async def _read(self, connection: ClientConnection, attack: Attack, index: int) -> int:
        bad = 0
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = json.loads(await connection.recv())
                attack.under_way(index)
                code = message.get("code", message["type"])
                self.answers[code] = self.answers.get(code, 0) + 1
                bad += code in {"missing_field", "too_large"}  # a bad frame answered
        return bad


class Floods(Flood):
    """Bad gets, junk frames and dodgers (by attacker index), reconnecting when closed."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._device_ids = iter(range(1_000, 10**9))

    async def attacker(self, attack: Attack, index: int) -> None:
        while not attack.stop.is_set():
            device_id = next(self._device_ids)
            mode = ("bad", "junk", "dodge", "bad", "small junk", "dodge")[index % 6]
            await self.connection(self.url, device_id, attack, index, mode=mode)

    def report(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "answers": self.answers,
            "closes": [[code, reason, n] for (code, reason), n in self.closes.items()],
            "bad_answers_per_connection": self.bad_answers_per_connection,
        }


async def main(kind: str, url: str, count: int) -> None:
    attackers: Replays | Floods = Replays(url) if kind == "replay" else Floods(url)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def answer(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    while command := (await reader.readline()).decode().strip():
        if command == "go":
            attack = Attack(count)
            running = [asyncio.create_task(attackers.attacker(attack, n)) for n in range(count)]
            await attack.engaged.wait()
            answer("engaged")
        elif command == "stop":
            attack.stop.set()
            await asyncio.gather(*running)
            answer("stopped")
        elif command == "report":
            answer(json.dumps(attackers.report()))
            return


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
