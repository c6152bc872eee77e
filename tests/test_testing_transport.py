"""DeviceLink as an optisync.transport.Transport: send, get, pushes, status, caught_up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import optisync
from optisync import PushMetadata, StoreClosedError, testing
from optisync.testing import (
    Commit,
    DeviceLink,
    NetworkFaults,
    SimulatedNetwork,
    SimulatedRequestError,
    SimulatedServer,
)
from optisync.transport import Ack, SyncRequest, Transport

Push = tuple[str, Any, PushMetadata]


def world(faults: NetworkFaults | None = None, seed: int = 0) -> SimulatedNetwork:
    return SimulatedNetwork(SimulatedServer(), faults=faults, seed=seed)


def request(local_revision: int, device_id: int = 1) -> SyncRequest:
    return SyncRequest("k", local_revision=local_revision, device_id=device_id)


def listening(link: DeviceLink) -> list[Push]:
    """Subscribe to ``link``'s pushes; return the list they land in."""
    pushes: list[Push] = []
    link.subscribe_pushes(lambda key, value, meta: pushes.append((key, value, meta)))
    return pushes


def statuses(link: DeviceLink) -> list[bool]:
    seen: list[bool] = []
    link.subscribe_status(seen.append)
    return seen


def test_a_device_link_is_a_transport() -> None:
    link: Transport = world().device(1)
    assert isinstance(link, Transport)
    assert link.device_id == 1


# -- send ---------------------------------------------------------------------


def test_send_commits_with_the_requests_local_revision_and_returns_the_ack() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        ack = await link.send("k", "v", request(local_revision=7))
        assert ack == Ack(server_revision=1, value="v")
        assert network.server.log == (Commit("k", "v", 1, 7, 1),)

    testing.run(main())


def test_send_refuses_a_request_of_another_device_before_writing() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        with pytest.raises(optisync.InvalidArgumentError, match="device id 2 is not its link's"):
            await link.send("k", "v", request(1, device_id=2))
        with pytest.raises(optisync.ArgumentTypeError, match="wire key must be a str"):
            await link.send(("k", 1), "v", request(1))  # type: ignore[arg-type]
        with pytest.raises(optisync.ArgumentTypeError, match="SyncRequest"):
            await link.send("k", "v", 1)  # type: ignore[arg-type]
        assert network.server.revision == 0
        assert network.requests_sent(1, "k") == 0

    testing.run(main())


def test_send_on_a_closed_link_raises_closed_error() -> None:
    async def main() -> None:
        link = world().device(1)
        link.close()
        with pytest.raises(optisync.ClosedError, match="link of device 1 is closed"):
            await link.send("k", "v", request(1))

    testing.run(main())


def test_a_write_lost_before_commit_raises_a_transport_error_and_changes_nothing() -> None:
    async def main() -> None:
        network = world(NetworkFaults(fail_before_commit=1.0))
        with pytest.raises(SimulatedRequestError) as raised:
            await network.device(1).send("k", "v", request(1))
        assert isinstance(raised.value, optisync.TransportError)
        assert isinstance(raised.value, ConnectionError)
        assert not raised.value.committed
        assert network.server.revision == 0

    testing.run(main())


def test_a_write_whose_response_is_lost_raises_but_is_committed_and_pushed() -> None:
    async def main() -> None:
        network = world(NetworkFaults(fail_after_commit=1.0))
        link = network.device(1)
        pushes = listening(link)
        with pytest.raises(SimulatedRequestError) as raised:
            await link.send("k", "v", request(3))
        assert raised.value.committed
        await network.settle()
        assert pushes == [("k", "v", PushMetadata(1, 3, 1))]

    testing.run(main())


def test_send_on_a_disconnected_link_raises_a_transport_error_before_reaching_the_server() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        listening(link)
        link.disconnect()
        with pytest.raises(SimulatedRequestError, match="device 1 is offline") as raised:
            await link.send("k", "v", request(1))
        assert isinstance(raised.value, ConnectionError)
        assert not raised.value.committed
        assert network.server.revision == 0
        assert network.requests_sent(1, "k") == 0
        link.connect(lambda commit: None)
        assert await link.send("k", "v", request(2)) == Ack(1, "v")

    testing.run(main())


