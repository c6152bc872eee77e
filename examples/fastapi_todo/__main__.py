"""Run the FastAPI app under uvicorn on loopback, and two users' devices against it.

    python -m examples.fastapi_todo

Alice and Bob each keep their own list and share one. Bob's device goes
offline, Alice deletes a shared item, Bob comes back: the item is gone on
his device too. At the end, the app's ``/metrics`` counts the commits.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import tempfile
import urllib.request
from pathlib import Path

import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from examples.fastapi_todo.app import create_app
from examples.fastapi_todo.lists import ListsStore, open_lists
from optisync.device import Device


async def settle(*devices: Device[ListsStore]) -> None:
    """Until every device's writes are acknowledged and it has the pushes made so far."""
    for device in devices:
        await device.caught_up()


def show(name: str, device: Device[ListsStore]) -> None:
    lists = device.store.state
    mine, shared = sorted(lists.mine.values()), sorted(lists.shared.values())
    print(f"  {name:<6} mine: {mine}  shared: {shared}")


async def commits_counted(base_url: str) -> float:
    """``optisync_commits_total`` as the app's ``/metrics`` reports it (a Prometheus scrape)."""

    def scrape() -> str:  # off the loop: the app answers on this very loop
        with urllib.request.urlopen(base_url + "/metrics/", timeout=10) as response:
            return str(response.read().decode())

    for family in text_string_to_metric_families(await asyncio.to_thread(scrape)):
        for sample in family.samples:
            if sample.name == "optisync_commits_total":
                return float(sample.value)
    raise RuntimeError("no optisync_commits_total in /metrics")


async def scenario(base_url: str, folder: Path) -> None:
    alice_file, bob_file = str(folder / "alice.sqlite3"), str(folder / "bob.sqlite3")
    async with (
        open_lists(base_url, "alice", "wonderland", alice_file) as alice,
        open_lists(base_url, "bob", "builder", bob_file) as bob,
    ):
        await alice.store.mine.set("a1", "call mum")
        await bob.store.mine.set("b1", "fix the bike")
        await alice.store.shared.set("s1", "bread")
        await bob.store.shared.set("s2", "cheese")
        await settle(alice, bob)
        print("Each sees their own list and the shared one:")
        show("alice", alice)
        show("bob", bob)
    print("Bob's device is closed (offline); Alice deletes 'bread' from the shared list.")
    async with open_lists(base_url, "alice", "wonderland", alice_file) as alice:
        await alice.store.shared.delete("s1")
        await settle(alice)
    async with open_lists(base_url, "bob", "builder", bob_file) as bob:
        await settle(bob)
        print("Bob's device, back online, replays the delete:")
        show("bob", bob)
    print(f"/metrics: optisync_commits_total {await commits_counted(base_url):.0f}")


async def main(port: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        app = create_app(str(Path(folder) / "server.sqlite3"), secrets.token_urlsafe(32))
        config = uvicorn.Config(app, log_level="warning", ws_per_message_deflate=False)
        server = uvicorn.Server(config)
        # Listening before uvicorn starts: the first request waits in the
        # socket's backlog until the app (and its lifespan) is up.
        listener = socket.create_server(("127.0.0.1", port))
        bound = listener.getsockname()[1]
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        print(f"The app serves http://127.0.0.1:{bound} (login, /sync, /metrics).")
        try:
            await scenario(f"http://127.0.0.1:{bound}", Path(folder))
        finally:
            server.should_exit = True
            await serving
            listener.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    asyncio.run(main(parser.parse_args().port))
