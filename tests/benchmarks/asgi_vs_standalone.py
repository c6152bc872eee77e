"""The standalone server (websockets) beside the ASGI endpoint under uvicorn, paired runs.

Run: ``.venv/bin/python tests/benchmarks/asgi_vs_standalone.py``. Loopback
only; each round starts one server process of each kind, in alternating
order, and measures both with the same load (server_limits.py's: 10 writers,
each waiting for its ack before the next write; then a push fan-out to 100
devices). Both on the asyncio event loop, per-address limits raised (every
device comes from 127.0.0.1), compression off on both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile

from tests.benchmarks.server_limits import WRITERS, commit_load, fan_out, process

LIMITS = (
    "Limits(max_connections_per_address=100_000, address_messages_per_second=1e9, "
    "address_burst=10**9, messages_per_second=1e9, burst=10**9, "
    "address_receive_bytes_per_second=0)"
)

STANDALONE = f"""
import asyncio, logging, sys
from optisync.server import Limits, SqliteStorage, SyncServer

async def main():
    server = SyncServer(SqliteStorage(sys.argv[1]), limits={LIMITS})
    async with server.run(port=0) as url:
        print(url, flush=True)
        await asyncio.Future()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main())
"""

ASGI = f"""
import asyncio, logging, sys
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from optisync.server import Limits, SqliteStorage, SyncServer
from optisync.server.asgi import SyncEndpoint

async def main():
    limits = {LIMITS}
    endpoint = SyncEndpoint(SyncServer(SqliteStorage(sys.argv[1]), limits=limits))
    app = Starlette(routes=[WebSocketRoute("/sync", endpoint)], lifespan=endpoint.lifespan)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="asyncio", log_level="warning",
                            ws_max_size=limits.max_frame_bytes, ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    config.load()
    server.lifespan = config.lifespan_class(config)
    await server.startup()
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"ws://127.0.0.1:{{port}}/sync", flush=True)
    await asyncio.Future()

logging.basicConfig(level=logging.WARNING)
asyncio.run(main())
"""

KINDS = {"standalone": STANDALONE, "asgi": ASGI}


async def measure(rounds: int, writes: int, devices: int) -> None:
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    cpu: dict[str, list[float]] = {kind: [] for kind in KINDS}
    p99: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as folder:
        for r in range(rounds):
            order = list(KINDS) if r % 2 == 0 else list(reversed(KINDS))
            for kind in order:
                database = f"{folder}/{kind}{r}.sqlite3"
                with process([sys.executable, "-c", KINDS[kind], database]) as (running, url):
                    rate, seconds = await commit_load(url, running.pid, writes)
                    _, late = await fan_out(url, devices)
                rates[kind].append(rate)
                cpu[kind].append(seconds * 1e6)
                p99[kind].append(late)
    print(f"{WRITERS} writers, {writes} writes each; fan-out to {devices} devices; "
          f"{rounds} alternating rounds; {os.cpu_count()} cores, Python "
          f"{sys.version.split()[0]}\n")  # fmt: skip
    print("| server | commits/s (median, best) | CPU per commit (median) | fan-out p99 (median) |")
    print("|---|---|---|---|")
    for kind in KINDS:
        print(f"| {kind} | {statistics.median(rates[kind]):,.0f}, {max(rates[kind]):,.0f} "
              f"| {statistics.median(cpu[kind]):,.0f} µs "
              f"| {statistics.median(p99[kind]):.1f} ms |")  # fmt: skip
    print("\nper round, commits/s:", {k: [round(v) for v in rates[k]] for k in KINDS})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--writes", type=int, default=200, help="per writer, per round")
    parser.add_argument("--devices", type=int, default=100, help="of the fan-out")
    options = parser.parse_args()
    asyncio.run(measure(options.rounds, options.writes, options.devices))
