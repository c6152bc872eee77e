"""A device's file (optisync.persistence): what survives a restart, and why replays are stale."""

from __future__ import annotations

from pathlib import Path

import attrs
from live_support import DeviceFactory, take_offline

from examples.live.client import LiveState
from examples.live.demo import Stage, wait_converged
from examples.live.network import Link
from optisync import PushOutcome
from optisync.persistence import SqliteSnapshotStorage


async def test_a_restarted_device_restores_its_values_revisions_cursor_and_device_id(
    stage: Stage, make_device: DeviceFactory
) -> None:
    phone = await make_device(stage.url, "phone")
    await phone.client.wait_online()
    await phone.set_value("color", "red")
    await phone.toggle("like")
    await wait_converged([phone], stage.database)
    device_id, state = phone.device_id, phone.state
    await phone.close()
    await stage.server.wait_connections(0)  # the old connection has let the device id go

    again = await make_device(stage.url, "phone")
    # Restored, before the new connection has told anything:
    assert again.device_id == device_id
    assert again.state == state
    assert (again.revision("color"), again.revision("like")) == (1, 2)
    assert again.client.cursor == 2
    await wait_converged([again], stage.database)
    assert again.record.replays == [0]


async def rewind_saved_cursor(path: Path) -> None:
    """Set the saved replay position to 0, as a device whose cursor lagged its state."""
    storage = SqliteSnapshotStorage(path)
    try:
        snapshot = await storage.load()
        assert snapshot is not None
        await storage.save(attrs.evolve(snapshot, cursor=0))
    finally:
        await storage.close()


async def test_persisted_revisions_make_a_restarted_device_ignore_stale_replays(
    stage: Stage, make_device: DeviceFactory, tmp_path: Path
) -> None:
    phone = await make_device(stage.url, "phone")
    laptop = await make_device(stage.url)
    await phone.client.wait_online()
    await laptop.client.wait_online()
    for value in ("red", "green", "blue"):
        await laptop.set_value("color", value)
    await phone.set_value("size", 1)
    await phone.set_value("size", 2)
    await wait_converged([phone, laptop], stage.database)
    saved_state = phone.state
    await phone.close()
    # The server now replays each key's newest change, all of them known.
    await rewind_saved_cursor(tmp_path / "phone.sqlite3")
    await stage.server.wait_connections(1)

    again = await make_device(stage.url, "phone")
    assert again.client.cursor == 0
    emitted: list[LiveState] = []
    again.store.subscribe(emitted.append)
    await wait_converged([again], stage.database)

    assert again.record.replays == [2]  # each key's newest value (issue 18)
    assert [outcome for _, outcome in again.record.pushes] == [PushOutcome.STALE] * 2
    assert emitted == []  # no replayed value ever reached the screen
    assert again.state == saved_state


async def test_a_tap_unsent_at_close_is_sent_after_the_restart(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url, "phone")
    await phone.client.wait_online()
    await phone.set_value("color", "red")
    await take_offline(phone, link)
    phone.set_value("color", "blue")  # kept in the outbox: offline
    await phone.close()
    assert phone.record.errors == []

    await stage.server.wait_connections(0)
    again = await make_device(stage.url, "phone")
    assert again.value("color") == "blue"
    assert again.unconfirmed_items == {"color"}
    await wait_converged([again], stage.database)
    assert (again.value("color"), again.revision("color")) == ("blue", 2)
    assert again.record.reloads == []
