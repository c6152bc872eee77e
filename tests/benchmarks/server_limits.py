"""The server's throughput beside the limits it runs on, measured in one run.

Run: ``.venv/bin/python tests/benchmarks/server_limits.py`` (PostgreSQL rows
too when ``$OPTISYNC_TEST_POSTGRES_DSN`` is set: ``source .ci/postgres.sh``).
Loopback only; every loop is bounded.

Each figure is printed beside its limit, measured by the same load in the
same run, and the rounds are interleaved (server, limit, server, limit...),
so that a machine that is busier at one moment skews both sides alike:

* commits/s with 10 writers, each waiting for its ack before the next write,
  beside raw sqlite3 (WAL, ``synchronous=FULL``; one row per transaction, and
  10 rows per transaction) and raw psycopg (one statement per transaction,
  and 10 rows per transaction), from 10 threads;
* CPU per commit of the server process (user + system time from
  ``/proc/<pid>/stat``) beside a bare ``websockets`` server that sends the
  same frames (an ack to the writer, a push to each of the 10 writers), with
  one ``send`` per connection and with ``broadcast()``;
* push fan-out p50/p99 to 1, 100 and 1,000 devices beside the bare server's
  ``broadcast()``;
* with PostgreSQL: commits/s and fan-out to 100 devices with 1, 2 and 4
  server processes on one database, writers and listeners spread over them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parents[2]
WRITERS = 10
WARM_UP = 50  # writes per writer before each measure: a new process's first ones are slow
_P = TypeVar("_P")

# A server with no library: it speaks just enough of the protocol for the load
# (hello -> welcome, ready; set -> a push to every connection, then the ack).
BARE_SERVER = r"""
import asyncio, json, sys
from websockets.asyncio.server import broadcast, serve

MODE, COMPRESSION = sys.argv[1], (None if sys.argv[2] == "off" else "deflate")
connections = set()
revision = 0

async def handler(connection):
    global revision
    hello = json.loads(await connection.recv())
    await connection.send(json.dumps({"type": "welcome", "generation": "bare",
                                      "server_revision": revision, "reset": False}))
    await connection.send(json.dumps({"type": "ready", "server_revision": revision}))
    connections.add(connection)
    try:
        async for frame in connection:
            message = json.loads(frame)
            revision += 1
            push = {"type": "push", "key": message["key"], "value": message["value"],
                    "server_revision": revision, "local_revision": 0, "device_id": 0}
            data = json.dumps(push, separators=(",", ":"))
            if MODE == "broadcast":
                broadcast(connections, data)
            else:
                for other in list(connections):
                    await other.send(data)
            await connection.send(json.dumps({"type": "ack", "request_id": message["request_id"],
                                               "key": message["key"], "value": message["value"],
                                               "server_revision": revision}))
    finally:
        connections.discard(connection)

async def main():
    async with serve(handler, "127.0.0.1", 0, compression=COMPRESSION, max_queue=None) as server:
        print(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Future()

asyncio.run(main())
"""


@contextlib.contextmanager
def process(
    command: list[str], **extra_environment: str
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **extra_environment}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=environment
    ) as running:
        try:
            assert running.stdout is not None
            url = running.stdout.readline().strip()
            assert url.startswith("ws://"), f"did not start: {command}"
            yield running, url
        finally:
            running.kill()


# The server as the CLI runs it, with the per-address limits raised: every
# device of the load comes from 127.0.0.1.
OPTISYNC_SERVER = r"""
import asyncio, logging, sys
from optisync.server import Limits, SqliteStorage, SyncServer

async def main(kind, where):
    if kind == "--postgres":
        from optisync.server.postgres import PostgresStorage
        storage = PostgresStorage(where)
    else:
        storage = SqliteStorage(where)
    limits = Limits(max_connections_per_address=100_000, address_messages_per_second=1e9,
                    address_burst=10**9, messages_per_second=1e9, burst=10**9,
                    address_receive_bytes_per_second=0)
    async with SyncServer(storage, limits=limits).run(port=0) as url:
        print(url, flush=True)
        await asyncio.Future()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def optisync_server(*arguments: str) -> list[str]:
    return [sys.executable, "-c", OPTISYNC_SERVER, *arguments]


def bare_server(mode: str, compression: str) -> list[str]:
    return [sys.executable, "-c", BARE_SERVER, mode, compression]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- the load -----------------------------------------------------------------------


async def open_device(url: str, device_id: int) -> ClientConnection:
    connection = await connect(url, max_queue=None, open_timeout=60, ping_interval=None)
    await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))
    while json.loads(await connection.recv())["type"] != "ready":
        pass
    return connection


