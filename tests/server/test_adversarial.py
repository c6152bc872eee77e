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
import os
import random
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from optisync.server import Limits
from tests.server import adversaries

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="needs Linux: many loopback addresses and /proc/<pid>/status",
)

HONEST = "127.0.0.2"
KEYS, VALUE_BYTES = 20, 60_000
# The server process's defaults: what one address may send at once, and then per second.
ADDRESS_BURST, ADDRESS_RATE = Limits().address_burst, Limits().address_messages_per_second


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
    """A device from ``source`` (the honest one's address unless told) past its welcome
    and replay; the frames of its replay. A device refused its welcome fails the test.
    """
    return await adversaries.open_device(url, device_id, source=source, since=since)


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


class Attackers:
    """COUNT attackers of one kind in their own process (tests/server/adversaries.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    @contextlib.asynccontextmanager
    async def run(cls, kind: str, url: str, count: int) -> AsyncIterator[Attackers]:
        # At the lowest CPU priority: on a 2-core machine the attackers' own
        # work (sending 250 MB/s) would otherwise take the cores the server and
        # the honest device share, and the test would time the attackers'
        # machine, which in the world is not the server's.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.server.adversaries", kind, url, str(count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            preexec_fn=lambda: os.nice(19),
        )  # fmt: skip
        try:
            yield cls(process)
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()

    async def _say(self, command: str) -> str:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(f"{command}\n".encode())
        await self._process.stdin.drain()
        line = (await self._process.stdout.readline()).decode().strip()
        assert line, f"the attackers ended on {command!r}"
        return line

    async def go(self) -> None:
        """Start, and return once every attacker is under way."""
        assert await self._say("go") == "engaged"

    async def stop(self) -> None:
        """Stop, and return once every attacker has ended."""
        assert await self._say("stop") == "stopped"

    async def report(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self._say("report"))
        return result


async def idle_and_attacked(
    honest: Honest, attackers: Attackers, *, rounds: int = 16, samples: int = 25
) -> tuple[list[float], list[float], float]:
    """Honest latencies in idle and in attacked phases, interleaved; the seconds attacked.

    An attacked phase is measured once every attacker is under way (its
    connections set up: a phase is the attack's steady state, not its first
    handshakes), and ends once every attacker has returned, so an idle phase
    is really idle.
    """
    idle: list[float] = []
    attacked: list[float] = []
    seconds = 0.0
    await honest.phase(samples)  # a warm-up, not counted
    for _ in range(rounds):
        idle += await honest.phase(samples)
        began = time.perf_counter()
        await attackers.go()
        attacked += await honest.phase(samples)
        await attackers.stop()
        seconds += time.perf_counter() - began
    return idle, attacked, seconds


def report(name: str, **figures: float) -> None:
    """The figures of a run, on the test's output (``-s``, or ``-rP``)."""
    print(name, " ".join(f"{key}={value:.4g}" for key, value in figures.items()))


# -- replay amplification ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)  # a guard against a hang, not a timing assertion
async def test_repeated_replays_send_each_key_once_paced_and_the_honest_p99_holds(
    tmp_path: Path,
) -> None:
    writes = 400  # 24 MB of log over 20 keys: the whole log is 20 times what the keys hold
    with served(tmp_path / "db.sqlite3") as server:
        await write_log(server.url, writes)
        async with Attackers.run("replay", server.url, 10) as attackers:
            idle, attacked, seconds = await idle_and_attacked(Honest(server.url), attackers)
            seen = await attackers.report()
    replays: list[int] = seen["replays"]
    # Each key's newest value once (the honest device's key too), with its envelope.
    bound = (KEYS + 1) * (VALUE_BYTES + 200)
    paced = 4 * 2**20 + 8 * 2**20 * seconds  # the address's burst and rate (Limits)
    report(
        "replay",
        hellos=seen["hellos"],
        replays=len(replays),
        max_replay_bytes=max(replays),
        bound=bound,
        whole_log_bytes=writes * VALUE_BYTES,
        replayed_mb=sum(replays) / 2**20,
        paced_bound_mb=paced / 2**20,
        attack_seconds=seconds,
        idle_p99_ms=p99(idle) * 1000,
        attacked_p99_ms=p99(attacked) * 1000,
    )
    assert replays, "no replay completed"
    assert max(replays) <= bound
    assert sum(replays) <= paced
    assert p99(attacked) <= 2 * p99(idle)


