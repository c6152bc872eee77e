"""Taps that survive no network and a restart: two phones on the simulator, virtual time.

Run it with ``python -m examples.offline``. It plays:

1. phones A and B online; A likes the post;
2. A loses its network and taps unlike, like, unlike: shown at once, pending;
3. meanwhile B unlikes and likes the post again, and likes the photo;
4. A is restarted from its SQLite file, still offline: its taps are still
   on screen and still pending;
5. A comes back online: its outbox sends its last tap, and the pushes it
   missed arrive.

It prints a timeline and exits 0 only if both phones equal the server and A's
last tap was delivered as last write wins says: A's write reached the server
after B's, so the post is unliked everywhere.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from optisync import Store, testing
from optisync.fields import SyncedMapWithPush, SyncRequest
from optisync.outbox import Backoff, Outbox
from optisync.persistence import JsonCodec, Persistence, open_sqlite
from optisync.testing import Commit, DeviceLink, NetworkFaults, SimulatedNetwork

Likes = dict[str, bool]
BACKOFF = Backoff(initial=0.5, maximum=4.0, jitter=0.0)  # no jitter: the run replays


class Radio:
    """A phone's network: when it is off, every request fails as unreachable."""

    def __init__(self, link: DeviceLink) -> None:
        self.link = link
        self.on = True


class Phone(Store[Likes]):
    liked = SyncedMapWithPush[Likes, str, bool](
        lambda state, item: state.get(item, False),
        lambda state, item, liked: {**state, item: liked},
    )

    def __init__(self, radio: Radio, state: Likes, device_id: int) -> None:
        super().__init__(state, device_id=device_id)
        self.radio = radio

    @liked.sender
    async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int:
        if not self.radio.on:
            raise ConnectionError("no network")
        commit = await self.radio.link.write(item, liked, local_revision=request.local_revision)
        return commit.server_revision

    def on_push(self, commit: Commit) -> None:
        if self.is_closed:
            return  # a push for the store a restart replaced: the new one replays it
        self.liked.push(str(commit.key), bool(commit.value), commit.push_metadata)


class Device:
    """A phone: its store and outbox, and for a persisted one the file it restarts from."""

    def __init__(
        self, name: str, radio: Radio, say: Callable[[str], None], saved: Persistence[Likes] | None
    ) -> None:
        self.name = name
        self.radio = radio
        self.say = say
        self.saved = saved
        state = {} if saved is None else saved.state
        self.store = Phone(radio, state, device_id=radio.link.device_id)
        self.outbox = Outbox(self.store, backoff=BACKOFF)
        if saved is not None:
            saved.attach(self.store)  # restores revisions, resends the outbox
        if radio.on:
            self.connect()

    @classmethod
    async def from_file(
        cls, name: str, radio: Radio, say: Callable[[str], None], path: Path
    ) -> Device:
        """Start (or restart) a phone from its SQLite file."""
        saved = await open_sqlite(
            path, JsonCodec(), initial={}, new_device_id=lambda: radio.link.device_id
        )
        return cls(name, radio, say, saved)

    def connect(self) -> None:
        # since=0: the server replays everything; the persisted revisions make
        # what this phone already had stale.
        self.radio.link.connect(self.store.on_push, since=0)

    def tap(self, item: str) -> None:
        liked = not self.store.liked[item]
        self.store.liked.set(item, liked)
        self.say(f"{self.name} taps {'like' if liked else 'unlike'} {item}")

    def go_offline(self) -> None:
        self.radio.on = False
        self.radio.link.disconnect()
        self.outbox.set_reachable(False)
        self.say(f"{self.name} loses its network")

    def go_online(self) -> None:
        self.radio.on = True
        self.connect()
        self.outbox.set_reachable(True)
        self.say(f"{self.name} is back online")

    async def stop(self) -> None:
        await self.store.close()
        if self.saved is not None:
            await self.saved.close()

    def describe(self) -> str:
        pending = sorted(item for item in self.store.state if self.store.liked.is_pending(item))
        return f"{self.name}: {dict(sorted(self.store.state.items()))} pending={pending}"


async def play(folder: Path, say: Callable[[str], None]) -> bool:
    loop = asyncio.get_running_loop()

    def at(text: str) -> None:
        say(f"[t={loop.time():6.2f}] {text}")

    server = testing.SimulatedServer()
    faults = NetworkFaults(request_latency=(0.05, 0.05), push_latency=(0.02, 0.08))
    network = SimulatedNetwork(server, faults=faults, seed=11)
    path = folder / "phone-a.sqlite3"
    a = await Device.from_file("A", Radio(network.device(1)), at, path)
    b = Device("B", Radio(network.device(2)), at, saved=None)

    a.tap("post")
    await network.settle()
    at(f"synced. {a.describe()}; {b.describe()}")

    a.go_offline()
    for _ in range(3):
        a.tap("post")
    last_tap = a.store.liked["post"]
    await asyncio.sleep(3)  # A retries in vain
    at(f"{a.describe()}  (shown, not rolled back)")

    b.tap("post")
    b.tap("post")
    b.tap("photo")
    await b.outbox.synced()
    await asyncio.sleep(1)  # B's pushes reach B
    at(f"{b.describe()}; server post={server.value('post')}")

    await a.stop()
    at("A is restarted, still offline")
    a = await Device.from_file("A", a.radio, at, path)
    at(f"{a.describe()}  (restored from its file)")
    await asyncio.sleep(2)

    a.go_online()
    await a.outbox.synced()
    await network.settle()
    at(f"synced. {a.describe()}; {b.describe()}")
    ok = _check(server, [a, b], last_tap, say)
    await a.stop()
    await b.stop()
    network.close()
    return ok


def _check(
    server: testing.SimulatedServer,
    devices: list[Device],
    last_tap: bool,
    say: Callable[[str], None],
) -> bool:
    expected = {str(key): bool(server.value(key)) for key in server.keys()}  # noqa: SIM118 - not a dict
    equal = all(device.store.state == expected for device in devices)
    latest = server.latest("post")
    # Last write wins: the post's value is the value of its last commit, and
    # that commit is A's last tap, written after B's (A was offline then).
    a_id = devices[0].radio.link.device_id
    b_writes = [c.server_revision for c in server.log if c.key == "post" and c.device_id != a_id]
    won = (
        latest is not None
        and latest.device_id == a_id
        and latest.value == last_tap
        and latest.server_revision > max(b_writes, default=0)
    )
    say(f"server: {expected}")
    say(f"every phone equals the server: {equal}")
    say(f"A's last tap (liked={last_tap}) won as last write wins says: {won}")
    return equal and won


def main() -> int:
    with tempfile.TemporaryDirectory() as folder:
        ok = testing.run(play(Path(folder), print))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
