"""SyncClient as an optisync.transport.Transport, its position seam, and its errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

import optisync
from optisync import PushMetadata, Store
from optisync.client import (
    ClientConnectionError,
    ClientTimeoutError,
    RequestRefusedError,
    ServerRefusedError,
    SyncClient,
)
from optisync.server import SqliteStorage, SyncServer, require_token
from optisync.transport import Ack, SyncRequest, Transport
from optisync.wire import Hello, entry_digest

State = dict[str, Any]
Pushed = tuple[str, Any, PushMetadata]


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3")).run(port=0) as running:
        yield running


def request(device_id: int, local_revision: int = 1, key: str = "k") -> SyncRequest:
    return SyncRequest(key, local_revision=local_revision, device_id=device_id)


async def test_a_client_is_a_transport_with_the_stores_device_id() -> None:
    client = SyncClient(Store[State]({}, device_id=4), "ws://127.0.0.1:9")
    assert isinstance(client, Transport)
    assert client.device_id == 4


async def test_send_returns_the_servers_revision_and_value(url: str) -> None:
    async with SyncClient(Store[State]({}, device_id=1), url) as client:
        await client.wait_online()
        assert await client.send("n", 5, request(1)) == Ack(server_revision=1, value=5)
        assert await client.send("n", {"b": 1, "a": 2}, request(1, 2)) == Ack(2, {"a": 2, "b": 1})
        assert await client.get("n") == ({"a": 2, "b": 1}, 2)


async def test_send_with_another_device_id_is_refused_before_sending(url: str) -> None:
    async with SyncClient(Store[State]({}, device_id=1), url) as client:
        await client.wait_online()
        with pytest.raises(optisync.InvalidArgumentError, match="device_id 2"):
            await client.send("n", 5, request(2))
        with pytest.raises(optisync.InvalidArgumentError):
            await client.sender("n")(5, 1, 2, lambda revision: None)
        assert await client.get("n") == (None, -1)


async def test_send_while_offline_raises_a_transport_error() -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9")
    with pytest.raises(optisync.TransportError, match="offline"):
        await client.send("n", 5, request(1))


async def test_without_apply_value_pushes_reach_listeners_only_and_the_cursor_moves(
    url: str,
) -> None:
    async with SyncClient(Store[State]({}, device_id=2), url) as writer:
        await writer.wait_online()
        await writer.send("replayed", 1, request(2))
    store = Store[State]({}, device_id=1)
    pushed: list[Pushed] = []
    client = SyncClient(store, url)
    client.subscribe_pushes(lambda key, value, meta: pushed.append((key, value, meta)))
    async with client, SyncClient(Store[State]({}, device_id=2), url) as writer:
        await client.wait_online()
        await writer.wait_online()
        await writer.send("live", 2, request(2, 7))
        await client.send("mine", 3, request(1, 4))
        await client.caught_up()
    assert pushed == [
        ("replayed", 1, PushMetadata(server_revision=1, local_revision=0, device_id=0)),
        ("live", 2, PushMetadata(server_revision=2, local_revision=0, device_id=0)),
        ("mine", 3, PushMetadata(server_revision=3, local_revision=4, device_id=1)),
    ]
    assert store.state == {}
    assert client.cursor == 3


async def test_with_apply_value_pushes_reach_the_store_and_the_listeners(url: str) -> None:
    store = Store[State]({}, device_id=1)
    seen: list[State] = []
    client = SyncClient(store, url, apply_value=lambda state, key, value, rev: {key: value})
    client.subscribe_pushes(lambda key, value, meta: seen.append(store.state))
    async with client, SyncClient(Store[State]({}, device_id=2), url) as writer:
        await writer.wait_online()
        await client.wait_online()
        await writer.send("like", True, request(2))
        await client.caught_up()
    assert store.state == {"like": True}
    assert seen == [{"like": True}]  # the store first, then the listeners


async def test_an_unsubscribed_push_listener_hears_nothing_more(url: str) -> None:
    pushed: list[str] = []
    client = SyncClient(Store[State]({}, device_id=1), url)
    unsubscribe = client.subscribe_pushes(lambda key, value, meta: pushed.append(key))
    async with client:
        await client.wait_online()
        await client.send("a", 1, request(1))
        await client.caught_up()
        unsubscribe()
        unsubscribe()  # a second call does nothing
        await client.send("b", 1, request(1, 2))
        await client.caught_up()
    assert pushed == ["a"]


async def test_a_push_a_listener_fails_to_take_is_replayed_on_a_new_connection(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    failures = [RuntimeError("not now")]
    taken: list[str] = []

    def flaky(key: str, value: Any, meta: PushMetadata) -> None:
        if failures:
            raise failures.pop()
        taken.append(key)

    client = SyncClient(Store[State]({}, device_id=1), url)
    client.subscribe_pushes(flaky)
    connections: list[bool] = []
    client.subscribe_status(connections.append)
    with caplog.at_level(logging.ERROR, logger="optisync.client"):
        async with client, SyncClient(Store[State]({}, device_id=2), url) as writer:
            await client.wait_online()
            await writer.wait_online()
            await writer.send("a", 1, request(2))
            while not taken:  # the failed push ended that connection; the next replays it
                await client.caught_up()
    assert taken == ["a"]
    assert client.cursor == 1
    assert connections[:3] == [True, False, True]
    assert "a push listener failed" in caplog.text


async def test_a_served_stores_pushes_are_traced_with_the_fields_outcome(url: str) -> None:
    from optisync.client import Traced
    from optisync.fields import SyncedValueWithPush
    from optisync.wire import Push

    class Theme(Store[str]):
        theme = SyncedValueWithPush[str, str](lambda s: s, lambda s, t: t)

    seen: list[Traced] = []
    phone, laptop = Theme("light", device_id=1), Theme("light", device_id=2)
    one, two = SyncClient(phone, url), SyncClient(laptop, url, trace=seen.append)
    async with phone, laptop, one, two:
        await one.wait_online()
        await two.wait_online()
        await phone.theme.set("dark")
        await two.caught_up()
        await laptop.theme.set("blue")
        await two.caught_up()
    outcomes = [event.outcome for event in seen if isinstance(event.message, Push)]
    # The other device's write, then the echo of our own (applied or a self-echo,
    # as it comes before or after its ack): each with the field's verdict, none None.
    assert len(outcomes) == 2
    assert outcomes[0] is optisync.PushOutcome.APPLIED
    assert isinstance(outcomes[1], optisync.PushOutcome)
    assert laptop.state == "blue"


async def test_caught_up_returns_once_another_devices_write_has_arrived(url: str) -> None:
    pushed: list[str] = []
    async with (
        SyncClient(Store[State]({}, device_id=1), url) as reader,
        SyncClient(Store[State]({}, device_id=2), url) as writer,
    ):
        reader.subscribe_pushes(lambda key, value, meta: pushed.append(key))
        await reader.wait_online()
        await writer.wait_online()
        for key in "abc":
            await writer.send(key, 1, request(2))
        await reader.caught_up()
        assert pushed == ["a", "b", "c"]
        assert reader.cursor == 3


async def test_caught_up_waits_until_online_first(url: str) -> None:
    client = SyncClient(Store[State]({}, device_id=1), url)
    status: list[bool] = []
    client.subscribe_status(status.append)
    waiting = asyncio.create_task(client.caught_up())
    await asyncio.sleep(0)  # let it reach its wait: the client has not started
    assert not waiting.done()
    async with client:
        await waiting
        assert status == [True]


async def test_the_position_listener_hears_the_generation_then_each_push(url: str) -> None:
    positions: list[tuple[int, str]] = []
    client = SyncClient(Store[State]({}, device_id=1), url)
    client.subscribe_position(lambda cursor, generation: positions.append((cursor, generation)))
    async with client:
        await client.wait_online()
        generation = client.generation
        await client.send("a", 1, request(1))
        await client.send("b", 1, request(1, 2))
        await client.caught_up()
    assert generation != ""
    assert positions == [(0, generation), (1, generation), (2, generation)]


async def test_resume_sets_where_the_replay_starts(url: str) -> None:
    async with SyncClient(Store[State]({}, device_id=2), url) as writer:
        await writer.wait_online()
        for key in "abc":
            await writer.send(key, 1, request(2))
        generation = writer.generation
    pushed: list[str] = []
    client = SyncClient(Store[State]({}, device_id=1), url)
    client.resume(2, generation)
    client.subscribe_pushes(lambda key, value, meta: pushed.append(key))
    async with client:
        await client.wait_online()
    assert pushed == ["c"]


async def test_resume_after_start_raises_a_state_error() -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9")
    client.resume(3, "g")
    async with client:
        with pytest.raises(optisync.StateError, match="before start"):
            client.resume(4, "g")
        with pytest.raises(optisync.StateError):
            client.cursor = 4
    assert (client.cursor, client.generation) == (3, "g")


@pytest.mark.parametrize(
    ("cursor", "generation", "error"),
    [
        (-1, "", optisync.InvalidArgumentError),
        ("3", "", optisync.ArgumentTypeError),
        (True, "", optisync.ArgumentTypeError),
        (3, None, optisync.ArgumentTypeError),
    ],
)
def test_resume_refuses_a_position_that_is_not_one(
    cursor: Any, generation: Any, error: type[Exception]
) -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9")
    with pytest.raises(error):
        client.resume(cursor, generation)


async def test_a_reset_tells_the_reset_listeners_and_on_reset_at_position_zero(
    url: str,
) -> None:
    heard: list[tuple[str, int, str]] = []
    client = SyncClient(
        Store[State]({}, device_id=1),
        url,
        cursor=40,
        generation="0" * 32,
        on_reset=lambda: heard.append(("on_reset", client.cursor, client.generation)),
    )
    client.subscribe_reset(lambda: heard.append(("listener", client.cursor, client.generation)))
    async with client:
        await client.wait_online()
    assert heard == [("on_reset", 0, client.generation), ("listener", 0, client.generation)]
    assert client.generation != "0" * 32


@pytest.mark.parametrize("url", ["not a url", "http://x", "", "ws://", "ws://host:port"])
def test_a_url_that_is_not_a_websocket_url_is_refused_at_construction(url: str) -> None:
    with pytest.raises(optisync.InvalidArgumentError, match="ws:// or wss://") as refused:
        SyncClient(Store[State]({}, device_id=1), url)
    assert repr(url) in str(refused.value)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries at once, so that a test sees several failed attempts without waiting."""

    def immediately() -> Iterator[float]:
        while True:
            yield 0.0

    monkeypatch.setattr("optisync.client.backoff", immediately)


