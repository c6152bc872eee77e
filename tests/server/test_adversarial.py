"""Issue 18, item 9: each finding of the probe, reproduced on a real server process.

Every test starts ``python -m optisync.server`` on loopback and attacks it
with raw WebSocket clients, in bounded loops that stop by themselves. Clients
come from several loopback addresses (127.0.0.0/8 is all loopback on Linux),
so the attackers, the honest device and the storm each have their own
per-address limits, as they would on a network.

Latency figures are ratios measured in one run: the honest device's
``set`` -> ``ack`` time alternates between idle phases and attacked phases,
so a machine busy with something else slows both alike.

The heavy ones are marked slow: ``python -m pytest -q -m slow
tests/server/test_adversarial.py``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="needs Linux: many loopback addresses and /proc/<pid>/status",
)

HONEST = "127.0.0.2"
ATTACKER = "127.0.0.3"
KEYS, VALUE_BYTES = 20, 60_000


# -- a real server -------------------------------------------------------------------


class Served:
    """A ``python -m optisync.server`` process; its log lines are read by a thread."""

    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process = process
        self.url = url
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()

    def rss_mb(self) -> float:
        """The server's resident memory now, in MB (``VmRSS`` of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")  # pragma: no cover

    def _wait_for(self, text: str, count: int, bound: float) -> None:
        with self._changed:
            found = self._changed.wait_for(
                lambda: sum(text in line for line in self._lines) >= count, bound
            )
        assert found, f"the server never logged {text!r}: {self._lines[-5:]}"

    async def log_line(self, text: str, count: int = 1, bound: float = 20.0) -> None:
        """Wait (in a thread) until the log holds ``count`` lines with ``text``."""
        await asyncio.to_thread(self._wait_for, text, count, bound)


def _more_files() -> None:  # pragma: no cover - runs in the child before exec
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))


@contextlib.contextmanager
def served(database: Path, *arguments: str, log_level: str = "WARNING") -> Iterator[Served]:
    """The server on ``database``, on 127.0.0.1 and a free port, with up to 8,192 files."""
    command = [sys.executable, "-m", "optisync.server", "--database", str(database)]
    command += ["--port", "0", "--log-level", log_level, *arguments]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_more_files,
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("ws://"), f"the server did not start: {url!r}"
            yield Served(process, url)
        finally:
            process.kill()


@pytest.fixture(scope="module", autouse=True)
def enough_files() -> None:
    """This process opens thousands of connections too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 5000:
        if hard != resource.RLIM_INFINITY and hard < 5000:
            pytest.skip(f"needs 5,000 open files, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (5000, hard))


# -- raw clients ---------------------------------------------------------------------


def incompressible(length: int, seed: int) -> str:
    """Text that permessage-deflate cannot shrink much: the bytes on the wire are real."""
    return base64.b64encode(random.Random(seed).randbytes(length))[:length].decode()


async def open_device(
    url: str, device_id: int, *, source: str = HONEST, since: int = 0
) -> tuple[ClientConnection, list[str]]:
    """A device from ``source`` past its welcome and replay; the frames of its replay."""
    connection = await connect(url, local_addr=(source, 0), compression=None, max_size=None)
    await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": since}))
    welcome = json.loads(await connection.recv())
    assert welcome["type"] == "welcome", welcome
    replay = []
    while True:
        frame = str(await connection.recv())
        if json.loads(frame)["type"] == "ready":
            return connection, replay
        replay.append(frame)


async def reply(connection: ClientConnection, kind: str) -> dict[str, Any]:
    """The next message of ``kind``, skipping pushes."""
    while True:
        message: dict[str, Any] = json.loads(await connection.recv())
        if message["type"] == kind:
            return message
        assert message["type"] == "push", message


async def write_log(url: str, writes: int, *, keys: int = KEYS) -> None:
    """``writes`` sets of ``VALUE_BYTES`` over ``keys`` keys, each connection within its burst."""
    device_id = 10_000
    for start in range(0, writes, 150):
        device_id += 1
        writer, _ = await open_device(url, device_id)
        for n in range(start, min(writes, start + 150)):
            value = incompressible(VALUE_BYTES, n)
            set_ = {"type": "set", "request_id": n, "key": f"k{n % keys}", "value": value}
            await writer.send(json.dumps({**set_, "local_revision": n + 1}))
            await reply(writer, "ack")
        await writer.close()


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


class Honest:
    """A device timing ``set`` -> ``ack``; a fresh connection per phase (a fresh burst)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._device_id = 1
        self._since = 0

    async def phase(self, samples: int) -> list[float]:
        self._device_id += 1
        connection, _ = await open_device(self.url, self._device_id, since=self._since)
        seconds = []
        try:
            for n in range(samples):
                set_ = {"type": "set", "request_id": n, "key": "honest", "value": n}
                started = time.perf_counter()
                await connection.send(json.dumps({**set_, "local_revision": n + 1}))
                ack = await reply(connection, "ack")
                seconds.append(time.perf_counter() - started)
                self._since = max(self._since, ack["server_revision"])
        finally:
            await connection.close()
        return seconds