# An ack as the optisync server and the bare one (json.dumps) write it.
_ACK = (b'{"type":"ack"', b'{"type": "ack"')


async def write_many(connection: ClientConnection, device: int, writes: int) -> None:
    for n in range(1, writes + 1):
        request = {"type": "set", "request_id": n, "key": f"load:{device}:{n % 5}", "value": n,
                   "local_revision": n, "device_id": device}  # fmt: skip
        await connection.send(json.dumps(request))
        # Every frame is read; the pushes of everyone's writes are not parsed:
        # the load generator shares the cores with the server it measures.
        while not (await connection.recv(decode=False)).startswith(_ACK):
            pass


def postgres_cpu_seconds() -> float:
    """User + system CPU time so far of every PostgreSQL process on this machine."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            name = stat.read_text().split(" (", 1)[1].split(")", 1)[0]
            if name == "postgres":
                total += cpu_seconds(int(stat.parent.name))
    return total


def busy_cpu_seconds() -> float:
    """CPU time all processes of the machine used so far (/proc/stat, less idle and iowait)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU time of this process (the load generator) so far."""
    times = os.times()
    return times.user + times.system


async def commit_load(url: str, pid: int, writes: int) -> tuple[float, float]:
    """(commits/s, CPU seconds of the server per commit) with WRITERS writers."""
    rate, (before, after) = await _spread_load([url], writes, lambda: cpu_seconds(pid))
    return rate, (after - before) / (WRITERS * writes)


async def commit_load_spent(url: str, pid: int, writes: int) -> dict[str, float]:
    """commits/s, and CPU seconds per commit of the server, the load, PostgreSQL and the rest.

    "other" is every other process of the machine: what the ratios must
    share the cores with (another job running makes a round count for less).
    """

    def probe() -> tuple[float, float, float, float]:
        return cpu_seconds(pid), own_cpu_seconds(), postgres_cpu_seconds(), busy_cpu_seconds()

    rate, (before, after) = await _spread_load([url], writes, probe)
    server, load, database, busy = (a - b for a, b in zip(after, before, strict=True))
    commits = WRITERS * writes
    other = max(busy - server - load - database, 0.0)
    return {"rate": rate, "server": server / commits, "load": load / commits,
            "database": database / commits, "other": other / commits}  # fmt: skip


async def fan_out(url: str, devices: int, writes: int = 20) -> tuple[float, float]:
    """p50, p99 in ms from a write's send to each device's receipt of its push."""
    return await spread_fan_out([url], devices, writes)


async def arrival(listener: ClientConnection, value: int, sent: float) -> float:
    while (message := json.loads(await listener.recv()))["type"] != "push" or (
        message["value"] != value
    ):
        pass
    return time.perf_counter() - sent


async def spread_load(urls: list[str], writes: int) -> float:
    """commits/s of WRITERS writers spread over the servers at ``urls`` (round robin)."""
    rate, _ = await _spread_load(urls, writes, lambda: ())
    return rate


async def _spread_load(
    urls: list[str], writes: int, probe: Callable[[], _P]
) -> tuple[float, tuple[_P, _P]]:
    """commits/s, and ``probe()`` just before the first write and just after the last ack."""
    base = int(time.time_ns() % 10**9) * 100  # fresh device ids each round
    devices = [await open_device(urls[n % len(urls)], base + n) for n in range(1, WRITERS + 1)]
    before = probe()
    started = time.perf_counter()
    await asyncio.gather(*(write_many(d, base + n, writes) for n, d in enumerate(devices, 1)))
    elapsed = time.perf_counter() - started
    after = probe()
    for device in devices:
        await device.close()
    return WRITERS * writes / elapsed, (before, after)


async def spread_fan_out(urls: list[str], devices: int, writes: int = 20) -> tuple[float, float]:
    """p50, p99 in ms: a writer on the first server, ``devices`` listeners spread over all."""
    base = int(time.time_ns() % 10**9) * 10_000
    writer = await open_device(urls[0], base)
    listeners: list[ClientConnection] = []
    for first in range(0, devices, 100):  # connect in batches: no handshake storm
        batch = range(first, min(first + 100, devices))
        listeners += await asyncio.gather(
            *(open_device(urls[n % len(urls)], base + 1 + n) for n in batch)
        )
    latencies: list[float] = []
    for n in range(1, writes + 1):
        sent = time.perf_counter()
        request = {"type": "set", "request_id": n, "key": "fan", "value": n, "local_revision": n}
        await writer.send(json.dumps(request))
        latencies += await asyncio.gather(*(arrival(one, n, sent) for one in listeners))
        while json.loads(await writer.recv())["type"] != "ack":
            pass
    for connection in [*listeners, writer]:
        await connection.close()
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000


async def across_processes(dsn: str, counts: list[int], writes: int) -> None:
    """Throughput and fan-out with 1, 2, 4... server processes on one PostgreSQL database."""
    print("\n| server processes | commits/s (10 writers spread) | fan-out to 100, p50 | p99 |")
    print("|---|---|---|---|")
    for count in counts:
        with contextlib.ExitStack() as stack:
            servers = [stack.enter_context(process(optisync_server("--postgres", dsn)))
                       for _ in range(count)]  # fmt: skip
            urls = [url for _, url in servers]
            rate = await spread_load(urls, writes)
            p50, p99 = await spread_fan_out(urls, 100)
        print(f"| {count} | {rate:,.0f} | {p50:.1f} ms | {p99:.1f} ms |")


# -- raw database limits ------------------------------------------------------------


def in_threads(work: Callable[[int], int], threads: int = WRITERS) -> float:
    """Rows per second that ``threads`` threads running ``work(n) -> rows`` write together."""
    done: list[int] = []
    started = time.perf_counter()
    running = [threading.Thread(target=lambda n=n: done.append(work(n))) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


_RAW_SQLITE_WRITE = "INSERT INTO log (key, value, local_revision, device_id) VALUES (?, ?, ?, ?)"


def raw_sqlite(path: str, transactions: int, rows_per_transaction: int) -> float:
    def work(n: int) -> int:
        with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=60)) as db:
            db.execute("PRAGMA synchronous=FULL")  # WAL is the file's, set below
            for t in range(transactions):
                db.execute("BEGIN IMMEDIATE")
                for r in range(rows_per_transaction):
                    db.execute(_RAW_SQLITE_WRITE, (f"k{n}:{r}", b"1", t, n))
                db.execute("COMMIT")
        return transactions * rows_per_transaction

    with contextlib.closing(sqlite3.connect(path)) as db:
        # Once, before the threads: ten connections switching to WAL at once collide.
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS log (revision INTEGER PRIMARY KEY AUTOINCREMENT,"
                   " key TEXT, value BLOB, local_revision INTEGER, device_id INTEGER)")  # fmt: skip
    return in_threads(work)


_RAW_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_head (single boolean PRIMARY KEY, revision bigint NOT NULL);
INSERT INTO bench_head VALUES (true, 0) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS bench_changes (revision bigint PRIMARY KEY, key text, value bytea,
                                          local_revision bigint, device_id bigint);
CREATE TABLE IF NOT EXISTS bench_keys (key text PRIMARY KEY, revision bigint);
"""
# One statement: take the revision, write the change and the key, notify, RETURNING.
_RAW_PG_WRITE = """
WITH head AS (UPDATE bench_head SET revision = revision + 1 RETURNING revision),
change AS (INSERT INTO bench_changes SELECT revision, %(key)s, %(value)s, %(lr)s, %(device)s
           FROM head RETURNING revision),
keyed AS (INSERT INTO bench_keys SELECT %(key)s, revision FROM change
          ON CONFLICT (key) DO UPDATE SET revision = excluded.revision)
SELECT revision, pg_notify('bench', revision::text) FROM change
"""


