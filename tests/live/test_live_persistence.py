"""A device's file (optisync.persistence): what survives a restart, and why replays are stale."""

from __future__ import annotations

from live_support import DeviceFactory, take_offline

from examples.live.client import LiveState
from examples.live.demo import Stage, wait_converged
from examples.live.network import Link
from optisync import PushOutcome


async def test_a_restarted_device_restores_its_values_revisions_cursor_and_device_id(
    stage: Stage, make_device: DeviceFactory
) -> None:
    phone = await make_device(stage.url, "phone")
    await phone.wait_online()
    await phone.set_value("color", "red")
    await phone.toggle("like")
    await wait_converged([phone], stage.database)
    device_id, state = phone.device_id, phone.state
    await phone.close()

    again = await make_device(stage.url, "phone", start=False)
    assert again.device_id == device_id
    assert again.state == state
    assert again.state.cursor == again.client.cursor == 2
    await stage.server.wait_connections(0)  # the old connection has let the device id go
    again.start()
    await wait_converged([again], stage.database)
    assert again.record.replays == [0]


async def test_persisted_revisions_make_a_restarted_device_ignore_stale_replays(
    stage: Stage, make_device: DeviceFactory
) -> None:
    phone = await make_device(stage.url, "phone")
    laptop = await make_device(stage.url)
    await phone.wait_online()
    await laptop.wait_online()
    for value in ("red", "green", "blue"):
        await laptop.set_value("color", value)
    await phone.set_value("size", 1)
    await phone.set_value("size", 2)
    await wait_converged([phone, laptop], stage.database)
    saved_state = phone.state
    await phone.close()

    again = await make_device(stage.url, "phone", start=False)
    # Rewind the cursor, as a device whose cursor lagged its state would be:
    # the server now replays every change, all of them known.
    again.client.cursor = 0
    emitted: list[LiveState] = []
    again.store.subscribe(emitted.append)
    await stage.server.wait_connections(1)
    again.start()
    await wait_converged([again], stage.database)

    assert again.record.replays == [5]
    assert [outcome for _, outcome in again.record.pushes] == [PushOutcome.STALE] * 5
    assert emitted == []  # no replayed value ever reached the screen
    assert again.state == saved_state


async def test_a_tap_unconfirmed_at_close_is_reloaded_after_the_restart(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url, "phone")
    await phone.wait_online()
    await phone.set_value("color", "red")
    await take_offline(phone, link)
    phone.set_value("color", "blue")  # fails at once: offline
    await phone.close()
    assert [type(error).__name__ for error in phone.record.errors] == ["ClientConnectionError"]

    again = await make_device(stage.url, "phone", start=False)
    assert again.state.value("color") == "blue"
    assert again.unconfirmed_items == {"color"}
    await stage.server.wait_connections(0)
    again.start()
    await wait_converged([again], stage.database)
    assert (again.state.value("color"), again.state.revisions["color"]) == ("red", 1)
    assert [reload.value for reload in again.record.reloads] == ["red"]
