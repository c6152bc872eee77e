"""``python -m examples.live``: the demo; ``--server`` or ``--client URL`` for the parts."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from examples.live import demo, interactive
from examples.live.two_servers import DSN_VARIABLE
from optisync.device import StorageInUseError


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the demo, the server or an interactive device."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.live",
        description="Live optisync over WebSockets and SQLite. With no flag: the scripted "
        "demo (the library's server and two devices in one process, unattended).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--server", action="store_true", help="run only the server (python -m optisync.server)"
    )
    mode.add_argument("--client", metavar="URL", help="run one interactive device against URL")
    parser.add_argument("--host", default="127.0.0.1", help="server: address to bind")
    parser.add_argument("--port", type=int, default=8765, help="server: port (0: any free one)")
    parser.add_argument("--db", type=Path, default=Path("live.sqlite3"), help="server: database")
    parser.add_argument(
        "--storage", type=Path, default=Path("device.sqlite3"), help="client: its state file"
    )
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        default=os.environ.get(DSN_VARIABLE),
        help=f"demo: PostgreSQL for scene 6, two server processes (default ${DSN_VARIABLE})",
    )
    args = parser.parse_args(argv)
    if args.server:
        from optisync.server.__main__ import main as serve

        serve(["--database", str(args.db), "--host", args.host, "--port", str(args.port)])
        return 0
    if args.client is not None:
        try:
            asyncio.run(interactive.run_client(args.client, args.storage))
        except StorageInUseError as error:
            print(f"python -m examples.live: {error} (--storage FILE)", file=sys.stderr)
            return 1
        return 0
    return demo.main(args.postgres)


if __name__ == "__main__":
    sys.exit(main())
