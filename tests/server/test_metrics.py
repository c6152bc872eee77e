"""Prometheus metrics: known traffic on a real server gives exact counts.

Every server here listens on 127.0.0.1. A test waits for what the server
counts after the client can see it (a close, a refusal of a connection that
sent nothing) through :class:`WatchedMetrics`, a subclass that wakes the test
at each count.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client", reason="the metrics extra is not installed")

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from optisync.server import Change, Limits, SqliteStorage, SyncServer, require_token
from optisync.server.metrics import ServerMetrics
from tests.server.conftest import RawDevice, open_raw_device, server_process

SLOW = {"messages_per_second": 0.001, "address_messages_per_second": 0.001}
BOUND = 10.0  # seconds: only stops a hang


class WatchedMetrics(ServerMetrics):
    """Metrics a test can wait on: every connection refused or closed wakes it."""

    def __init__(self) -> None:
        super().__init__(CollectorRegistry())
        self._changed = asyncio.Event()

    def connection_refused(self, reason: str) -> None:
        super().connection_refused(reason)
        self._changed.set()

    def connection_closed(self, reason: str) -> None:
        super().connection_closed(reason)
        self._changed.set()

    def value(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(f"optisync_{name}", labels)
        return 0.0 if found is None else found

    def by_reason(self, name: str) -> dict[str, float]:
        """The counts above 0 of a counter by reason."""
        return {
            sample.labels["reason"]: sample.value
            for family in self.registry.collect()
            for sample in family.samples
            if sample.name == f"optisync_{name}_total" and sample.value > 0
        }

    async def until(self, done: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND):
            while not done():
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def metrics() -> WatchedMetrics:
    return WatchedMetrics()


@contextlib.asynccontextmanager
async def serve(
    tmp_path: Path, metrics: ServerMetrics, limits: Limits, **options: Any
) -> AsyncIterator[str]:
    server = SyncServer(
        SqliteStorage(tmp_path / "server.sqlite3"), limits=limits, metrics=metrics, **options
    )
    async with server.run(port=0) as url:
        yield url


async def answers(device: RawDevice, count: int) -> list[str]:
    """The next ``count`` answers' error codes or types, pushes skipped."""
    result = []
    while len(result) < count:
        message = await device.receive()
        if message["type"] != "push":
            result.append(message.get("code", message["type"]))
    return result


async def replay_sizes(url: str, device_id: int) -> list[int]:
    """The byte sizes of the push frames a new device's replay brings."""
    async with connect(url) as connection:
        await connection.send(json.dumps({"type": "hello", "device_id": device_id, "since": 0}))
        assert json.loads(await connection.recv())["type"] == "welcome"
        sizes = []
        while json.loads(frame := str(await connection.recv()))["type"] == "push":
            sizes.append(len(frame.encode()))
        return sizes


async def read_forever(connection: ClientConnection) -> None:
    while True:
        await connection.recv()


async def closed_by_server(connection: ClientConnection) -> str:
    """Read until the server closes; its close reason."""
    with pytest.raises(ConnectionClosed) as closed:
        await read_forever(connection)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.reason


# -- traffic ---------------------------------------------------------------------------


TRAFFIC = Limits(
    burst=20, address_burst=1000, max_message_bytes=4096, max_frame_bytes=8192,
    max_bad_frames=100, **SLOW,
)  # fmt: skip


