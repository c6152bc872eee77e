"""optisync.testing.SimulatedNetwork: seeded faults, pushes, reconnects, and its statistics."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from optisync import testing
from optisync.testing import (
    Commit,
    DeviceLink,
    NetworkFaults,
    SettleTimeoutError,
    SimulatedNetwork,
    SimulatedRequestError,
    SimulatedServer,
    TraceEvent,
)

CHAOS = NetworkFaults(
    request_latency=(0.0, 0.2),
    push_latency=(0.0, 0.5),
    duplicate_push=0.3,
    drop_push=0.2,
    fail_before_commit=0.2,
    fail_after_commit=0.2,
)


def world(faults: NetworkFaults | None = None, seed: int = 0) -> SimulatedNetwork:
    return SimulatedNetwork(SimulatedServer(), faults=faults, seed=seed)


def receiving(link: DeviceLink) -> list[int]:
    """Connect ``link`` and return the list its pushes' revisions will land in."""
    received: list[int] = []
    link.connect(lambda commit: received.append(commit.server_revision))
    return received


async def write_many(network: SimulatedNetwork, writes: int) -> None:
    async def writer(link: DeviceLink, key: str) -> None:
        for n in range(writes):
            with contextlib.suppress(SimulatedRequestError):
                await link.write(key, n, local_revision=n + 1)

    await asyncio.gather(*(writer(link, f"k{link.device_id}") for link in network.links))
    await network.settle()


def chaotic_trace(seed: int) -> list[TraceEvent]:
    async def main() -> list[TraceEvent]:
        network = world(CHAOS, seed)
        for device_id in (1, 2, 3):
            receiving(network.device(device_id))
        await write_many(network, 10)
        return network.trace

    return testing.run(main())


def test_the_same_seed_replays_the_same_run() -> None:
    assert chaotic_trace(42) == chaotic_trace(42)


def test_another_seed_gives_another_run() -> None:
    assert chaotic_trace(42) != chaotic_trace(43)


def test_every_commit_is_pushed_to_every_connected_device_the_writer_included() -> None:
    async def main() -> tuple[list[int], list[int]]:
        network = world()
        writer, other = network.device(1), network.device(2)
        to_writer, to_other = receiving(writer), receiving(other)
        await writer.write("k", "v", local_revision=1)
        await network.settle()
        return to_writer, to_other

    assert testing.run(main()) == ([1], [1])


def test_a_failure_before_commit_leaves_the_server_unchanged() -> None:
    async def main() -> SimulatedNetwork:
        network = world(NetworkFaults(fail_before_commit=1.0))
        with pytest.raises(SimulatedRequestError) as raised:
            await network.device(1).write("k", "v", local_revision=1)
        assert not raised.value.committed
        return network

    assert testing.run(main()).server.revision == 0


def test_a_failure_after_commit_keeps_the_commit_and_pushes_it() -> None:
    async def main() -> tuple[Commit | None, list[int]]:
        network = world(NetworkFaults(fail_after_commit=1.0))
        link = network.device(1)
        received = receiving(link)
        with pytest.raises(SimulatedRequestError) as raised:
            await link.write("k", "v", local_revision=1)
        await network.settle()
        return raised.value.commit, received

    commit, received = testing.run(main())
    assert commit == Commit("k", "v", 1, 1, 1)
    assert received == [1]


def test_a_duplicated_push_arrives_twice() -> None:
    async def main() -> list[int]:
        network = world(NetworkFaults(duplicate_push=1.0))
        link = network.device(1)
        received = receiving(link)
        await link.write("k", "v", local_revision=1)
        await network.settle()
        return received

    assert testing.run(main()) == [1, 1]


def test_dropped_pushes_come_back_with_the_reconnect() -> None:
    async def main() -> tuple[list[int], DeviceLink, SimulatedNetwork]:
        network = world(NetworkFaults(drop_push=1.0, reconnect_delay=(1.0, 1.0)))
        writer = network.device(1)
        link = network.device(2)
        received = receiving(link)
        for n in range(3):
            await writer.write("k", n, local_revision=n + 1)
        await network.settle()
        return received, link, network

    received, link, network = testing.run(main())
    assert sorted(set(received)) == [1, 2, 3]
    assert link.is_connected
    assert link.known_revision == 3
    assert any(event.kind == "push_lost" for event in network.trace)


def test_pushes_overtake_each_other_when_latency_varies() -> None:
    async def main() -> list[int]:
        network = world(NetworkFaults(push_latency=(0.0, 1.0)), seed=5)
        writer = network.device(1)
        received = receiving(network.device(2))
        for n in range(20):
            await writer.write("k", n, local_revision=n + 1)
        await network.settle()
        return received

    received = testing.run(main())
    assert sorted(received) == list(range(1, 21))
    assert received != sorted(received)


