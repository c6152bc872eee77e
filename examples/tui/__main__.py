"""Run the demo: ``python -m examples.tui [options]`` (``--help`` lists them).

By default it runs against the in-process simulated server; ``--live`` uses
the WebSocket server of ``examples.live`` instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from examples.tui.app import DemoApp
from examples.tui.backend import Backend
from examples.tui.persistence import load_server, save_server
from examples.tui.simulated import DEFAULT_LATENCY, SimulatedServer


def default_data_dir() -> Path:
    """Where the demo keeps its files: ``$XDG_CACHE_HOME/optisync-tui`` or ``~/.cache/...``."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "optisync-tui"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line of the demo.

    Example:
        >>> parse_args(["--latency", "0.5"]).latency
        0.5
        >>> parse_args(["--live"]).live, parse_args(["--live", "ws://h:1"]).live
        ('', 'ws://h:1')
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.tui",
        description="Try the seven use cases of optimistic sync with push.",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=DEFAULT_LATENCY,
        help=f"seconds a response takes (default {DEFAULT_LATENCY:g})",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder for the saved state (default: ~/.cache/optisync-tui)",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="forget the saved state and start over"
    )
    parser.add_argument(
        "--live",
        nargs="?",
        const="",
        default=None,
        metavar="URL",
        help="use the live WebSocket server of examples.live: the one at URL, "
        "or one started in this process when no URL is given",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the app until the user quits."""
    args = parse_args(argv)
    data_dir: Path = args.data_dir or default_data_dir()
    mode = "simulated" if args.live is None else "live"
    app_file = data_dir / f"{mode}-app.json"
    server_file = data_dir / "simulated-server.json"
    live_file = data_dir / "live-server.sqlite"
    if args.fresh:
        for path in (app_file, server_file, live_file):
            path.unlink(missing_ok=True)
    backend: Backend
    if args.live is None:
        server = SimulatedServer(load_server(server_file), latency=args.latency)
        backend = server
    else:
        from examples.tui.live_backend import LiveBackend  # websockets only for --live

        data_dir.mkdir(parents=True, exist_ok=True)
        backend = LiveBackend(args.live or None, database=live_file, latency=args.latency)
    DemoApp(backend, state_file=app_file).run()
    if args.live is None:
        # The simulated server lives in this process: keep its database for the next run.
        save_server(server_file, server.database)


if __name__ == "__main__":
    main()