def test_send_while_a_dropped_link_is_down_raises_and_works_again_after_the_reconnect() -> None:
    async def main() -> None:
        network = world(NetworkFaults(reconnect_delay=(1.0, 1.0)))
        link = network.device(1)
        listening(link)
        link.drop()
        with pytest.raises(SimulatedRequestError, match="offline"):
            await link.send("k", "v", request(1))
        await network.settle()
        assert link.online
        assert await link.send("k", "v", request(2)) == Ack(1, "v")

    testing.run(main())


def test_a_link_never_connected_sends_as_write_does() -> None:
    async def main() -> None:
        link = world().device(1)
        assert not link.online
        assert await link.send("k", "v", request(1)) == Ack(1, "v")

    testing.run(main())


# -- get ----------------------------------------------------------------------


def test_get_returns_none_and_minus_one_for_a_key_never_written() -> None:
    async def main() -> None:
        assert await world().device(1).get("k") == (None, -1)

    testing.run(main())


def test_get_returns_the_latest_value_and_its_revision_even_on_a_closed_link() -> None:
    async def main() -> None:
        network = world(NetworkFaults(request_latency=(0.1, 0.3)))
        writer, reader = network.device(1), network.device(2)
        await writer.send("k", "a", request(1))
        await writer.send("other", "x", SyncRequest("other", 2, 1))
        await writer.send("k", "b", request(3))
        reader.close()
        assert await reader.get("k") == ("b", 3)
        assert await reader.get("other") == ("x", 2)

    testing.run(main())


# -- subscribe_pushes -----------------------------------------------------------


def test_subscribing_connects_a_new_link_from_the_servers_revision_now() -> None:
    async def main() -> None:
        network = world()
        phone, laptop = network.device(1), network.device(2)
        await laptop.write("old", 1, local_revision=1)
        assert not phone.online
        pushes = listening(phone)
        assert phone.online
        assert phone.known_revision == 1  # "old" is assumed known: not replayed
        await laptop.write("new", 2, local_revision=2)
        await network.settle()
        assert pushes == [("new", 2, PushMetadata(2, 2, 2))]
        assert [event.kind for event in network.trace if event.device_id == 1] == [
            "connect",
            "push",
        ]

    testing.run(main())


def test_the_connect_handler_and_every_listener_receive_each_push_in_order() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        order: list[str] = []
        link.connect(lambda commit: order.append(f"handler {commit.server_revision}"))
        link.subscribe_pushes(lambda key, value, meta: order.append(f"a {meta.server_revision}"))
        link.subscribe_pushes(lambda key, value, meta: order.append(f"b {meta.server_revision}"))
        await link.write("k", 1, local_revision=1)
        await network.settle()
        assert order == ["handler 1", "a 1", "b 1"]

    testing.run(main())


def test_subscribing_to_a_connected_link_does_not_reconnect_it() -> None:
    async def main() -> None:
        network = world(NetworkFaults(push_latency=(1.0, 1.0)))
        link = network.device(1)
        handled: list[int] = []
        link.connect(lambda commit: handled.append(commit.server_revision))
        await link.write("k", 1, local_revision=1)  # its push is on its way
        pushes = listening(link)
        await network.settle()
        assert handled == [1]  # not replayed: the connection was not restarted
        assert [meta.server_revision for _, _, meta in pushes] == [1]
        assert [e.kind for e in network.trace].count("connect") == 1

    testing.run(main())


def test_an_unsubscribed_listener_receives_nothing_more() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        kept: list[int] = []
        pushes: list[int] = []
        link.subscribe_pushes(lambda key, value, meta: kept.append(meta.server_revision))
        stop = link.subscribe_pushes(lambda key, value, meta: pushes.append(meta.server_revision))
        await link.write("k", 1, local_revision=1)
        await network.settle()
        stop()
        stop()  # harmless
        await link.write("k", 2, local_revision=2)
        await network.settle()
        assert (kept, pushes) == ([1, 2], [1])

    testing.run(main())


