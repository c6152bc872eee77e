"""Load and fault figures of ``optisync.server``, on loopback only, bounded in time.

Run: ``.venv/bin/python tests/benchmarks/server_load.py`` (PostgreSQL rows too
when ``$OPTISYNC_TEST_POSTGRES_DSN`` is set: ``source .ci/postgres.sh``).

* commits/s: 10 devices writing at once, each waiting for its ack;
* fan-out: one device writes, every connected device receives the push;
  p50/p99 of the time from the write's send to each push's arrival;
* kill -9: a server process is killed while 8 devices write; after a restart
  every acknowledged write is read back with its revision and value;
* PostgreSQL backends terminated: every connection of a server is closed by
  PostgreSQL while 8 devices write (retrying on ``unavailable``); every
  acknowledged write is read back, and commits answered ``unavailable`` counted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(*arguments: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = [sys.executable, "-m", "optisync.server", *arguments, "--port", "0"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment
    ) as process:
        try:
            assert process.stdout is not None
            yield process, process.stdout.readline().strip()
        finally:
            process.kill()


async def open_device(url: str, device_id: int, since: int = 0) -> ClientConnection:
    # No keepalive pings: a thousand devices in one benchmark process answer late.
    connection = await connect(url, max_queue=None, open_timeout=60, ping_interval=None)
    hello = {"type": "hello", "device_id": device_id, "since": since}
    await connection.send(json.dumps(hello))
    while (message := json.loads(await connection.recv()))["type"] != "ready":
        if message["type"] == "welcome":
            head = message["server_revision"]
    connection.head = head  # type: ignore[attr-defined]
    return connection


class Writer:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.next_id = 0

    async def set(self, key: str, value: object) -> dict[str, object]:
        return await self._request({"type": "set", "key": key, "value": value,
                                    "local_revision": self.next_id + 1})  # fmt: skip

    async def get(self, key: str) -> dict[str, object]:
        return await self._request({"type": "get", "key": key})

    async def _request(self, message: dict[str, object]) -> dict[str, object]:
        self.next_id += 1
        await self.connection.send(json.dumps({**message, "request_id": self.next_id}))
        while True:
            answer: dict[str, object] = json.loads(await self.connection.recv())
            if answer["type"] in ("ack", "value", "error"):
                return answer


async def commits_per_second(url: str, writers: int = 10, writes: int = 50) -> float:
    devices = [Writer(await open_device(url, 1_000_000 + n)) for n in range(writers)]
    started = time.perf_counter()
    await asyncio.gather(*(write_many(device, n, writes) for n, device in enumerate(devices)))
    elapsed = time.perf_counter() - started
    for device in devices:
        await device.connection.close()
    return writers * writes / elapsed


async def write_many(device: Writer, n: int, writes: int) -> None:
    for index in range(writes):
        answer = await device.set(f"load:{n}:{index % 5}", index)
        assert answer["type"] == "ack", answer


async def fan_out(url: str, devices: int, writes: int = 20) -> tuple[float, float]:
    writer = Writer(await open_device(url, 3_000_000 + devices))
    head = writer.connection.head  # type: ignore[attr-defined]
    listeners: list[ClientConnection] = []
    for first in range(0, devices, 100):  # connect in batches: no handshake storm
        batch = range(first, min(first + 100, devices))
        listeners += await asyncio.gather(*(open_device(url, 2_000_000 + n, head) for n in batch))
    latencies: list[float] = []
    for index in range(writes):
        sent = time.perf_counter()
        answer = await writer.set("fan:out", index)

        revision = answer["server_revision"]
        latencies += await asyncio.gather(*(arrival(one, revision, sent) for one in listeners))
    for connection in [*listeners, writer.connection]:
        await connection.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


async def arrival(listener: ClientConnection, revision: object, sent: float) -> float:
    while json.loads(await listener.recv())["server_revision"] != revision:
        pass
    return time.perf_counter() - sent


async def write_until_killed(
    device: Writer,
    key_prefix: str,
    acked: dict[int, tuple[str, int]],
    target: int,
    enough: asyncio.Event,
) -> None:
    """Write until the connection dies, recording each acknowledged write."""
    index = 0
    try:
        while True:
            index += 1
            key = f"{key_prefix}:{index}"
            answer = await device.set(key, index)
            revision = answer["server_revision"]
            assert isinstance(revision, int)
            acked[revision] = (key, index)
            if len(acked) >= target:
                enough.set()
    except Exception:  # the kill: this connection is gone
        return


async def kill_nine(arguments: list[str], rounds: int) -> tuple[int, int]:
    """Kill -9 a server under writes ``rounds`` times; return (acked, lost)."""
    acked: dict[int, tuple[str, int]] = {}
    for round_number in range(rounds):
        with server_process(*arguments) as (process, url):
            devices = [Writer(await open_device(url, 4_000_000 + n)) for n in range(8)]

            enough = asyncio.Event()
            target = (round_number + 1) * 200

            tasks = [
                asyncio.create_task(
                    write_until_killed(device, f"kill:{round_number}:{n}", acked, target, enough)
                )
                for n, device in enumerate(devices)
            ]
            await enough.wait()
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.gather(*tasks)
    # Read the database itself after the last kill: is every acked write there?
    stored = read_log(arguments)
    lost = sum(stored.get(revision) != (key, value) for revision, (key, value) in acked.items())
    return len(acked), lost


async def write_through_faults(
    device: Writer, prefix: str, tally: FaultTally, enough: asyncio.Event
) -> None:
    """Write until ``tally.stop``; retry each write answered ``unavailable``, as a device does."""
    index = 0
    while not tally.stop:
        index += 1
        key = f"{prefix}:{index}"
        while (answer := await device.set(key, index))["type"] != "ack":
            assert answer["code"] == "unavailable", answer
            tally.unavailable += 1
        revision = answer["server_revision"]
        assert isinstance(revision, int)
        tally.acked[revision] = (key, index)
        if len(tally.acked) >= tally.target:
            enough.set()


class FaultTally:
    def __init__(self) -> None:
        self.acked: dict[int, tuple[str, int]] = {}
        self.unavailable = 0
        self.target = 0
        self.stop = False


async def terminate_backends(dsn: str, rounds: int) -> str:
    """Terminate every optisync backend ``rounds`` times while 8 devices write."""
    tally, prefix = FaultTally(), f"fault:{time.time_ns()}"
    with server_process("--postgres", dsn) as (_, url):
        devices = [Writer(await open_device(url, 5_000_000 + n)) for n in range(8)]
        enough = asyncio.Event()
        tasks = [
            asyncio.create_task(write_through_faults(device, f"{prefix}:{n}", tally, enough))
            for n, device in enumerate(devices)
        ]
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
            for _ in range(rounds):
                tally.target = len(tally.acked) + 200
                enough.clear()
                await enough.wait()
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'optisync-%'"
                )
        tally.stop = True
        await asyncio.gather(*tasks)
    stored = {r: kv for r, kv in read_log(["--postgres", dsn]).items() if kv[0].startswith(prefix)}
    lost = sum(stored.get(revision) != write for revision, write in tally.acked.items())
    unacked = len(stored) - len(tally.acked)  # committed, but answered unavailable
    return (
        f"pg_terminate_backend x{rounds} under writes: {len(tally.acked):,} acknowledged, "
        f"{lost} lost, {tally.unavailable} answered unavailable and retried, "
        f"{unacked} committed without an ack"
    )


def read_log(arguments: list[str]) -> dict[int, tuple[str, int]]:
    """Every change in the server's database, by revision (``--database`` or ``--postgres``)."""
    query = "SELECT revision, key, value FROM optisync_changes"
    if arguments[0] == "--database":
        with contextlib.closing(sqlite3.connect(arguments[1])) as connection:
            rows = connection.execute(query).fetchall()
    else:
        with psycopg.connect(arguments[1]) as connection:
            rows = connection.execute(query).fetchall()
    return {revision: (key, json.loads(bytes(value))) for revision, key, value in rows}


async def main(sizes: list[int], rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        back_ends = [("SQLite", ["--database", f"{folder}/load.sqlite3"])]
        dsn = os.environ.get("OPTISYNC_TEST_POSTGRES_DSN")
        if dsn:
            back_ends.append(("PostgreSQL", ["--postgres", dsn]))
        print("| back end | devices | commits/s (10 writers) | push fan-out p50 | p99 |")
        print("|---|---|---|---|---|")
        for name, arguments in back_ends:
            for devices in sizes:
                with server_process(*arguments) as (_, url):
                    rate = await commits_per_second(url)
                    p50, p99 = await fan_out(url, devices)
                print(f"| {name} | {devices:,} | {rate:,.0f} | {p50:.1f} ms | {p99:.1f} ms |")
        for name, arguments in back_ends:
            if name == "SQLite":
                arguments = ["--database", f"{folder}/kill.sqlite3"]
            acked, lost = await kill_nine(arguments, rounds)
            print(f"kill -9 x{rounds} on {name}: {acked:,} acknowledged writes, {lost} lost")
        if dsn:
            print(await terminate_backends(dsn, rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--kill-rounds", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.sizes, options.kill_rounds))