# -- malformed-frame flood -----------------------------------------------------------

BAD_FRAMES = 20  # Limits.max_bad_frames


@pytest.mark.slow
@pytest.mark.timeout(60)  # a guard against a hang, not a timing assertion
async def test_a_flood_of_bad_and_junk_frames_is_refused_closed_and_the_honest_p99_holds(
    tmp_path: Path,
) -> None:
    with served(tmp_path / "db.sqlite3") as server:
        began = time.perf_counter()
        async with Attackers.run("flood", server.url, 6) as attackers:
            # 1,600 samples of each: the p99 is the 16th slowest, not the 4th, so
            # that it is not the few samples of the attack's first contact alone.
            idle, attacked, seconds = await idle_and_attacked(
                Honest(server.url), attackers, rounds=32, samples=50
            )
            seen = await attackers.report()
        wall = time.perf_counter() - began
    closes = {(code, reason): n for code, reason, n in seen["closes"]}
    # Every frame of the attackers' address the server read and answered.
    answered = sum(
        n for code, n in seen["answers"].items() if code not in {"push", "refused hello"}
    )
    report(
        "flood",
        frames=seen["frames"],
        mb_sent=seen["bytes"] / 2**20,
        attack_seconds=seconds,
        wall_seconds=wall,
        answered=answered,
        **{code.replace(" ", "_"): count for code, count in seen["answers"].items()},
        closed_1008=closes.get((1008, "too many bad messages in a row"), 0),
        samples=len(attacked),
        idle_p99_ms=p99(idle) * 1000,
        attacked_p99_ms=p99(attacked) * 1000,
        idle_max_ms=max(idle) * 1000,
        attacked_max_ms=max(attacked) * 1000,
    )
    # Every connection the server closed, it closed for its bad frames, after
    # at most max_bad_frames of them were answered, or for a frame over the
    # frame limit, unread. (Bad-frame closes are fewer than before: once the
    # address is struck, what its connections send is read at the address's
    # sustained pace, and a connection that waited for its turn may see its
    # phase end before its 20th bad frame is read.)
    bad_frames = (1008, "too many bad messages in a row")
    too_big = (1009, "frame with 1000000 bytes exceeds limit of 131072 bytes")
    assert set(closes) <= {bad_frames, too_big}, closes
    assert too_big in closes, closes
    assert max(seen["bad_answers_per_connection"]) <= BAD_FRAMES
    # Read at the address's pace: each frame counts at least 2 KiB against a
    # burst of 8 MiB and 2 MiB a second (Limits): 4,096 frames, then 1,024 a
    # second. The flood waits in the attackers' sockets, unread, unanswered.
    assert answered <= 4_096 + 1_024 * wall
    # The slowest honest samples come from the attack's first contact: six
    # connections of an address with no strike yet, read at full speed until
    # the first close for abuse. From then on its new connections wait for
    # their turn, one per penalty, and its open ones are read at the address's
    # sustained pace. Measured in 16 runs: 0.5-1.6x (30-55 frames of the
    # attackers read in a run); before the turns and the lost burst, 0.7-2.4x
    # over 1,600 samples and 1.6-4.2x over 400.
    assert p99(attacked) <= 2 * p99(idle)


# -- resources -----------------------------------------------------------------------


async def crowd(url: str, count: int, first_id: int) -> list[ClientConnection]:
    """``count`` devices past their replay, 100 per loopback address (the per-address cap)."""

    async def one(n: int) -> ClientConnection:
        source = f"127.0.{10 + n // 100}.1"
        connection, _ = await open_device(url, first_id + n, source=source)
        return connection

    connections: list[ClientConnection] = []
    for start in range(0, count, 100):
        connections += await asyncio.gather(*(one(n) for n in range(start, start + 100)))
    return connections