def test_a_push_the_handler_rejects_is_replayed_after_the_reconnect() -> None:
    async def main() -> tuple[list[int], DeviceLink]:
        network = world()
        writer = network.device(1)
        link = network.device(2)
        received: list[int] = []
        refused: list[int] = []

        def handler(commit: Commit) -> None:
            if not refused:
                refused.append(commit.server_revision)
                raise ValueError("busy")
            received.append(commit.server_revision)

        link.connect(handler)
        await writer.write("k", "v", local_revision=1)
        await network.settle()
        return received, link

    received, link = testing.run(main())
    assert received == [1]
    assert [str(error) for error in link.push_errors] == ["busy"]


def test_a_disconnected_device_gets_what_it_missed_when_it_connects_since_a_revision() -> None:
    async def main() -> list[int]:
        network = world()
        writer = network.device(1)
        link = network.device(2)
        received = receiving(link)
        await writer.write("k", 1, local_revision=1)
        await network.settle()
        link.disconnect()
        await writer.write("k", 2, local_revision=2)
        await writer.write("k", 3, local_revision=3)
        await network.settle()
        link.connect(lambda commit: received.append(commit.server_revision), since=1)
        await network.settle()
        return received

    assert testing.run(main()) == [1, 2, 3]


def test_requests_in_flight_are_counted_per_device_and_key() -> None:
    async def main() -> SimulatedNetwork:
        network = world(NetworkFaults(request_latency=(1.0, 1.0)))
        link = network.device(1)
        await asyncio.gather(
            link.write("k", 1, local_revision=1),
            link.write("k", 2, local_revision=2),
            link.write("other", 3, local_revision=1),
        )
        return network

    network = testing.run(main())
    assert network.max_requests_in_flight(1, "k") == 2
    assert network.max_requests_in_flight(1, "other") == 1
    assert network.requests_sent(1, "k") == 2
    assert network.requests_in_flight(1, "k") == 0


def test_send_value_informs_the_server_revision_and_returns_the_commit() -> None:
    async def main() -> tuple[Commit, list[int]]:
        network = world()
        send = network.device(3).send_value("k")
        informed: list[int] = []
        commit = await send("v", 1, 3, informed.append)
        return commit, informed

    assert testing.run(main()) == (Commit("k", "v", 1, 1, 3), [1])


def test_send_value_refuses_a_store_whose_device_id_is_not_its_links() -> None:
    async def main() -> None:
        send: Callable[..., Any] = world().device(3).send_value("k")
        with pytest.raises(ValueError, match="device id 4"):
            await send("v", 1, 4, lambda revision: None)

    testing.run(main())


def test_settle_fails_when_a_task_never_ends() -> None:
    async def main() -> None:
        network = world()
        never = asyncio.create_task(asyncio.Event().wait())
        with pytest.raises(SettleTimeoutError):
            await network.settle(max_time=10.0)
        never.cancel()

    testing.run(main())


@pytest.mark.parametrize(
    "faults",
    [
        {"drop_push": -0.1},
        {"fail_after_commit": 1.5},
        {"request_latency": (1.0, 0.5)},
        {"push_latency": (-1.0, 0.0)},
    ],
)
def test_faults_out_of_range_are_refused(faults: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        NetworkFaults(**faults)


@pytest.mark.parametrize("seed", [None, 1.5, "abc", True])
def test_a_seed_that_is_not_an_int_is_refused(seed: Any) -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        SimulatedNetwork(SimulatedServer(), seed=seed)


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ({"request_latency": [0.0, 1.0]}, TypeError),
        ({"push_latency": (0.0, 1.0, 2.0)}, ValueError),
        ({"push_latency": ("0", 1.0)}, TypeError),
        ({"reconnect_delay": (0.0, float("inf"))}, ValueError),
        ({"reconnect_delay": (float("nan"), 1.0)}, ValueError),
        ({"drop_push": "0.5"}, TypeError),
        ({"duplicate_push": None}, TypeError),
        ({"fail_before_commit": True}, TypeError),
    ],
)
def test_malformed_faults_are_refused_by_name(
    faults: dict[str, Any], error: type[Exception]
) -> None:
    (name,) = faults
    with pytest.raises(error, match=name):
        NetworkFaults(**faults)


def test_a_device_id_that_is_not_an_int_is_refused() -> None:
    with pytest.raises(TypeError, match="device id must be an int"):
        world().device("1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "statistic", ["requests_sent", "requests_in_flight", "max_requests_in_flight"]
)
def test_statistics_of_an_unknown_device_name_the_known_ones(statistic: str) -> None:
    network = world()
    network.device(1)
    network.device(3)
    with pytest.raises(KeyError, match=r"no device 2 on this network; its devices are \[1, 3\]"):
        getattr(network, statistic)(2, "k")