def raw_psycopg(dsn: str, transactions: int, rows_per_transaction: int) -> float:
    import psycopg

    def work(n: int) -> int:
        with psycopg.connect(dsn, autocommit=True) as db:
            for t in range(transactions):
                with db.transaction():
                    for r in range(rows_per_transaction):
                        row = {"key": f"k{n}:{r}", "value": b"1", "lr": t, "device": n}
                        db.execute(_RAW_PG_WRITE, row)
        return transactions * rows_per_transaction

    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(_RAW_PG_SCHEMA)
    return in_threads(work)


# -- the table ----------------------------------------------------------------------


def best(samples: list[float], *, lower: bool = False) -> str:
    """The best of the rounds, then their median: "5,081 (4,930)"."""
    value = min(samples) if lower else max(samples)
    return f"{_figure(value)} ({_figure(statistics.median(samples))})"


def _figure(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def spent_row(name: str, runs: list[dict[str, float]]) -> str:
    """A row of the CPU table: the round with the highest rate, each share in µs per commit."""
    run = max(runs, key=lambda r: r["rate"])
    total = run["server"] + run["load"] + run["database"]
    return (f"| {name} | {run['rate']:,.0f} | {run['server'] * 1e6:.0f} µs "
            f"| {run['load'] * 1e6:.0f} µs | {run['database'] * 1e6:.0f} µs "
            f"| {total * 1e6:.0f} µs | {total * run['rate']:.2f} "
            f"| {run['other'] * run['rate']:.2f} |")  # fmt: skip


async def measure(rounds: int, writes: int, sizes: list[int], compression: str) -> None:
    dsn = os.environ.get("OPTISYNC_TEST_POSTGRES_DSN")
    server_rates: dict[str, list[float]] = {}
    server_cpu: dict[str, list[float]] = {}
    limits: dict[str, list[float]] = {}
    spent: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        # The CLI runs with PYTHONMALLOC=malloc (memory goes back to the system
        # after a crowd leaves, at a CPU cost): measured beside the default.
        sqlite = ["--database", f"{folder}/server.sqlite3"]
        back_ends: dict[str, tuple[list[str], dict[str, str]]] = {
            "SQLite": (sqlite, {}),
            "SQLite, PYTHONMALLOC=malloc": (sqlite, {"PYTHONMALLOC": "malloc"}),
        }
        if dsn:
            back_ends["PostgreSQL"] = (["--postgres", dsn], {})
        for r in range(rounds):  # interleaved: each round measures every side once
            for name, (arguments, environment) in back_ends.items():
                with process(optisync_server(*arguments), **environment) as (running, url):
                    await spread_load([url], WARM_UP)
                    run = await commit_load_spent(url, running.pid, writes)
                server_rates.setdefault(name, []).append(run["rate"])
                server_cpu.setdefault(name, []).append(run["server"] * 1e6)
                spent.setdefault(f"optisync + {name}", []).append(run)
            for mode in ("send", "broadcast"):
                with process(bare_server(mode, compression)) as (running, url):
                    await spread_load([url], WARM_UP)
                    run = await commit_load_spent(url, running.pid, writes)
                limits.setdefault(f"bare {mode} commits/s", []).append(run["rate"])
                limits.setdefault(f"bare {mode} CPU", []).append(run["server"] * 1e6)
                spent.setdefault(f"bare websockets server, {mode}", []).append(run)
            raw = f"{folder}/raw{r}.sqlite3"
            limits.setdefault("sqlite 1", []).append(raw_sqlite(raw, writes, 1))
            limits.setdefault("sqlite 10", []).append(raw_sqlite(raw, writes // 10 or 1, 10))
            if dsn:
                limits.setdefault("pg 1", []).append(raw_psycopg(dsn, writes, 1))
                limits.setdefault("pg 10", []).append(raw_psycopg(dsn, writes // 10 or 1, 10))
        fan: dict[str, dict[int, tuple[float, float]]] = {"optisync": {}, "bare": {}}
        for devices in sizes:
            with process(optisync_server("--database", f"{folder}/fan{devices}.sqlite3")) as (
                _,
                url,
            ):
                fan["optisync"][devices] = await fan_out(url, devices)
            with process(bare_server("broadcast", compression)) as (_, url):
                fan["bare"][devices] = await fan_out(url, devices)

    print(f"{WRITERS} writers, {writes} writes each, best of {rounds} interleaved rounds; "
          f"bare server compression {compression}; {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}\n")  # fmt: skip
    print("Best of the rounds, their median in brackets:\n")
    print("| measure | rate | CPU per commit |")
    print("|---|---|---|")
    for name in server_rates:
        print(f"| optisync + {name} | {best(server_rates[name])} commits/s "
              f"| {best(server_cpu[name], lower=True)} µs |")  # fmt: skip
    for mode in ("send", "broadcast"):
        print(f"| bare websockets server, {mode} | {best(limits[f'bare {mode} commits/s'])} "
              f"commits/s | {best(limits[f'bare {mode} CPU'], lower=True)} µs |")  # fmt: skip
    print(f"| raw sqlite3, 1 row per transaction | {best(limits['sqlite 1'])} txn/s | |")
    print(f"| raw sqlite3, 10 rows per transaction | {best(limits['sqlite 10'])} rows/s | |")
    if dsn:
        print(f"| raw psycopg, one statement per transaction | {best(limits['pg 1'])} txn/s | |")
        print(f"| raw psycopg, 10 statements per transaction | {best(limits['pg 10'])} rows/s | |")
    print()
    print("Where the cores go, in the round with the highest rate (CPU per commit of the")
    print("server process, of this load generator, of PostgreSQL's processes; cores busy")
    print(f"= their total x commits/s, of {os.cpu_count()}; other = the rest of the machine):\n")
    print("| server | commits/s | server | load | database | total | cores busy | other |")
    print("|---|---|---|---|---|---|---|---|")
    for name, runs in spent.items():
        print(spent_row(name, runs))
    print()
    sqlite_rate = max(server_rates["SQLite"])
    print(f"SQLite: {sqlite_rate / max(limits['sqlite 1']):.2f}x raw 1-row transactions")
    if dsn:
        print(f"PostgreSQL: {max(server_rates['PostgreSQL']) / max(limits['pg 1']):.2f}x "
              "raw one-statement transactions")  # fmt: skip
    cpu_ratio = min(server_cpu["SQLite"]) / min(limits["bare send CPU"])
    print(
        f"CPU per commit (SQLite): {cpu_ratio:.2f}x the bare server's per-connection send, "
        f"{min(server_cpu['SQLite']) / min(limits['bare broadcast CPU']):.2f}x its broadcast()"
    )
    print()
    print("| devices | optisync p50 | p99 | bare broadcast() p50 | p99 | p99 ratio |")
    print("|---|---|---|---|---|---|")
    for devices in sizes:
        (p50, p99), (b50, b99) = fan["optisync"][devices], fan["bare"][devices]
        print(f"| {devices:,} | {p50:.1f} ms | {p99:.1f} ms | {b50:.1f} ms | {b99:.1f} ms "
              f"| {p99 / b99:.2f}x |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=500, help="per writer, per round")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    parser.add_argument("--compression", choices=["off", "deflate"], default="off",
                        help="the bare server's (match the optisync server's)")  # fmt: skip
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4],
                        help="server processes on one PostgreSQL database")  # fmt: skip
    options = parser.parse_args()
    asyncio.run(measure(options.rounds, options.writes, options.sizes, options.compression))
    if os.environ.get("OPTISYNC_TEST_POSTGRES_DSN") and options.processes:
        asyncio.run(across_processes(os.environ["OPTISYNC_TEST_POSTGRES_DSN"],
                                     options.processes, options.writes))  # fmt: skip
