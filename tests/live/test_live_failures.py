"""Dropped connections, server restarts, refused writes: failed requests reload."""

from __future__ import annotations

import pytest
from live_support import DeviceFactory, read_log, take_offline

from examples.live.demo import Stage, wait_converged
from examples.live.network import Link
from optisync.client import ClientConnectionError, RequestRefusedError


async def test_a_tap_while_offline_fails_at_once_and_the_reload_restores_the_server_value(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    await phone.wait_online()
    await phone.set_value("color", "red")
    await take_offline(phone, link)

    with pytest.raises(ClientConnectionError):
        await phone.set_value("color", "blue")
    assert phone.state.value("color") == "blue"  # optimistic, never sent
    assert phone.unconfirmed_items == {"color"}

    await stage.server.wait_connections(0)
    link.up()
    await wait_converged([phone], stage.database)
    assert (phone.state.value("color"), phone.state.revisions["color"]) == ("red", 1)
    assert [reload.value for reload in phone.record.reloads] == ["red"]


async def test_a_request_in_flight_at_a_drop_fails_and_its_reload_shows_the_late_commit(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    await phone.wait_online()
    await phone.set_value("like", True)
    stage.before.close()
    in_flight = phone.toggle("like")
    await stage.before.wait_held(1)

    link.down()
    with pytest.raises(ClientConnectionError):
        await in_flight
    assert phone.state.value("like") is False
    assert phone.unconfirmed_items == {"like"}

    stage.before.open()  # the server commits the write its device no longer waits for
    await stage.server.wait_connections(0)
    link.up()
    await wait_converged([phone], stage.database)
    assert (phone.state.value("like"), phone.state.revisions["like"]) == (False, 2)
    assert phone.record.replays == [0, 1]


async def test_a_server_restart_after_the_commit_delivers_the_write_by_replay(
    stage: Stage, make_device: DeviceFactory
) -> None:
    async with stage.link() as phone_link, stage.link() as laptop_link:
        phone = await make_device(phone_link.url)
        laptop = await make_device(laptop_link.url)
        await phone.wait_online()
        await laptop.wait_online()
        stage.after.close()
        in_flight = phone.set_value("color", "blue")
        await stage.after.wait_held(1)

        phone_link.down()
        laptop_link.down()
        with pytest.raises(ClientConnectionError):
            await in_flight
        stage.after.open()
        await stage.stop()
        await stage.start()
        phone_link.up()
        laptop_link.up()
        await wait_converged([phone, laptop], stage.database)
    assert phone.record.acks == []  # never acknowledged, yet committed
    assert phone.state.value("color") == laptop.state.value("color") == "blue"
    assert phone.state.revisions["color"] == laptop.state.revisions["color"] == 1


async def test_a_dropped_device_gets_exactly_the_changes_it_missed_replayed(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    laptop = await make_device(stage.url)
    await phone.wait_online()
    await laptop.wait_online()
    await laptop.set_value("a", 1)
    await wait_converged([phone, laptop], stage.database)

    await take_offline(phone, link)
    await laptop.set_value("a", 2)
    await laptop.set_value("b", True)
    await laptop.set_value("a", 3)
    assert phone.state.values == {"a": 1}

    await stage.server.wait_connections(1)
    link.up()
    await wait_converged([phone, laptop], stage.database)
    assert phone.record.replays == [0, 3]
    assert phone.state.values == {"a": 3, "b": True}
    assert phone.state.cursor == 4


async def test_a_write_the_server_refuses_fails_and_the_reload_takes_it_back(
    stage: Stage, make_device: DeviceFactory
) -> None:
    phone = await make_device(stage.url)
    await phone.wait_online()

    with pytest.raises(RequestRefusedError) as refused:
        await phone.set_value("big", "x" * 70_000)  # over the server's 64 KiB limit

    assert refused.value.code == "too_large"
    await wait_converged([phone], stage.database)
    assert "big" not in phone.state.values
    assert await read_log(stage.path) == {}