class Attack:
    """What an attacker is given: when to stop, and a way to say it is under way."""

    def __init__(self, attackers: int) -> None:
        self.stop = asyncio.Event()
        self.engaged = asyncio.Event()
        self._waiting = set(range(attackers))

    def under_way(self, attacker: int) -> None:
        """Attacker ``attacker`` is past its first connection: measuring may start."""
        self._waiting.discard(attacker)
        if not self._waiting:
            self.engaged.set()


Attacker = Callable[[Attack, int], Awaitable[None]]


async def idle_and_attacked(
    honest: Honest, attackers: list[Attacker], *, rounds: int = 16, samples: int = 25
) -> tuple[list[float], list[float]]:
    """Honest latencies in idle phases and in phases under attack, interleaved.

    An attacked phase is measured once every attacker said it is under way
    (its connections set up: a phase is the attack's steady state, not its
    first handshakes). Each attacker runs until ``attack.stop`` is set and
    returns by itself; the phase ends once every attacker has returned, so an
    idle phase is really idle.
    """
    idle: list[float] = []
    attacked: list[float] = []
    await honest.phase(samples)  # a warm-up, not counted
    for _ in range(rounds):
        idle += await honest.phase(samples)
        attack = Attack(len(attackers))
        running = [asyncio.create_task(run(attack, n)) for n, run in enumerate(attackers)]
        try:
            await attack.engaged.wait()
            attacked += await honest.phase(samples)
        finally:
            attack.stop.set()
            await asyncio.gather(*running)
    return idle, attacked


def report(name: str, **figures: float) -> None:
    """The figures of a run, on the test's output (``-s``, or ``-rP``)."""
    print(name, " ".join(f"{key}={value:.4g}" for key, value in figures.items()))


# -- replay amplification ------------------------------------------------------------


async def replay_once(url: str, device_id: int, attack: Attack, index: int) -> int | None:
    """Hello since 0 from the attacker's address: the bytes of the replay, None if cut short.

    Cut short by ``stop`` (the connection closes mid-replay) or refused (rate limited).
    """
    connection = await connect(url, local_addr=(ATTACKER, 0), compression=None, max_size=None)
    try:
        await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))

        async def read_replay() -> int | None:
            welcomed = json.loads(await connection.recv())["type"] == "welcome"
            attack.under_way(index)
            if not welcomed:
                return None  # refused: rate limited
            received = 0
            while json.loads(frame := str(await connection.recv()))["type"] != "ready":
                received += len(frame.encode())
            return received

        reading = asyncio.create_task(read_replay())
        stopping = asyncio.create_task(attack.stop.wait())
        await asyncio.wait({reading, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not reading.done():
            reading.cancel()
            return None
        return reading.result()
    except ConnectionClosed:
        attack.under_way(index)
        return None
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.timeout(60)  # a guard against a hang, not a timing assertion
async def test_repeated_replays_send_each_key_once_paced_and_the_honest_p99_holds(
    tmp_path: Path,
) -> None:
    writes = 400  # 24 MB of log over 20 keys: the whole log is 20 times what the keys hold
    replays: list[int] = []  # bytes of each completed replay
    started = 0
    attacking = 0.0  # seconds under attack

    async def replayer(attack: Attack, index: int) -> None:
        nonlocal started
        device_id = 1_000 + index * 10_000
        while not attack.stop.is_set():
            device_id += 1
            started += 1
            received = await replay_once(server.url, device_id, attack, index)
            if received is not None:
                replays.append(received)

    async def timed(attack: Attack, index: int) -> None:
        nonlocal attacking
        began = time.perf_counter()
        attack.under_way(index)
        await attack.stop.wait()
        attacking += time.perf_counter() - began

    with served(tmp_path / "db.sqlite3") as server:
        await write_log(server.url, writes)
        idle, attacked = await idle_and_attacked(Honest(server.url), [timed, *[replayer] * 10])
    # Each key's newest value once (the honest device's key too), with its envelope.
    bound = (KEYS + 1) * (VALUE_BYTES + 200)
    paced = 16 * 2**20 + 8 * 2**20 * attacking  # the address's burst and rate (Limits)
    report(
        "replay",
        hellos=started,
        replays=len(replays),
        max_replay_bytes=max(replays),
        bound=bound,
        whole_log_bytes=writes * VALUE_BYTES,
        replayed_mb=sum(replays) / 2**20,
        paced_bound_mb=paced / 2**20,
        attack_seconds=attacking,
        idle_p99_ms=p99(idle) * 1000,
        attacked_p99_ms=p99(attacked) * 1000,
    )
    assert replays, "no replay completed"
    assert max(replays) <= bound
    assert sum(replays) <= paced
    assert p99(attacked) <= 2 * p99(idle)