def test_lost_pushes_reach_listeners_through_the_replay_after_the_reconnect() -> None:
    async def main() -> None:
        network = world(NetworkFaults(drop_push=1.0, reconnect_delay=(2.0, 2.0)))
        phone, laptop = network.device(1), network.device(2)
        pushes = listening(phone)
        seen = statuses(phone)
        await laptop.write("k", "a", local_revision=1)
        await laptop.write("k", "b", local_revision=2)
        await network.settle()
        # Both live pushes are lost; the reconnect replays them (replays are never dropped).
        assert pushes == [("k", "a", PushMetadata(1, 1, 2)), ("k", "b", PushMetadata(2, 2, 2))]
        assert phone.known_revision == 2
        assert seen == [False, True]
        kinds = [e.kind for e in network.trace if e.device_id == 1]
        assert kinds == ["connect", "push_lost", "drop", "reconnect", "push", "push"]

    testing.run(main())


def test_a_dropped_connection_replays_pushes_on_their_way_to_every_listener() -> None:
    async def main() -> None:
        network = world(NetworkFaults(push_latency=(1.0, 1.0)))
        link = network.device(1)
        first, second = listening(link), listening(link)
        await link.write("k", 1, local_revision=1)
        link.drop()  # the push, on its way, is lost with the connection
        await network.settle()
        assert first == second == [("k", 1, PushMetadata(1, 1, 1))]

    testing.run(main())


def test_a_listener_that_raises_fails_the_delivery_and_the_replay_brings_it_again() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        failures = iter([ValueError("busy")])
        calls: list[int] = []

        def flaky(key: str, value: object, meta: PushMetadata) -> None:
            calls.append(meta.server_revision)
            error = next(failures, None)
            if error is not None:
                raise error

        link.subscribe_pushes(flaky)
        pushes = listening(link)
        seen = statuses(link)
        await link.write("k", 1, local_revision=1)
        await network.settle()
        assert calls == [1, 1]
        assert [meta.server_revision for _, _, meta in pushes] == [1]  # once: after the replay
        assert [str(error) for error in link.push_errors] == ["busy"]
        assert seen == [False, True]
        assert link.known_revision == 1

    testing.run(main())


def test_a_listener_raising_store_closed_error_closes_the_link() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        seen = statuses(link)

        def closed(key: str, value: object, meta: PushMetadata) -> None:
            raise StoreClosedError("Cannot apply a push: the store is closed.")

        link.subscribe_pushes(closed)
        await network.device(2).write("k", 1, local_revision=1)
        await network.settle()
        assert link.is_closed
        assert seen == [True, False]
        assert isinstance(link.push_errors[0], StoreClosedError)
        assert "reconnect" not in [e.kind for e in network.trace]

    testing.run(main())


def test_subscribing_checks_the_listener_and_the_link() -> None:
    link = world().device(1)
    with pytest.raises(optisync.ArgumentTypeError, match="listener must be callable"):
        link.subscribe_pushes("not a function")  # type: ignore[arg-type]
    with pytest.raises(optisync.ArgumentTypeError, match="listener must be callable"):
        link.subscribe_status(None)  # type: ignore[arg-type]
    assert not link.online  # a refused listener connects nothing
    link.close()
    with pytest.raises(optisync.ClosedError, match="link of device 1 is closed"):
        link.subscribe_pushes(lambda *push: None)


# -- online and subscribe_status ----------------------------------------------------


def test_status_listeners_see_connect_drop_reconnect_disconnect_and_close() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        seen = statuses(link)
        link.subscribe_pushes(lambda *push: None)  # connects
        link.connect(lambda commit: None)  # already online: no change
        link.drop()
        link.drop()  # already down: no change
        assert not link.online
        await network.settle()  # the reconnect
        assert link.online
        link.disconnect()
        link.connect(lambda commit: None)
        link.close()
        link.close()
        assert seen == [True, False, True, False, True, False]
        assert not link.online

    testing.run(main())