class CountRecords(logging.Handler):
    def __init__(self, count: int) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.count = count
        self.reached = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if len(self.records) >= self.count:
            self.reached.set()


async def test_a_failing_connection_warns_once_and_keeps_the_last_error(
    no_backoff: None,
) -> None:
    logger = logging.getLogger("optisync.client")
    records = CountRecords(4)
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9") as client:
            await records.reached.wait()
            assert isinstance(client.last_error, OSError)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    levels = [record.levelno for record in records.records]
    assert levels[0] == logging.WARNING
    assert set(levels[1:]) == {logging.DEBUG}
    assert "ws://127.0.0.1:9" in records.records[0].getMessage()


async def test_wait_online_with_a_timeout_says_which_server_and_why(no_backoff: None) -> None:
    async with SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9") as client:
        with pytest.raises(ClientTimeoutError) as timed_out:
            await client.wait_online(timeout=0.05)
    message = str(timed_out.value)
    assert "ws://127.0.0.1:9" in message
    assert "0.05 s" in message
    assert isinstance(timed_out.value, TimeoutError)
    assert isinstance(timed_out.value.__cause__, OSError)


async def test_wait_online_on_a_client_that_stopped_after_a_failure_says_so() -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9", reconnect=False)
    async with client:
        with pytest.raises(ClientConnectionError, match="reconnect=False"):
            await client.wait_online()


