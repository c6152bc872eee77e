"""A device's file: what survives a restart, and why stale replays are then ignored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from live_support import DeviceFactory, wait_converged

from examples.live.client import LiveState
from examples.live.demo import Valve
from examples.live.persistence import DeviceStorage, SavedItem
from examples.live.server import LiveServer
from optisync import PushOutcome


async def test_a_restarted_device_restores_its_values_revisions_cursor_and_device_id(
    server: LiveServer, make_device: DeviceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "phone.sqlite3"
    phone = make_device(server.url, storage_path=path)
    await phone.wait_ready()
    await phone.set_value("color", "red")
    await phone.toggle("like")
    await wait_converged([phone], server.database)
    device_id, state, cursor = phone.device_id, phone.state, phone.cursor
    await phone.close()

    again = make_device(server.url, storage_path=path)

    assert again.device_id == device_id
    assert again.state == state
    assert again.cursor == cursor == 2
    await wait_converged([again], server.database)
    assert again.replays == [0]


async def test_persisted_revisions_make_a_restarted_device_ignore_stale_replays(
    server: LiveServer, make_device: DeviceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "phone.sqlite3"
    phone = make_device(server.url, storage_path=path)
    laptop = make_device(server.url)
    await phone.wait_ready()
    await laptop.wait_ready()
    for value in ("red", "green", "blue"):
        await laptop.set_value("color", value)
    await phone.set_value("size", 1)
    await phone.set_value("size", 2)
    await wait_converged([phone, laptop], server.database)
    saved_state = phone.state
    await phone.close()
    # Rewind the saved cursor, as a device whose cursor lagged its state
    # would be: the server now replays every change, all of them known.
    with DeviceStorage(path) as storage:
        storage.save({}, cursor=0)

    again = make_device(server.url, storage_path=path)
    emitted: list[LiveState] = []
    again.subscribe(emitted.append)
    await wait_converged([again], server.database)

    assert again.replays == [5]
    assert [outcome for _, outcome in again.pushes] == [PushOutcome.STALE] * 5
    assert emitted == []  # no replayed value ever reached the screen
    assert again.state == saved_state


async def test_a_tap_unconfirmed_at_close_is_reloaded_after_the_restart(
    valve: Valve, make_device: DeviceFactory, tmp_path: Path
) -> None:
    path = tmp_path / "phone.sqlite3"
    async with LiveServer(before_commit=valve) as server:
        phone = make_device(server.url, storage_path=path)
        await phone.wait_ready()
        await phone.set_value("color", "red")
        valve.close()
        phone.set_value("color", "blue")
        await valve.wait_held(1)
        await phone.close()  # the sync is cancelled: "blue" may never reach the server
        await valve.wait_empty()
        valve.open()

        again = make_device(server.url, storage_path=path)
        assert again.state.value("color") == "blue"
        assert again.unconfirmed_items == {"color"}
        await wait_converged([again], server.database)

        assert again.state.value("color") == "red"


async def test_a_save_that_fails_leaves_the_previous_save_whole(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    with DeviceStorage(path, new_device_id=7) as storage:
        storage.save({"a": SavedItem("1", 1, pending=False)}, cursor=1)
        broken = SavedItem(object(), 2, pending=False)  # type: ignore[arg-type]
        with pytest.raises(sqlite3.Error):
            storage.save({"a": SavedItem("2", 2, pending=False), "b": broken}, cursor=2)

    with DeviceStorage(path) as storage:
        saved = storage.load()
    assert saved.device_id == 7
    assert saved.cursor == 1
    assert saved.items == {"a": SavedItem("1", 1, pending=False)}


def test_a_storage_file_made_without_an_id_gets_a_random_one_and_keeps_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "phone.sqlite3"
    with DeviceStorage(path) as storage:
        first = storage.device_id
    with DeviceStorage(path, new_device_id=1) as storage:
        assert storage.device_id == first
    assert 0 <= first < 2**53