def test_an_unsubscribed_status_listener_is_not_called() -> None:
    link = world().device(1)
    seen: list[bool] = []
    stop = link.subscribe_status(seen.append)
    link.connect(lambda commit: None)
    stop()
    link.close()
    assert seen == [True]


def test_a_status_listener_that_raises_goes_to_the_loops_handler_and_stops_nothing() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: reported.append(context))
        network = world()
        link = network.device(1)

        def broken(online: bool) -> None:
            raise RuntimeError("listener bug")

        link.subscribe_status(broken)
        seen = statuses(link)
        link.subscribe_pushes(lambda *push: None)
        link.drop()
        await network.settle()
        assert seen == [True, False, True]
        assert link.online  # the reconnect was scheduled despite the bug
        assert [str(context["exception"]) for context in reported] == ["listener bug"] * 3
        assert "status listener of device 1" in reported[0]["message"]

    testing.run(main())


# -- caught_up -------------------------------------------------------------------


def test_caught_up_waits_for_the_writes_sent_before_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        network = world(NetworkFaults(request_latency=(1.0, 1.0)))
        link = network.device(1)
        link.subscribe_pushes(lambda *push: None)
        write = asyncio.create_task(link.send("k", "v", request(1)))
        await asyncio.sleep(0)  # the write is on its way
        await link.caught_up()
        assert write.done()
        assert loop.time() == 2.0  # to the server and back
        assert (await write).server_revision == 1

    testing.run(main())


def test_caught_up_counts_a_failed_write_as_finished() -> None:
    async def main() -> None:
        network = world(NetworkFaults(request_latency=(1.0, 1.0), fail_before_commit=1.0))
        link = network.device(1)
        link.subscribe_pushes(lambda *push: None)
        write = asyncio.create_task(link.send("k", "v", request(1)))
        await asyncio.sleep(0)
        await link.caught_up()
        assert isinstance(write.exception(), SimulatedRequestError)

    testing.run(main())


def test_caught_up_does_not_wait_for_writes_started_after_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        network = world(NetworkFaults(request_latency=(5.0, 5.0)))
        link = network.device(1)
        link.subscribe_pushes(lambda *push: None)
        waiting = asyncio.create_task(link.caught_up())
        write = asyncio.create_task(link.send("k", "v", request(1)))
        await waiting
        assert loop.time() == 0.0
        assert not write.done()
        await write

    testing.run(main())


def test_caught_up_waits_until_the_servers_head_at_the_call_has_arrived() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        network = world(NetworkFaults(push_latency=(3.0, 3.0)))
        phone, laptop = network.device(1), network.device(2)
        pushes = listening(phone)
        await laptop.write("a", 1, local_revision=1)
        await laptop.write("b", 2, local_revision=2)
        await phone.caught_up()
        assert phone.known_revision == 2
        assert [key for key, _, _ in pushes] == ["a", "b"]
        assert loop.time() == 3.0

    testing.run(main())


def test_caught_up_waits_through_a_drop_for_the_reconnects_replay() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        network = world(NetworkFaults(push_latency=(1.0, 1.0), reconnect_delay=(10.0, 10.0)))
        phone, laptop = network.device(1), network.device(2)
        pushes = listening(phone)
        await laptop.write("k", 1, local_revision=1)
        phone.drop()
        await phone.caught_up()
        assert loop.time() == 11.0  # the reconnect, then the replayed push
        assert phone.known_revision == 1
        assert len(pushes) == 1

    testing.run(main())


def test_caught_up_returns_at_once_when_nothing_is_missing() -> None:
    async def main() -> None:
        network = world()
        link = network.device(1)
        await link.caught_up()  # revision 0, never connected: nothing to wait for
        link.subscribe_pushes(lambda *push: None)
        await network.device(2).write("k", 1, local_revision=1)
        await network.settle()
        await link.caught_up()
        assert asyncio.get_running_loop().time() == 0.0

    testing.run(main())