async def test_wait_online_after_close_raises_closed_error(url: str) -> None:
    client = SyncClient(Store[State]({}, device_id=1), url)
    async with client:
        await client.wait_online()
    with pytest.raises(optisync.ClosedError):
        await client.wait_online()
    with pytest.raises(optisync.ClosedError):
        client.start()


async def test_a_refused_token_stops_the_client_with_server_refused(tmp_path: Path) -> None:
    server = SyncServer(SqliteStorage(tmp_path / "s.sqlite3"), authenticate=require_token("yes"))
    async with server.run(port=0) as url:
        client = SyncClient(Store[State]({}, device_id=1), url, token="no")
        client.start()
        with pytest.raises(ServerRefusedError, match="unauthorized"):
            await client.wait_online()
        with pytest.raises(ServerRefusedError):
            await client.close()


async def test_an_http_refusal_stops_the_client_with_server_refused() -> None:
    def forbid(connection: ServerConnection, request: Request) -> Response:
        return connection.respond(HTTPStatus.FORBIDDEN, "not here\n")

    async def never(connection: ServerConnection) -> None:
        raise AssertionError("the handshake was refused")

    async with serve(never, "127.0.0.1", 0, process_request=forbid) as listener:
        port = listener.sockets[0].getsockname()[1]
        client = SyncClient(Store[State]({}, device_id=1), f"ws://127.0.0.1:{port}")
        client.start()
        with pytest.raises(ServerRefusedError, match="403"):
            await client.wait_online()
        with pytest.raises(ServerRefusedError, match="check the URL"):
            await client.close()


