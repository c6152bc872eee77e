"""Regenerate ``docs/img/tui.svg``: ``python -m examples.tui.screenshot [PATH]``.

It drives the real app headless with Textual's Pilot, against a simulated
server whose responses wait at a gate, so the picture is the same on every
run: a push from the other device, then three taps (requests: one in
flight, one follow-up to come), the help of use case 2 open.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from examples.tui.app import DemoApp
from examples.tui.simulated import Gate, SimulatedServer

__all__ = ["SIZE", "take_screenshot"]

SIZE = (120, 38)
DEFAULT_PATH = Path("docs/img/tui.svg")


async def take_screenshot(path: Path) -> Path:
    """Drive the app into an instructive state and save its screen as SVG to ``path``."""
    gate = Gate()
    server = SimulatedServer(wait=gate)
    with tempfile.TemporaryDirectory() as folder:
        app = DemoApp(server, state_file=Path(folder) / "app.json", device_id=4242)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("n")  # the other device writes: pushed to the app
            await pilot.press("space")  # request 1 (liked) goes out
            await gate.wait_for_held(1)
            await pilot.press("space", "space")  # coalesced: no request yet
            await pilot.press("2")
            await pilot.pause()
            path.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=path.name, path=str(path.parent))
            while gate.held:  # let the requests finish so the store closes cleanly
                gate.release()
                await pilot.pause()
    return path


def main() -> None:
    """Save the screenshot to the path given, or to docs/img/tui.svg."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PATH
    print(asyncio.run(take_screenshot(path)))


if __name__ == "__main__":
    main()