@pytest.mark.parametrize("since", [-1, 2])
def test_connect_since_outside_the_servers_revisions_is_refused(since: int) -> None:
    network = world()
    network.server.write("k", 1, local_revision=1, device_id=9)
    with pytest.raises(ValueError, match=r"since=.* must be in \[0, 1\]"):
        network.device(1).connect(lambda commit: None, since=since)


def test_a_closed_network_refuses_new_devices_and_connects() -> None:
    network = world()
    link = network.device(1)
    network.close()
    assert link.is_closed
    with pytest.raises(RuntimeError, match="network is closed"):
        network.device(2)
    with pytest.raises(RuntimeError, match="link of device 1 is closed"):
        link.connect(lambda commit: None)


def test_a_closed_link_still_serves_reads() -> None:
    async def main() -> Commit | None:
        network = world()
        link = network.device(1)
        await network.device(2).write("k", "v", local_revision=1)
        link.close()
        return await link.read("k")

    commit = testing.run(main())
    assert commit is not None
    assert commit.value == "v"


def test_the_first_connect_is_traced_as_connect_and_a_comeback_as_reconnect() -> None:
    async def main() -> list[str]:
        network = world()
        link = network.device(1)
        link.connect(lambda commit: None)
        link.drop()
        await network.settle()
        return [event.kind for event in network.trace]

    assert testing.run(main()) == ["connect", "drop", "reconnect"]


def test_connecting_again_without_since_resumes_from_the_known_revision() -> None:
    async def main() -> tuple[list[int], int]:
        network = world()
        writer, link = network.device(1), network.device(2)
        received = receiving(link)
        await writer.write("k", 1, local_revision=1)
        await network.settle()
        link.disconnect()
        await writer.write("k", 2, local_revision=2)  # missed while unplugged
        link.connect(lambda commit: received.append(commit.server_revision))
        await network.settle()
        return received, link.known_revision

    assert testing.run(main()) == ([1, 2], 2)


def test_settle_leaves_out_the_tasks_it_is_told_to_ignore() -> None:
    async def main() -> tuple[bool, bool]:
        network = world(NetworkFaults(request_latency=(1.0, 1.0)))
        forever = asyncio.create_task(asyncio.Event().wait())
        write = asyncio.create_task(network.device(1).write("k", 1, local_revision=1))
        await network.settle(max_time=60, ignore=[forever])
        state = (write.done(), forever.done())
        forever.cancel()
        await asyncio.gather(forever, return_exceptions=True)
        return state

    assert testing.run(main()) == (True, False)


def test_send_value_is_exported_with_the_networks_names() -> None:
    from optisync.testing import network

    assert "SendValue" in network.__all__


def test_every_error_of_the_simulator_is_an_optisync_error_with_a_builtin_base() -> None:
    import optisync

    network = world()
    link = network.device(1)
    refusals: list[tuple[Callable[[], object], type[Exception], type[Exception]]] = [
        (lambda: NetworkFaults(drop_push=2.0), optisync.InvalidArgumentError, ValueError),
        (lambda: NetworkFaults(drop_push="x"), optisync.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
        (
            lambda: SimulatedNetwork(SimulatedServer(), seed=None),
            optisync.ArgumentTypeError,
            TypeError,
        ),  # type: ignore[arg-type]
        (lambda: network.device(1), optisync.InvalidArgumentError, ValueError),
        (lambda: network.device("1"), optisync.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
        (lambda: network.requests_sent(9, "k"), testing.UnknownDeviceError, KeyError),
        (lambda: link.connect(lambda c: None, since=5), optisync.InvalidArgumentError, ValueError),
        (lambda: link.connect(None), optisync.ArgumentTypeError, TypeError),  # type: ignore[arg-type]
        (
            lambda: network.server.write([], 1, local_revision=1, device_id=1),
            optisync.ArgumentTypeError,
            TypeError,
        ),
        (
            lambda: testing.VirtualClockLoop(deadlock_timeout=-1),
            optisync.InvalidArgumentError,
            ValueError,
        ),
    ]
    for call, error_type, builtin in refusals:
        with pytest.raises(error_type) as raised:
            call()
        assert isinstance(raised.value, optisync.OptisyncError)
        assert isinstance(raised.value, builtin)
    network.close()
    with pytest.raises(optisync.ClosedError, match="network is closed"):
        network.device(2)
    with pytest.raises(optisync.ClosedError, match="link of device 1 is closed"):
        link.connect(lambda c: None)
    assert issubclass(SimulatedRequestError, optisync.TransportError)
    assert issubclass(SettleTimeoutError, optisync.OptisyncError)
    assert issubclass(SettleTimeoutError, AssertionError)


def test_an_unknown_device_error_reads_as_a_sentence() -> None:
    network = world()
    network.device(1)
    with pytest.raises(testing.UnknownDeviceError) as raised:
        network.max_requests_in_flight(2, "k")
    assert str(raised.value) == "no device 2 on this network; its devices are [1]"