def test_the_client_errors_join_the_optisync_tree() -> None:
    assert issubclass(ClientConnectionError, optisync.TransportError)
    assert issubclass(ClientConnectionError, ConnectionError)
    for error in (RequestRefusedError, ServerRefusedError):
        assert issubclass(error, optisync.OptisyncError)
        assert issubclass(error, RuntimeError)
    assert issubclass(ClientTimeoutError, optisync.OptisyncError)
    assert issubclass(ClientTimeoutError, TimeoutError)


async def test_a_device_id_in_use_is_retried_with_one_warning(url: str) -> None:
    logger = logging.getLogger("optisync.client")
    records = CountRecords(3)
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        async with SyncClient(Store[State]({}, device_id=1), url) as first:
            await first.wait_online()
            async with SyncClient(Store[State]({}, device_id=1), url) as second:
                await records.reached.wait()
                assert isinstance(second.last_error, ClientConnectionError)
                assert "device_in_use" in str(second.last_error)
                assert not second.online
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    levels = [record.levelno for record in records.records[:3]]
    assert levels == [logging.WARNING, logging.DEBUG, logging.DEBUG]


async def test_the_digest_is_that_of_the_push_at_the_cursor_and_the_hello_carries_it(
    url: str,
) -> None:
    from optisync.client import Traced
    from optisync.wire import Push

    hellos: list[Hello] = []
    pushes: list[Push] = []

    def record(traced: Traced) -> None:
        if isinstance(traced.message, Hello):
            hellos.append(traced.message)
        elif isinstance(traced.message, Push):
            pushes.append(traced.message)

    store = Store[State]({}, device_id=1)
    async with SyncClient(store, url, trace=record) as client:
        await client.wait_online()
        await client.send("a", 1, request(1))
        await client.send("b", {"y": 2.5, "x": [True]}, request(1, key="b"))
        await client.caught_up()
        assert client.cursor == 2
        assert client.digest == entry_digest(pushes[-1])
        saved = (client.cursor, client.generation, client.digest)
    again = SyncClient(Store[State]({}, device_id=1), url, trace=record)
    again.resume(*saved)
    async with again:
        await again.wait_online()
    assert hellos[0].digest is msgspec.UNSET  # nothing received yet: left out
    assert (hellos[1].since, hellos[1].digest) == (2, saved[2])
    assert again.digest == saved[2]


async def test_a_reset_forgets_the_digest_and_a_new_cursor_has_none(url: str) -> None:
    client = SyncClient(Store[State]({}, device_id=1), url, cursor=40, digest="f" * 16)
    assert client.digest == "f" * 16
    client.generation = "g"
    assert client.digest == "f" * 16  # the same cursor: its digest stays
    client.cursor = 41
    assert client.digest == ""
    client.resume(40, "g", "e" * 16)
    async with client:
        await client.wait_online()
    assert (client.cursor, client.digest) == (0, "")


def test_resume_refuses_a_digest_that_is_not_a_str() -> None:
    client = SyncClient(Store[State]({}, device_id=1), "ws://127.0.0.1:9")
    with pytest.raises(optisync.ArgumentTypeError, match="digest"):
        client.resume(1, "g", 5)  # type: ignore[arg-type]
