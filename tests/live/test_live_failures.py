"""Dropped connections, server restarts, refused writes.

A change cut off by the network is kept in the outbox and sent once the
device is back (unless the replay shows the server has it already); a write
the server refuses is taken back by reloading the item.
"""

from __future__ import annotations

import pytest
from live_support import DeviceFactory, read_log, take_offline

from examples.live.client import wire_of
from examples.live.demo import Stage, wait_converged
from examples.live.network import Link
from optisync.client import RequestRefusedError, Traced
from optisync.wire import Set


def sets(events: list[Traced]) -> list[Set]:
    return [event.message for event in events if isinstance(event.message, Set)]


async def test_a_tap_while_offline_is_kept_in_the_outbox_and_sent_once_back_online(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    await phone.client.wait_online()
    await phone.set_value("color", "red")
    await take_offline(phone, link)

    offline_tap = phone.set_value("color", "blue")
    assert phone.value("color") == "blue"  # optimistic, not sent yet
    assert phone.unconfirmed_items == {"color"}

    await stage.server.wait_connections(0)
    link.up()
    await offline_tap
    await wait_converged([phone], stage.database)
    assert (phone.value("color"), phone.revision("color")) == ("blue", 2)
    assert [change.value for change in (await read_log(stage.path)).values()] == [
        b'"red"',
        b'"blue"',
    ]
    assert phone.record.reloads == []
    assert phone.record.errors == []


async def test_a_request_in_flight_at_a_drop_is_not_resent_when_the_replay_shows_its_commit(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    await phone.client.wait_online()
    await phone.set_value("like", True)
    stage.before.close()
    in_flight = phone.toggle("like")
    await stage.before.wait_held(1)

    link.down()
    await phone.wait_until(lambda: not phone.online)
    assert phone.value("like") is False
    assert phone.unconfirmed_items == {"like"}

    stage.before.open()  # the server commits the write its device no longer waits for
    await stage.server.wait_connections(0)
    link.up()
    await in_flight
    await wait_converged([phone], stage.database)
    assert (phone.value("like"), phone.revision("like")) == (False, 2)
    assert phone.record.replays == [0, 1]
    assert len(sets(phone.record.events)) == 2  # the toggle was sent once
    assert len(await read_log(stage.path)) == 2


async def test_a_server_restart_after_the_commit_delivers_the_write_by_push_without_a_resend(
    stage: Stage, make_device: DeviceFactory
) -> None:
    async with stage.link() as phone_link, stage.link() as laptop_link:
        phone = await make_device(phone_link.url)
        laptop = await make_device(laptop_link.url)
        await phone.client.wait_online()
        await laptop.client.wait_online()
        stage.after.close()
        in_flight = phone.set_value("color", "blue")
        await stage.after.wait_held(1)

        phone_link.down()
        laptop_link.down()
        await phone.wait_until(lambda: not phone.online)
        stage.after.open()
        await stage.stop()
        await stage.start()
        phone_link.up()
        laptop_link.up()
        await in_flight
        await wait_converged([phone, laptop], stage.database)
    assert phone.record.acks == []  # never acknowledged, yet committed
    assert len(sets(phone.record.events)) == 1
    assert phone.value("color") == laptop.value("color") == "blue"
    assert phone.revision("color") == laptop.revision("color") == 1


async def test_a_dropped_device_gets_exactly_the_changes_it_missed_replayed(
    stage: Stage, link: Link, make_device: DeviceFactory
) -> None:
    phone = await make_device(link.url)
    laptop = await make_device(stage.url)
    await phone.client.wait_online()
    await laptop.client.wait_online()
    await laptop.set_value("a", 1)
    await wait_converged([phone, laptop], stage.database)

    await take_offline(phone, link)
    await laptop.set_value("a", 2)
    await laptop.set_value("b", True)
    await laptop.set_value("a", 3)
    assert phone.values == {"a": 1}

    await stage.server.wait_connections(1)
    link.up()
    await wait_converged([phone, laptop], stage.database)
    assert phone.record.replays == [0, 2]  # b, and a's newest value only (issue 18)
    assert phone.values == {"a": 3, "b": True}
    assert phone.client.cursor == 4


async def test_a_write_the_server_refuses_fails_and_the_reload_takes_it_back(
    stage: Stage, make_device: DeviceFactory
) -> None:
    phone = await make_device(stage.url)
    await phone.client.wait_online()
    await phone.set_value("note", "short")

    with pytest.raises(RequestRefusedError) as refused:
        await phone.set_value("note", "x" * 70_000)  # over the server's 64 KiB limit

    assert refused.value.code == "too_large"
    await wait_converged([phone], stage.database)
    assert (phone.value("note"), phone.revision("note")) == ("short", 1)
    assert [reload.value for reload in phone.record.reloads] == ["short"]
    assert list(await read_log(stage.path)) == [1]
    assert stage.database[wire_of("note")].server_revision == 1


async def test_a_refused_first_write_of_an_item_shows_what_it_showed_before(
    stage: Stage, make_device: DeviceFactory
) -> None:
    # The server has nothing to reload (revision -1): the field shows again
    # the value the item had before the refused change (here: none).
    phone = await make_device(stage.url)
    await phone.client.wait_online()
    assert phone.value("big") is None

    with pytest.raises(RequestRefusedError):
        await phone.set_value("big", "x" * 70_000)

    await phone.wait_until(lambda: phone.record.reloads != [])
    await phone.wait_until(lambda: phone.value("big") is None)
    assert [reload.server_revision for reload in phone.record.reloads] == [-1]
    assert phone.revision("big") == -1
    assert phone.unconfirmed_items == frozenset()
    assert await read_log(stage.path) == {}