@pytest.mark.slow
@pytest.mark.timeout(90)  # a guard against a hang, not a timing assertion
async def test_memory_returns_near_idle_after_2000_connections_close(tmp_path: Path) -> None:
    writes = 20
    with served(tmp_path / "db.sqlite3", log_level="INFO") as server:
        writer, _ = await open_device(server.url, 1)
        idle = server.rss_mb()
        connections = await crowd(server.url, 2_000, first_id=100)
        connected = server.rss_mb()

        async def drain(connection: ClientConnection) -> None:
            for _ in range(writes):
                await connection.recv()

        draining = [asyncio.create_task(drain(connection)) for connection in connections]
        peak = connected
        for n in range(writes):
            set_ = {"type": "set", "request_id": n, "key": f"k{n}", "local_revision": n + 1}
            await writer.send(json.dumps({**set_, "value": incompressible(VALUE_BYTES, n)}))
            await reply(writer, "ack")
            peak = max(peak, server.rss_mb())
        await asyncio.gather(*draining)  # every device got every push
        peak = max(peak, server.rss_mb())
        await asyncio.gather(*(connection.close() for connection in connections))
        await server.log_line("gave memory back")
        after = server.rss_mb()
        await writer.close()
    report("memory", idle_mb=idle, connected_mb=connected, peak_mb=peak, after_mb=after)
    assert after <= 1.5 * idle


@pytest.mark.slow
@pytest.mark.timeout(90)  # a guard against a hang, not a timing assertion
async def test_a_storm_of_2000_connections_is_accepted_and_the_honest_device_is_served(
    tmp_path: Path,
) -> None:
    with served(tmp_path / "db.sqlite3") as server:
        honest = Honest(server.url)
        await honest.phase(25)  # a warm-up, not counted
        idle = [sample for _ in range(8) for sample in await honest.phase(25)]
        began = time.perf_counter()
        storm = asyncio.create_task(crowd(server.url, 2_000, first_id=100))
        during: list[float] = []
        while not storm.done():
            during += await honest.phase(25)
        connections = await storm
        seconds = time.perf_counter() - began
        await asyncio.gather(*(connection.close() for connection in connections))
    report(
        "storm",
        accepted=len(connections),
        seconds=seconds,
        idle_p99_ms=p99(idle) * 1000,
        storm_p99_ms=p99(during) * 1000,
        storm_samples=len(during),
    )
    assert len(connections) == 2_000  # each one welcomed and past its replay
    assert during, "the storm ended before the honest device was measured"


def stalled_reader(url: str, device_id: int, source: str) -> Awaitable[ClientConnection]:
    """A device that says hello from ``source`` and never reads, with a tiny receive buffer."""

    async def open_it() -> ClientConnection:
        address = urlparse(url)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((source, 0))
        sock.connect((address.hostname, address.port))
        connection = await connect(url, sock=sock, max_queue=1, compression=None)
        hello = {"type": "hello", "device_id": device_id, "since": 0}
        await connection.send(json.dumps(hello))
        return connection

    return open_it()


@pytest.mark.slow
@pytest.mark.timeout(90)  # a guard against a hang, not a timing assertion
async def test_300_readers_that_never_read_their_replays_stay_within_the_send_budget(
    tmp_path: Path,
) -> None:
    budget_mb = 256  # Limits.total_send_buffer_bytes
    with served(tmp_path / "db.sqlite3") as server:
        await write_log(server.url, KEYS)  # each replay: 20 values of 60 KB
        honest = Honest(server.url)
        await honest.phase(25)
        idle = server.rss_mb()
        readers = [
            await stalled_reader(server.url, 100 + n, f"127.0.{10 + n // 10}.1")
            for n in range(300)  # 10 per address: 30 addresses, each its own replay burst
        ]
        opened = server.rss_mb()
        peak = opened
        for _ in range(40):  # 1,000 honest round trips: the replays queue meanwhile
            await honest.phase(25)
            peak = max(peak, server.rss_mb())
        for reader in readers:
            reader.transport.abort()
    wanted_mb = 300 * KEYS * VALUE_BYTES / 2**20
    report("slow readers", idle_mb=idle, opened_mb=opened, peak_mb=peak, wanted_mb=wanted_mb)
    # On top of the budget, per connection: its own state (websockets, asyncio;
    # about 25 KB, measured by the storm: 2,000 connections, +47 MB), and what
    # the budget does not count: the frame being written (60 KB) and what
    # websockets' transport took of it (its write limit, 32 KiB).
    assert peak <= idle + budget_mb + 300 * (25 + 60 + 32) / 1024


