"""Server restarts, dropped connections and replays."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from live_support import HANG_GUARD, DeviceFactory, Gate, nested_lists, wait_converged

from examples.live.client import ConnectionLostError, NotConnectedError, RequestRejectedError
from examples.live.demo import Valve
from examples.live.protocol import MAX_NESTING
from examples.live.server import LiveServer


async def test_a_server_restart_before_the_commit_fails_the_request_and_reload_restores_the_value(
    db_path: Path, valve: Valve, make_device: DeviceFactory
) -> None:
    gate = Gate()
    server = LiveServer(db_path, before_commit=valve)
    await server.start()
    port = server.port
    try:
        phone = make_device(server.url, backoff=gate)
        laptop = make_device(server.url, backoff=gate)
        await phone.wait_ready()
        await laptop.wait_ready()
        await phone.set_value("color", "red")
        valve.close()
        in_flight = phone.set_value("color", "blue")
        await valve.wait_held(1)
        gate.close()

        await server.stop()
        with pytest.raises(ConnectionLostError):
            await in_flight
        assert phone.state.value("color") == "blue"  # optimistic, not on the server

        valve.open()
        server = LiveServer(db_path, before_commit=valve)
        await server.start(port=port)
        gate.open()
        await wait_converged([phone, laptop], server.database)
    finally:
        await server.stop()
    assert phone.state.value("color") == "red"
    assert phone.state.revisions["color"] == 1


async def test_a_server_restart_after_the_commit_delivers_the_write_by_replay(
    db_path: Path, valve: Valve, make_device: DeviceFactory
) -> None:
    gate = Gate()
    server = LiveServer(db_path, after_commit=valve)
    await server.start()
    port = server.port
    try:
        phone = make_device(server.url, backoff=gate)
        laptop = make_device(server.url, backoff=gate)
        await phone.wait_ready()
        await laptop.wait_ready()
        valve.close()
        in_flight = phone.set_value("color", "blue")
        await valve.wait_held(1)
        gate.close()

        await server.stop()
        with pytest.raises(ConnectionLostError):
            await in_flight

        valve.open()
        server = LiveServer(db_path, after_commit=valve)
        await server.start(port=port)
        gate.open()
        await wait_converged([phone, laptop], server.database)
    finally:
        await server.stop()
    assert phone.acks == []  # never acknowledged, yet committed and replayed
    assert phone.state.value("color") == laptop.state.value("color") == "blue"
    assert phone.replays == [0, 1]


async def test_a_dropped_device_gets_exactly_the_changes_it_missed_replayed(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    gate = Gate()
    phone = make_device(server.url, backoff=gate)
    laptop = make_device(server.url)
    await phone.wait_ready()
    await laptop.wait_ready()
    await laptop.set_value("a", 1)
    await wait_converged([phone, laptop], server.database)

    gate.close()
    gate.waiting.clear()
    phone.drop_connection()
    async with asyncio.timeout(HANG_GUARD):
        await gate.waiting.wait()  # the phone knows it is offline
    assert not phone.is_connected
    await laptop.set_value("a", 2)
    await laptop.set_value("b", True)
    await laptop.set_value("a", 3)
    assert phone.state.values == {"a": 1}

    gate.open()
    await wait_converged([phone, laptop], server.database)
    assert phone.replays == [0, 3]
    assert phone.state.values == {"a": 3, "b": True}
    assert phone.cursor == 4


async def test_a_request_pending_when_the_connection_drops_fails_and_on_finish_reloads(
    server: LiveServer, valve: Valve, make_device: DeviceFactory
) -> None:
    server_with_valve = LiveServer(before_commit=valve)
    async with server_with_valve:
        gate = Gate()
        phone = make_device(server_with_valve.url, backoff=gate)
        await phone.wait_ready()
        await phone.set_value("like", True)
        valve.close()
        in_flight = phone.toggle("like")
        await valve.wait_held(1)
        gate.close()

        phone.drop_connection()
        with pytest.raises(ConnectionLostError):
            await in_flight
        await valve.wait_empty()  # the server abandoned the uncommitted set
        assert phone.state.value("like") is False
        assert phone.unconfirmed_items == {"like"}

        valve.open()
        gate.open()
        await wait_converged([phone], server_with_valve.database)
        assert phone.state.value("like") is True
        assert server_with_valve.database.change_count() == 1


async def test_a_tap_while_offline_fails_at_once_and_is_reloaded_after_reconnecting(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    gate = Gate()
    phone = make_device(server.url, backoff=gate)
    await phone.wait_ready()
    gate.close()
    gate.waiting.clear()
    phone.drop_connection()
    async with asyncio.timeout(HANG_GUARD):
        await gate.waiting.wait()

    with pytest.raises(NotConnectedError):
        await phone.set_value("color", "red")
    assert phone.state.value("color") == "red"

    gate.open()
    await wait_converged([phone], server.database)
    assert "color" not in phone.state.values  # the server never had it


async def test_an_ack_that_does_not_come_in_time_fails_the_request(
    valve: Valve, make_device: DeviceFactory
) -> None:
    async with LiveServer(before_commit=valve) as server:
        phone = make_device(server.url, ack_timeout=0.05)
        await phone.wait_ready()
        valve.close()
        with pytest.raises(TimeoutError):
            await phone.set_value("color", "red")
        valve.open()  # the late commit still arrives as a push
        await wait_converged([phone], server.database)
        assert phone.state.value("color") == "red"


async def test_a_request_the_server_fails_to_store_gets_an_error_and_stays_unconfirmed(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    phone = make_device(server.url)
    await phone.wait_ready()
    server.database.close()  # the disk went away: every query now raises

    with pytest.raises(RequestRejectedError) as refused:
        await phone.set_value("color", "red")

    assert refused.value.error.code == "internal"
    await phone.wait_until(lambda: len(phone.server_errors) == 2)  # the set, then the reload
    assert phone.is_connected  # the server survived
    assert phone.unconfirmed_items == {"color"}  # reloaded after the next reconnection


async def test_a_device_refuses_an_invalid_item_or_value_before_changing_anything(
    server: LiveServer, make_device: DeviceFactory
) -> None:
    phone = make_device(server.url)
    with pytest.raises(ValueError, match="item"):
        phone.set_value("x" * 201, 1)
    with pytest.raises(ValueError, match="bytes"):
        phone.set_value("big", "x" * 9000)
    with pytest.raises(ValueError, match="JSON"):
        phone.set_value("nan", float("nan"))
    with pytest.raises(ValueError, match="nest"):
        phone.set_value("deep", nested_lists(MAX_NESTING))
    assert phone.state.values == {}
    assert phone.unconfirmed_items == set()