async def test_commits_replays_and_refused_frames_are_counted_exactly(
    tmp_path: Path, metrics: WatchedMetrics
) -> None:
    async with serve(tmp_path, metrics, TRAFFIC) as url:
        writer = await open_raw_device(url, 1)
        reader = await open_raw_device(url, 2)
        for n in range(10):
            await writer.set(f"key{n}", n)
        # Nine refused frames, 11 gets, then past the burst of 20: 3 rate limited.
        for frame in (
            "{not json",
            '{"type": "get", "request_id": 1}',
            '{"type": "gte", "request_id": 4}',
            '{"type": "get", "request_id": 5, "key": "k", "extra": 1}',
            '{"type": "get", "request_id": 6, "key": 5}',
            json.dumps({"type": "hello", "device_id": 2, "since": 0}),
            '{"type": "get", "request_id": 2, "key": "' + "x" * 5000 + '"}',
            json.dumps(
                {"type": "set", "request_id": 3, "key": "k", "value": 1, "local_revision": 1,
                 "device_id": 99}
            ),
        ):  # fmt: skip
            await reader.send(frame)
        await reader.connection.send(b"binary")
        for n in range(14):
            await reader.send({"type": "get", "request_id": 10 + n, "key": "key0"})
        assert await answers(reader, 23) == [
            "bad_json", "missing_field", "unknown_type", "unknown_field", "bad_field",
            "bad_message", "too_large", "forbidden", "bad_message",
            *["value"] * 11, *["rate_limited"] * 3,
        ]  # fmt: skip
        sizes = await replay_sizes(url, 3)
        await writer.connection.close()
        await reader.connection.close()
        await metrics.until(lambda: metrics.value("connections_open") == 0)

    assert metrics.value("commits_total") == 10
    assert metrics.value("commit_latency_seconds_count") == 10
    assert metrics.value("commit_latency_seconds_sum") > 0
    assert metrics.value("fan_out_seconds_count") == 10
    assert metrics.by_reason("frames_refused") == {
        "bad_json": 1, "missing_field": 1, "unknown_type": 1, "unknown_field": 1, "bad_field": 1,
        "bad_message": 2, "too_large": 1, "forbidden": 1, "rate_limited": 3,
    }  # fmt: skip
    assert metrics.value("connections_accepted_total") == 3
    assert metrics.by_reason("connections_closed") == {"disconnected": 3}
    assert metrics.by_reason("connections_refused") == {}
    assert metrics.value("replays_total") == 3
    assert len(sizes) == 10
    assert metrics.value("replayed_keys_total") == 10
    assert metrics.value("replayed_bytes_total") == sum(sizes)


# -- connections -----------------------------------------------------------------------


async def test_refused_and_closed_connections_are_counted_by_reason(
    tmp_path: Path, metrics: WatchedMetrics
) -> None:
    limits = Limits(max_connections_per_address=3, max_bad_frames=3)

    def hello(device_id: int, **fields: Any) -> str:
        return json.dumps({"type": "hello", "device_id": device_id, "since": 0, **fields})

    async with serve(tmp_path, metrics, limits, authenticate=require_token("t")) as url:
        device = await open_device_with_token(url, 1)
        for refused in (
            hello(1, token="t"),  # device_in_use
            hello(2, token="wrong"),  # unauthorized
            hello(2, token="t", protocol=99),  # bad_version
            '{"type": "get", "request_id": 1, "key": "k"}',  # bad_message: not a hello
        ):
            async with connect(url) as connection:
                await connection.send(refused)
                await closed_by_server(connection)
        # Two connections that say nothing, so the address holds three: a fourth is refused.
        silent = [await connect(url), await connect(url)]
        async with connect(url) as fourth:
            assert await closed_by_server(fourth) == "too many connections from this address"
        for connection in silent:
            await connection.close()  # no_hello, each
        await metrics.until(
            lambda: metrics.value("connections_refused_total", reason="no_hello") == 2
        )
        for _ in range(3):
            await device.send("{not json")
        assert await closed_by_server(device.connection) == "too many bad messages in a row"
        await metrics.until(lambda: metrics.value("connections_open") == 0)

    assert metrics.by_reason("connections_refused") == {
        "device_in_use": 1, "unauthorized": 1, "bad_version": 1, "bad_message": 1,
        "too_many_connections": 1, "no_hello": 2,
    }  # fmt: skip
    assert metrics.value("connections_accepted_total") == 1
    assert metrics.by_reason("connections_closed") == {"bad_frames": 1}
    assert metrics.by_reason("frames_refused") == {"bad_json": 3}


