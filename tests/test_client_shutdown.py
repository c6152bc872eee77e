"""A client leaves no socket open behind it: a server stopped with Ctrl-C exits at once.

The bug report: five short-lived clients in a loop, then SIGINT to
``python -m optisync.server``, and the server took 19.6 s to exit in 3 runs
out of 4. The client's reconnect loop was websockets' ``connect()`` iterator,
an async generator that yields inside ``async with connection``: cancelling
the client's task at ``close()`` left the generator suspended, and the socket
open, until garbage collection. The server then waited its close timeouts
for a close frame that never came (nobody ran the client's loop any more):
two close timeouts of 10 s.

A second cause was in the server's ``__main__``: ``asyncio.run``'s Python-level
SIGINT handler could leave the event loop asleep in ``epoll_wait`` when the
signal landed on the log listener's thread, until something woke the loop
(about 1 exit in 50 here). The server now stops on the loop's own signal
handlers, which wake it through its wakeup fd.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optisync import Store
from optisync.client import SyncClient, Traced
from optisync.wire import Hello
from tests.server.conftest import server_process

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")

EXIT_BOUND = 2.0  # seconds; the bug took ~20 (two close timeouts of 10 s)


async def five_short_lived_clients(url: str) -> None:
    """Closed online, closed right after the hello, and closed before connecting."""
    for n in range(5):
        hello_sent = asyncio.Event()

        def trace(event: Traced, hello_sent: asyncio.Event = hello_sent) -> None:
            if isinstance(event.message, Hello):
                hello_sent.set()

        async with SyncClient(Store({}, device_id=1), url, trace=trace) as client:
            if n % 3 == 0:
                await client.wait_online()
            elif n % 3 == 1:
                await hello_sent.wait()


def seconds_to_exit_after_sigint(database: Path) -> float:
    with server_process("--database", str(database)) as (process, url):
        # The clients' loop ends before the signal, as in a script that then
        # stops the server: an open socket of theirs has nobody to answer for it.
        asyncio.run(five_short_lived_clients(url))
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        return time.monotonic() - started


def test_a_server_stopped_after_short_lived_clients_exits_at_once(tmp_path: Path) -> None:
    # 4 runs here (each server start now re-executes once, with PYTHONMALLOC=malloc);
    # the slow variant below runs 50.
    elapsed = [seconds_to_exit_after_sigint(tmp_path / f"s{run}.sqlite3") for run in range(4)]
    assert max(elapsed) < EXIT_BOUND, elapsed


@pytest.mark.slow
def test_a_server_stopped_after_short_lived_clients_exits_at_once_50_runs(
    tmp_path: Path,
) -> None:
    elapsed = [seconds_to_exit_after_sigint(tmp_path / f"s{run}.sqlite3") for run in range(50)]
    assert max(elapsed) < EXIT_BOUND, elapsed
