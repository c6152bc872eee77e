"""A pytest plugin for testing your own stores: simulated server and network, virtual time.

Installed with optisync (entry point ``pytest11``), so nothing needs copying
into your ``conftest.py``. It provides:

* fixtures ``optisync_server`` (a :class:`~optisync.testing.SimulatedServer`),
  ``optisync_network`` (a seeded :class:`~optisync.testing.SimulatedNetwork`
  between it and your devices, closed after the test) and ``optisync_settle``
  (``await optisync_settle()``: wait until nothing is left in flight);
  override ``optisync_faults`` and ``optisync_seed`` to choose what goes wrong;
* ``optisync_run``, for plain (synchronous) tests and hypothesis: runs a
  coroutine on a fresh virtual-time loop, like :func:`optisync.testing.run`;
* virtual time for ``async def`` tests (pytest-asyncio 1.x): set
  ``optisync_virtual_time = true`` in your pytest configuration and every
  async test runs on a :class:`~optisync.testing.VirtualClockLoop`, except the
  ones marked ``@pytest.mark.optisync_real_time``. Without that setting the
  plugin leaves your event loops alone.

Example:
    A test file of your own (the fixtures need no import)::

        async def test_a_write_reaches_the_server(optisync_network, optisync_settle):
            commit = await optisync_network.device(1).write("k", 1, local_revision=1)
            await optisync_settle()
            assert optisync_network.server.value("k") == commit.value

    >>> import optisync.pytest_plugin as plugin
    >>> plugin.VIRTUAL_TIME_OPTION
    'optisync_virtual_time'
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import pytest

from optisync import testing

__all__ = [
    "REAL_TIME_MARKER",
    "VIRTUAL_TIME_OPTION",
    "optisync_faults",
    "optisync_network",
    "optisync_run",
    "optisync_seed",
    "optisync_server",
    "optisync_settle",
]

VIRTUAL_TIME_OPTION = "optisync_virtual_time"
"""The ini option that puts every ``async def`` test on virtual time.

Example:
    In ``pyproject.toml``::

        [tool.pytest.ini_options]
        optisync_virtual_time = true
"""

REAL_TIME_MARKER = "optisync_real_time"
"""The marker that keeps one test on a real-time loop when virtual time is on.

Example:
    >>> import pytest
    >>> from optisync.pytest_plugin import REAL_TIME_MARKER
    >>> mark = getattr(pytest.mark, REAL_TIME_MARKER)
"""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        VIRTUAL_TIME_OPTION,
        "Run every async test on optisync's virtual-time loop (VirtualClockLoop).",
        type="bool",
        default=False,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{REAL_TIME_MARKER}: run this async test on a real-time event loop"
    )
    if config.getini(VIRTUAL_TIME_OPTION):
        config.pluginmanager.register(_VirtualTime(), "optisync-virtual-time")


class _VirtualTime:
    """pytest-asyncio's loop factory hook, registered only when virtual time is asked for."""

    @pytest.hookimpl(optionalhook=True)
    def pytest_asyncio_loop_factories(
        self, config: pytest.Config, item: pytest.Item
    ) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
        if item.get_closest_marker(REAL_TIME_MARKER) is not None:
            return {"real": asyncio.new_event_loop}
        return {"virtual": testing.VirtualClockLoop}


@pytest.fixture
def optisync_seed() -> int:
    """The seed of ``optisync_network``'s random choices (0); override it to vary runs.

    Example:
        In your ``conftest.py``::

            @pytest.fixture(params=range(20))
            def optisync_seed(request):
                return request.param
    """
    return 0


@pytest.fixture
def optisync_faults() -> testing.NetworkFaults:
    """What ``optisync_network`` does wrong: nothing by default; override it.

    Example:
        In your ``conftest.py``::

            @pytest.fixture
            def optisync_faults():
                return NetworkFaults(request_latency=(0.01, 0.5), drop_push=0.1)
    """
    return testing.NetworkFaults()


@pytest.fixture
def optisync_server() -> testing.SimulatedServer:
    """A fresh :class:`~optisync.testing.SimulatedServer`: last write wins, pushes to all.

    Example:
        ::

            def test_the_server_numbers_commits(optisync_server):
                commit = optisync_server.write("k", 1, local_revision=1, device_id=1)
                assert commit.server_revision == 1
    """
    return testing.SimulatedServer()


@pytest.fixture
def optisync_network(
    optisync_server: testing.SimulatedServer,
    optisync_faults: testing.NetworkFaults,
    optisync_seed: int,
) -> Iterator[testing.SimulatedNetwork]:
    """A :class:`~optisync.testing.SimulatedNetwork` to ``optisync_server``, closed after the test.

    Make one link per device with ``optisync_network.device(device_id)``.

    Example:
        ::

            async def test_two_devices(optisync_network):
                phone, laptop = optisync_network.device(1), optisync_network.device(2)
    """
    network = testing.SimulatedNetwork(optisync_server, faults=optisync_faults, seed=optisync_seed)
    yield network
    network.close()


@pytest.fixture
def optisync_settle(
    optisync_network: testing.SimulatedNetwork,
) -> Callable[..., Awaitable[None]]:
    """``await optisync_settle()``: wait until no task, push or reconnect is left.

    It is ``optisync_network.settle``: keyword arguments ``max_time`` and
    ``ignore`` are passed on, and a
    :class:`~optisync.testing.SettleTimeoutError` says what is still running.

    Example:
        ::

            async def test_settles(optisync_network, optisync_settle):
                await optisync_network.device(1).write("k", 1, local_revision=1)
                await optisync_settle()
    """
    return optisync_network.settle


@pytest.fixture
def optisync_run() -> Callable[..., Any]:
    """Run a coroutine on a fresh virtual-time loop: :func:`optisync.testing.run`.

    For plain test functions, hypothesis property tests above all (one loop
    per example).

    Example:
        ::

            def test_an_hour_takes_no_time(optisync_run):
                assert optisync_run(asyncio.sleep(3600, result="done")) == "done"
    """
    return testing.run