async def open_device_with_token(url: str, device_id: int) -> RawDevice:
    device = RawDevice(await connect(url), device_id)
    await device.send({"type": "hello", "device_id": device_id, "since": 0, "token": "t"})
    assert (await device.receive())["type"] == "welcome"
    assert (await device.receive())["type"] == "ready"
    return device


async def test_a_hello_past_the_address_burst_is_counted_as_refused_rate_limited(
    tmp_path: Path, metrics: WatchedMetrics
) -> None:
    async with serve(tmp_path, metrics, Limits(address_burst=2, **SLOW)) as url:
        first, second = await open_raw_device(url, 1), await open_raw_device(url, 2)
        async with connect(url) as third:
            await third.send(json.dumps({"type": "hello", "device_id": 3, "since": 0}))
            assert await closed_by_server(third) == "rate_limited"
        await first.connection.close()
        await second.connection.close()
        await metrics.until(lambda: metrics.value("connections_open") == 0)
    assert metrics.by_reason("connections_refused") == {"rate_limited": 1}
    assert metrics.value("connections_accepted_total") == 2


async def test_a_connection_cut_at_its_welcome_is_counted_closed_send_queue_full(
    tmp_path: Path, metrics: WatchedMetrics
) -> None:
    async with serve(tmp_path, metrics, Limits(send_buffer_bytes=10)) as url:  # < a welcome
        async with connect(url) as connection:
            await connection.send(json.dumps({"type": "hello", "device_id": 1, "since": 0}))
            assert await closed_by_server(connection) == "send queue full"
        await metrics.until(lambda: metrics.value("connections_open") == 0)
    assert metrics.value("connections_accepted_total") == 1
    assert metrics.by_reason("connections_closed") == {"send_queue_full": 1}


class FailingStorage(SqliteStorage):
    """A storage whose replay reads and commits fail while ``failing`` is set."""

    failing = True

    async def latest_after(self, revision: int, limit: int) -> list[Change]:
        if self.failing:
            raise OSError("the disk is gone")
        return await super().latest_after(revision, limit)

    async def commit(self, key: str, value: bytes, **options: Any) -> Change:
        if self.failing:
            raise OSError("the disk is gone")
        return await super().commit(key, value, **options)