# -- strictness and per-address limits, on the real process ---------------------------

SET_7 = '{"type":"set","request_id":7,"key":%s,"value":%s,"local_revision":1}'
STRICT: list[tuple[str, str | bytes, str]] = [
    # (what the probe had committed, the frame, its error code)
    ("a binary frame holding a valid set", (SET_7 % ('"k"', "1")).encode(), "bad_message"),
    ("an integer past 2**64", SET_7 % ('"k"', "18446744073709551617"), "bad_field"),
    ("a 30-digit integer", SET_7 % ('"k"', "-123456789012345678901234567890"), "bad_field"),
    ("2**53 itself", SET_7 % ('"k"', "9007199254740992"), "bad_field"),
    ("a NUL inside the key", SET_7 % (json.dumps("a\x00b"), "1"), "bad_field"),
    (
        "a field twice",
        (SET_7 % ('"k"', "1")).replace("}", ',"local_revision":2}'),
        "duplicate_field",
    ),
]


async def test_each_strictness_finding_is_refused_with_its_request_id_and_commits_nothing(
    tmp_path: Path,
) -> None:
    with served(tmp_path / "db.sqlite3") as server:
        connection, _ = await open_device(server.url, 1)
        refusals = []
        for _, frame, _ in STRICT:
            await connection.send(frame)
            error = await reply(connection, "error")
            refusals.append((error["code"], error["request_id"]))
        await connection.send('{"type":"get","request_id":8,"key":"k"}')
        value = await reply(connection, "value")
        await connection.close()
    assert refusals == [(code, 7) for _, _, code in STRICT]
    assert value["server_revision"] == -1  # nothing was committed


async def gets(connection: ClientConnection, count: int, answered: dict[str, int]) -> None:
    """Send ``count`` gets at once, then count the answers by code until all came or it closed."""
    for request_id in range(count):
        await connection.send(json.dumps({"type": "get", "request_id": request_id, "key": "k"}))
    with contextlib.suppress(ConnectionClosed):  # closed for going on past the rate
        for _ in range(count):
            message = json.loads(await connection.recv())
            code = message.get("code", message["type"])
            answered[code] = answered.get(code, 0) + 1


@pytest.mark.slow
@pytest.mark.timeout(60)  # a guard against a hang, not a timing assertion
async def test_one_address_gets_one_burst_and_100_connections_whatever_it_opens(
    tmp_path: Path,
) -> None:
    with served(tmp_path / "db.sqlite3") as server:
        answered: dict[str, int] = {}
        began = time.perf_counter()
        # Connections one after another, each with its own burst of 200: at
        # least 15 (3,000 gets, past the address's burst), and on until one is
        # refused (a slow machine sends them slower than the address refills).
        for n in range(60):
            if n >= 15 and answered.get("rate_limited", 0) > 0:
                break
            connection, _ = await open_device(server.url, 100 + n, source="127.0.0.4")
            await gets(connection, 200, answered)
            await connection.close()
        seconds = time.perf_counter() - began
        crowd = [
            (await open_device(server.url, 1_000 + n, source="127.0.0.5"))[0] for n in range(100)
        ]
        extra = await connect(server.url, local_addr=("127.0.0.5", 0), compression=None)
        with pytest.raises(ConnectionClosed) as refused:
            await extra.recv()
        for connection in crowd:
            await connection.close()
    report("per address", seconds=seconds, **answered)
    # A burst of 2,000 and 1,000 a second for the address (hellos included),
    # never a fresh burst of 200 for each connection it opens.
    assert answered["value"] <= ADDRESS_BURST + ADDRESS_RATE * seconds
    assert answered.get("rate_limited", 0) > 0
    assert refused.value.rcvd is not None
    too_many = (1013, "too many connections from this address")
    assert (refused.value.rcvd.code, refused.value.rcvd.reason) == too_many
