"""Devices converge through the library's server over loopback."""

from __future__ import annotations

from live_support import DeviceFactory

from examples.live.client import wire_of
from examples.live.demo import Stage, wait_converged
from optisync import PushOutcome


async def test_two_devices_converge_on_the_later_of_two_concurrent_writes(
    stage: Stage, make_device: DeviceFactory
) -> None:
    url = stage.url
    phone, laptop = await make_device(url), await make_device(url)
    await phone.client.wait_online()
    await laptop.client.wait_online()
    stage.before.close()
    red = phone.set_value("color", "red")
    blue = laptop.set_value("color", "blue")
    await stage.before.wait_held(2)
    stage.before.release(device_id=phone.device_id)
    await red
    stage.before.open()
    await blue

    await wait_converged([phone, laptop], stage.database)
    assert phone.value("color") == laptop.value("color") == "blue"
    assert phone.revision("color") == laptop.revision("color") == 2


async def test_taps_during_a_request_are_sent_as_one_follow_up(
    stage: Stage, make_device: DeviceFactory
) -> None:
    url = stage.url
    phone, laptop = await make_device(url), await make_device(url)
    await phone.client.wait_online()
    await laptop.client.wait_online()
    stage.before.close()
    first = phone.toggle("like")
    await stage.before.wait_held(1)
    phone.toggle("like")
    phone.toggle("like")
    stage.before.open()
    await first

    await wait_converged([phone, laptop], stage.database)
    assert [ack.server_revision for ack in phone.record.acks] == [1, 2]
    assert stage.database[wire_of("like")].server_revision == 2
    assert laptop.value("like") is True


async def test_the_writer_gets_its_own_push_and_the_others_apply_it(
    stage: Stage, make_device: DeviceFactory
) -> None:
    url = stage.url
    phone, laptop = await make_device(url), await make_device(url)
    await phone.client.wait_online()
    await laptop.client.wait_online()

    await phone.set_value("title", "hello")
    await wait_converged([phone, laptop], stage.database)

    pushes = [(push.device_id, push.server_revision) for push, _ in phone.record.pushes]
    assert pushes == [(phone.device_id, 1)]
    [(push, outcome)] = laptop.record.pushes
    assert (push.device_id, outcome) == (0, PushOutcome.APPLIED)  # the writer stays anonymous
    assert laptop.value("title") == "hello"


async def test_a_device_that_joins_later_receives_each_keys_newest_value_as_a_replay(
    stage: Stage, make_device: DeviceFactory
) -> None:
    url = stage.url
    phone = await make_device(url)
    await phone.client.wait_online()
    await phone.set_value("a", 1)
    await phone.set_value("b", [1, 2])
    await phone.set_value("a", {"x": None})

    laptop = await make_device(url)
    await wait_converged([phone, laptop], stage.database)

    assert laptop.record.replays == [2]  # a's overwritten value is not replayed
    assert laptop.values == {"a": {"x": None}, "b": [1, 2]}
    assert laptop.client.cursor == 3