def test_caught_up_raises_closed_error_when_the_link_closes_first() -> None:
    async def main() -> None:
        network = world(NetworkFaults(push_latency=(1.0, 1.0)))
        phone = network.device(1)
        phone.subscribe_pushes(lambda *push: None)
        await network.device(2).write("k", 1, local_revision=1)
        waiting = asyncio.create_task(phone.caught_up())
        await asyncio.sleep(0.5)
        phone.close()
        with pytest.raises(optisync.ClosedError, match="closed before it caught up"):
            await waiting

    testing.run(main())


def test_a_cancelled_caught_up_leaves_the_link_working() -> None:
    async def main() -> None:
        network = world(NetworkFaults(push_latency=(1.0, 1.0)))
        phone = network.device(1)
        pushes = listening(phone)
        await network.device(2).write("k", 1, local_revision=1)
        waiting = asyncio.create_task(phone.caught_up())
        await asyncio.sleep(0.5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await phone.caught_up()
        assert len(pushes) == 1

    testing.run(main())


# -- a store served through the contract ---------------------------------------------

Entry = tuple[object, int]  # (value, server revision)


class Served(optisync.Store[dict[str, Entry]]):
    """A key-value store that knows its server only as a Transport."""

    def __init__(self, transport: Transport) -> None:
        super().__init__({}, device_id=transport.device_id)
        self.transport = transport
        self.failures: list[BaseException] = []
        transport.subscribe_pushes(self.on_push)

    def on_error(self, error: BaseException) -> None:
        self.failures.append(error)  # failed syncs nobody awaited: expected on this network

    def revision(self, key: str) -> int:
        return self.state.get(key, (None, -1))[1]

    def on_push(self, key: str, value: object, meta: PushMetadata) -> None:
        self.server_push(
            key=key,
            push_metadata=meta,
            apply_server_push_to_state=lambda state, key, revision: {
                **state,
                key: (value, revision),
            },
            get_server_revision_from_state=self.revision,
        )

    def set(self, key: str, value: object) -> None:
        async def send(value: object, local_revision: int, device_id: int, inform: Any) -> Ack[Any]:
            request = SyncRequest(key, local_revision=local_revision, device_id=device_id)
            ack = await self.transport.send(key, value, request)
            inform(ack.server_revision)
            return ack

        async def reload(error: BaseException | None) -> dict[str, Entry] | None:
            if error is None:
                return None
            value, revision = await self.transport.get(key)
            if self.is_syncing(key) or revision < self.revision(key):
                return None  # a newer tap or push made the reload stale
            return {**self.state, key: (value, revision)}

        self.optimistic_sync_with_push(
            key=key,
            value_to_apply=lambda: value,
            apply_optimistic_value_to_state=lambda state, v: {
                **state,
                key: (v, self.revision(key)),
            },
            get_value_from_state=lambda state: state.get(key, (None, -1))[0],
            send_value_to_server=send,
            get_server_revision_from_state=self.revision,
            apply_server_response_to_state=lambda state, ack: {
                **state,
                key: (ack.value, ack.server_revision),
            },
            on_finish=reload,
        )


async def served_stores_converge(seed: int) -> None:
    faults = NetworkFaults(
        request_latency=(0.0, 0.2),
        push_latency=(0.0, 0.5),
        duplicate_push=0.2,
        drop_push=0.2,
        fail_before_commit=0.1,
        fail_after_commit=0.1,
    )
    network = world(faults, seed)
    stores = [Served(network.device(device_id)) for device_id in (1, 2, 3)]
    for n in range(30):
        store = stores[n % 3]
        store.set(f"k{n % 2}", f"{store.device_id}:{n}")
        await asyncio.sleep(0.05)
    for store in stores:
        await store.transport.caught_up()
    await network.settle()
    for store in stores:
        for key in ("k0", "k1"):
            held = (network.server.value(key), network.server.revision_of(key))
            assert store.state[key] == held, f"seed {seed}: device {store.device_id} {key}"
        await store.close()


@pytest.mark.parametrize("seed", range(10))
def test_stores_wired_only_through_the_transport_converge(seed: int) -> None:
    testing.run(served_stores_converge(seed))
