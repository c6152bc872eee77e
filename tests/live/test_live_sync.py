"""Devices converge through a real server over loopback."""

from __future__ import annotations

from live_support import DeviceFactory, wait_converged

from examples.live.demo import Valve
from examples.live.server import LiveServer
from optisync import PushOutcome


async def test_two_devices_converge_on_the_later_of_two_concurrent_writes(
    valve: Valve, make_device: DeviceFactory
) -> None:
    async with LiveServer(before_commit=valve) as server:
        phone, laptop = make_device(server.url), make_device(server.url)
        await phone.wait_ready()
        await laptop.wait_ready()
        valve.close()
        red = phone.set_value("color", "red")
        blue = laptop.set_value("color", "blue")
        await valve.wait_held(2)
        valve.release(device_id=phone.device_id)
        await red
        valve.open()
        await blue

        await wait_converged([phone, laptop], server.database)
        assert server.database.current("color") is not None
        assert phone.state.value("color") == laptop.state.value("color") == "blue"
        assert phone.state.revisions["color"] == laptop.state.revisions["color"] == 2


async def test_taps_during_a_request_are_sent_as_one_follow_up(
    valve: Valve, make_device: DeviceFactory
) -> None:
    async with LiveServer(before_commit=valve) as server:
        phone, laptop = make_device(server.url), make_device(server.url)
        await phone.wait_ready()
        await laptop.wait_ready()
        valve.close()
        first = phone.toggle("like")
        await valve.wait_held(1)
        phone.toggle("like")
        phone.toggle("like")
        valve.open()
        await first

        await wait_converged([phone, laptop], server.database)
        assert [ack.server_revision for ack in phone.acks] == [1, 2]
        assert server.database.change_count() == 2
        assert laptop.state.value("like") is True


async def test_the_writer_gets_its_own_push_and_the_others_apply_it(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    phone, laptop = make_device(server.url), make_device(server.url)
    await phone.wait_ready()
    await laptop.wait_ready()

    await phone.set_value("title", "hello")
    await wait_converged([phone, laptop], server.database)

    assert [(push.device_id, push.server_revision) for push, _ in phone.pushes] == [
        (phone.device_id, 1)
    ]
    assert laptop.pushes[0][1] is PushOutcome.APPLIED
    assert laptop.state.value("title") == "hello"


async def test_a_device_that_joins_later_receives_the_whole_history_as_a_replay(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    phone = make_device(server.url)
    await phone.wait_ready()
    await phone.set_value("a", 1)
    await phone.set_value("b", [1, 2])
    await phone.set_value("a", {"x": None})

    laptop = make_device(server.url)
    await wait_converged([phone, laptop], server.database)

    assert laptop.replays == [3]
    assert laptop.state.values == {"a": {"x": None}, "b": [1, 2]}
    assert laptop.cursor == 3
