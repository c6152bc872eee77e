"""What Prometheus metrics cost the server: commits/s and CPU per commit, with and without.

Run: ``.venv/bin/python tests/benchmarks/metrics_cost.py [--rounds 10 --writes 300]``.
Loopback only. The load is server_limits.py's: 10 writers, each waiting for
its ack before its next write, every write pushed to all 10. Rounds alternate
(without, with, without, ...), each on a fresh server process and database,
so that a machine busier at one moment skews both sides alike; the table
gives the median of each side, the ratio of the medians, and the median of
each round's own ratio (its two runs ran back to back).

``--instructions``: the same load on a server under valgrind's callgrind,
which counts the user-space instructions of the server's threads while the
load runs (its start and imports left out): a count a busy machine does not
skew, unlike CPU time. Group-commit batches still vary from run to run.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

from server_limits import WRITERS, commit_load, open_device, process, write_many

SERVER = r"""
import asyncio, logging, sys
from optisync.server import Limits, SqliteStorage, SyncServer

async def main(where, with_metrics):
    metrics = None
    if with_metrics == "on":
        from optisync.server.metrics import ServerMetrics
        metrics = ServerMetrics()
    limits = Limits(max_connections_per_address=100_000, address_messages_per_second=1e9,
                    address_burst=10**9, messages_per_second=1e9, burst=10**9,
                    address_receive_bytes_per_second=0)
    server = SyncServer(SqliteStorage(where), limits=limits, metrics=metrics)
    async with server.run(port=0) as url:
        print(url, flush=True)
        await asyncio.Future()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def metrics_work_per_commit() -> float:
    """Microseconds of the metrics calls a server with metrics makes for one commit."""
    from prometheus_client import CollectorRegistry

    from optisync.server.metrics import ServerMetrics

    metrics = ServerMetrics(CollectorRegistry())
    clock = time.perf_counter

    def one_commit() -> None:
        started = clock()  # _publish_measured; _set reads the clock with or without metrics
        metrics.committed(clock() - started)
        metrics.fanned_out(clock() - started)

    runs = 100_000
    return min(timeit.repeat(one_commit, number=runs, repeat=5)) / runs * 1e6


async def measure(rounds: int, writes: int) -> None:
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                command = [sys.executable, "-c", SERVER, f"{folder}/{side}{r}.sqlite3", side]
                with process(command) as (running, url):
                    rate, seconds = await commit_load(url, running.pid, writes)
                rates[side].append(rate)
                cpu[side].append(seconds * 1e6)
    rate_off, rate_on = statistics.median(rates["off"]), statistics.median(rates["on"])
    cpu_off, cpu_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(f"{WRITERS} writers, {writes} writes each, {rounds} alternating rounds, medians\n")
    print("| server | commits/s | CPU per commit |")
    print("|---|---|---|")
    print(f"| without metrics | {rate_off:,.0f} | {cpu_off:,.0f} µs |")
    print(f"| with metrics | {rate_on:,.0f} | {cpu_on:,.0f} µs |")
    print(f"| with / without | {rate_on / rate_off:.3f} | {cpu_on / cpu_off:.3f} |")
    paired_rate = statistics.median(
        on / off for on, off in zip(rates["on"], rates["off"], strict=True)
    )
    paired_cpu = statistics.median(on / off for on, off in zip(cpu["on"], cpu["off"], strict=True))
    print(f"| with / without, median of each round's pair | {paired_rate:.3f} | {paired_cpu:.3f} |")
    spread = {side: f"{min(v):,.0f}-{max(v):,.0f}" for side, v in rates.items()}
    print(f"\ncommits/s range: without {spread['off']}, with {spread['on']}")
    work = metrics_work_per_commit()
    print(f"the metrics calls of one commit, timed alone: {work:.2f} µs, "
          f"{work / cpu_off:.1%} of the CPU per commit without metrics")  # fmt: skip


def callgrind(option: str, *values: str) -> None:
    """Tell the callgrind running the server (the only one) to do ``option``."""
    subprocess.run(["callgrind_control", option, *values], check=True, capture_output=True)


def counted_instructions(pattern: str) -> int:
    """The total instructions of callgrind's dumps matching ``pattern``, which it removes."""
    totals = [0]
    for path in glob.glob(pattern):  # the dump, and an empty file: the server is killed
        lines = Path(path).read_text().splitlines()
        totals += [int(line.split()[1]) for line in lines if line.startswith("totals:")]
        os.remove(path)
    return max(totals)


async def instructions_per_commit(folder: str, side: str, writes: int) -> float:
    """User-space instructions the server executes per commit, counted by callgrind."""
    out = f"{folder}/callgrind.{side}{time.monotonic_ns()}"
    command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
               f"--callgrind-out-file={out}.%p", sys.executable, "-c", SERVER,
               f"{folder}/{side}{time.monotonic_ns()}.sqlite3", side]  # fmt: skip
    with process(command) as (server, url):
        devices = [await open_device(url, n) for n in range(1, WRITERS + 1)]
        callgrind("--instr", "on", str(server.pid))
        await asyncio.gather(*(write_many(d, n, writes) for n, d in enumerate(devices, 1)))
        callgrind("--instr", "off", str(server.pid))
        callgrind("--dump", str(server.pid))
    return counted_instructions(f"{out}.*") / (WRITERS * writes)


async def count_instructions(rounds: int, writes: int) -> None:
    counts: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
                counts[side].append(await instructions_per_commit(folder, side, writes))
    print(f"{WRITERS} writers, {writes} writes each, {rounds} alternating rounds under callgrind\n")
    print("| server | instructions per commit (median) | range |")
    print("|---|---|---|")
    for side, label in (("off", "without metrics"), ("on", "with metrics")):
        values = counts[side]
        print(f"| {label} | {statistics.median(values):,.0f} "
              f"| {min(values):,.0f}-{max(values):,.0f} |")  # fmt: skip
    ratio = statistics.median(counts["on"]) / statistics.median(counts["off"])
    print(f"| with / without | {ratio:.4f} | |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writes", type=int, default=300, help="per writer, per round")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions under valgrind's callgrind instead")  # fmt: skip
    options = parser.parse_args()
    if not options.instructions:
        asyncio.run(measure(options.rounds, options.writes))
    elif shutil.which("callgrind_control") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    else:
        asyncio.run(count_instructions(options.rounds, options.writes))