async def test_storage_failures_are_counted_unavailable(
    tmp_path: Path, metrics: WatchedMetrics, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FailingStorage(tmp_path / "server.sqlite3")
    async with SyncServer(storage, metrics=metrics).run(port=0) as url:
        async with connect(url) as connection:
            await connection.send(json.dumps({"type": "hello", "device_id": 1, "since": 0}))
            assert await closed_by_server(connection) == "the database is unavailable"
        await metrics.until(lambda: metrics.value("connections_open") == 0)
        storage.failing = False
        device = await open_raw_device(url, 2)
        storage.failing = True
        await device.send({"type": "set", "request_id": 1, "key": "k", "value": 1,
                           "local_revision": 1})  # fmt: skip
        assert await answers(device, 1) == ["unavailable"]
        await device.connection.close()
        await metrics.until(lambda: metrics.value("connections_open") == 0)
    assert metrics.by_reason("connections_closed") == {"unavailable": 1, "disconnected": 1}
    assert metrics.by_reason("frames_refused") == {"unavailable": 1}
    assert metrics.value("commits_total") == 0
    assert "replay for device 1 failed" in caplog.text  # the logs still say what happened


# -- exposure --------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """Every sample of a ``/metrics`` page, parsed by prometheus-client: name{labels} -> value."""
    with urllib.request.urlopen(url, timeout=BOUND) as response:
        text = response.read().decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_command_line_serves_metrics_on_its_metrics_port(tmp_path: Path) -> None:
    arguments = ("--database", str(tmp_path / "db.sqlite3"), "--metrics-port", "0")
    with server_process(*arguments, stderr=subprocess.PIPE) as (process, url):
        assert process.stderr is not None
        while "metrics on " not in (line := process.stderr.readline()):
            assert line, "the server ended without serving metrics"
        metrics_url = line.split("metrics on ")[1].strip()
        device = await open_raw_device(url, 1)
        for n in range(3):
            await device.set(f"key{n}", n)
        samples = await asyncio.to_thread(scrape, metrics_url)
        await device.connection.close()
    assert metrics_url.startswith("http://127.0.0.1:")
    assert samples["optisync_commits_total{}"] == 3
    assert samples["optisync_commit_latency_seconds_count{}"] == 3
    assert samples["optisync_fan_out_seconds_count{}"] == 3
    assert samples["optisync_connections_open{}"] == 1
    assert samples['optisync_frames_refused_total{"reason": "rate_limited"}'] == 0
    assert "process_cpu_seconds_total{}" in samples  # the global registry: process metrics too


async def test_metrics_mounted_in_a_starlette_app_report_the_commits(
    tmp_path: Path, metrics: WatchedMetrics
) -> None:
    pytest.importorskip("starlette", reason="starlette is not installed")
    httpx = pytest.importorskip("httpx", reason="httpx is not installed")
    from starlette.applications import Starlette
    from starlette.routing import Mount

    app = Starlette(routes=[Mount("/metrics", app=metrics.asgi_app())])
    async with serve(tmp_path, metrics, Limits()) as url:
        device = await open_raw_device(url, 1)
        for n in range(4):
            await device.set(f"key{n}", n)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/metrics/")
        await device.connection.close()
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["optisync_commits"].samples[0].value == 4


# -- without metrics ---------------------------------------------------------------------


_WITHOUT_METRICS = """
import asyncio, json, sys
from websockets.asyncio.client import connect
from optisync.server import SqliteStorage, SyncServer
import optisync.server.__main__

async def main():
    async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
        async with connect(url) as device:
            await device.send(json.dumps({"type": "hello", "device_id": 1, "since": 0}))
            await device.recv(); await device.recv()  # welcome, ready
            await device.send(json.dumps(
                {"type": "set", "request_id": 1, "key": "k", "value": 1, "local_revision": 1}))
            print(json.loads(await device.recv())["type"], json.loads(await device.recv())["type"])
    print("prometheus_client" in sys.modules)

asyncio.run(main())
"""


def test_a_server_without_metrics_works_and_loads_no_prometheus_client() -> None:
    # A fresh interpreter: this one imported prometheus_client for the tests above.
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_METRICS],
        capture_output=True,
        text=True,
        timeout=BOUND * 3,
        check=True,
    )
    assert result.stdout.split() == ["push", "ack", "False"]


def test_an_observation_on_a_bound_is_counted_in_that_bound_s_bucket() -> None:
    metrics = ServerMetrics(CollectorRegistry())
    for seconds in (0.001, 0.0011, 100.0):
        metrics.committed(seconds)

    def bucket(le: str) -> float | None:
        return metrics.registry.get_sample_value(
            "optisync_commit_latency_seconds_bucket", {"le": le}
        )

    assert (bucket("0.0005"), bucket("0.001"), bucket("0.0025"), bucket("+Inf")) == (0, 1, 2, 3)
    assert metrics.registry.get_sample_value("optisync_commit_latency_seconds_sum") == 100.0021
    assert metrics.registry.get_sample_value("optisync_commits_total") == 3


def test_one_registry_refuses_a_second_set_of_the_same_names() -> None:
    registry = CollectorRegistry()
    ServerMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        ServerMetrics(registry)
    ServerMetrics(registry, namespace="second")  # another namespace: another set


def test_metrics_port_without_prometheus_client_fails_in_one_line(tmp_path: Path) -> None:
    program = (
        "import sys; sys.modules['prometheus_client'] = None  # as if not installed\n"
        "from optisync.server.__main__ import main\n"
        f"sys.exit(main(['--database', {str(tmp_path / 'db.sqlite3')!r}, '--port', '0', "
        "'--metrics-port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=BOUND
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert 'pip install "optisync[metrics]"' in line
