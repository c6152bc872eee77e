"""The pytest plugin, as a user's test suite sees it (run with pytester)."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest
from test_docs import _fenced_blocks

pytest_plugins = ["pytester"]

_INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
{extra}
"""


def _project(pytester: pytest.Pytester, tests: str, *, virtual_time: bool) -> None:
    extra = "optisync_virtual_time = true" if virtual_time else ""
    pytester.makeini(_INI.format(extra=extra))
    pytester.makepyfile(test_user=tests)


def test_the_plugin_is_registered_by_its_entry_point() -> None:
    plugins = {point.name: point.value for point in entry_points(group="pytest11")}
    assert plugins.get("optisync") == "optisync.pytest_plugin"


def test_the_fixtures_give_a_user_a_server_a_network_and_a_settle(
    pytester: pytest.Pytester,
) -> None:
    _project(
        pytester,
        """
        from optisync import Store

        async def test_a_store_syncs_through_the_simulated_network(
            optisync_server, optisync_network, optisync_settle
        ):
            link = optisync_network.device(1)
            store = Store(0, device_id=1)
            link.attach(store, lambda commit: store.emit(commit.value))
            await optisync_network.device(2).write("n", 5, local_revision=1)
            await optisync_settle()
            assert store.state == 5
            assert optisync_server.value("n") == 5
            await store.close()
        """,
        virtual_time=False,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_overriding_the_faults_fixture_changes_the_network(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest
        from optisync.testing import NetworkFaults

        @pytest.fixture
        def optisync_faults():
            return NetworkFaults(fail_before_commit=1.0)
        """
    )
    _project(
        pytester,
        """
        import pytest
        from optisync.testing import SimulatedRequestError

        async def test_every_write_fails(optisync_network):
            with pytest.raises(SimulatedRequestError):
                await optisync_network.device(1).write("k", 1, local_revision=1)
        """,
        virtual_time=False,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


_CLOCKS = """
    import asyncio

    import pytest

    async def test_an_hour_of_latency(optisync_network, optisync_settle):
        await asyncio.sleep(3600)
        await optisync_settle()
        assert type(asyncio.get_running_loop()).__name__ == "VirtualClockLoop"

    @pytest.mark.optisync_real_time
    async def test_marked_real_time():
        assert type(asyncio.get_running_loop()).__name__ != "VirtualClockLoop"

    def test_a_plain_test_runs_a_coroutine_on_virtual_time(optisync_run):
        async def nap():
            await asyncio.sleep(86_400)
            return asyncio.get_running_loop().time()

        assert optisync_run(nap()) == 86_400
"""


def test_the_ini_option_puts_async_tests_on_virtual_time_except_marked_ones(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, _CLOCKS, virtual_time=True)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=3)


def test_without_the_ini_option_async_tests_keep_their_usual_loop(
    pytester: pytest.Pytester,
) -> None:
    _project(
        pytester,
        """
        import asyncio

        async def test_usual_loop():
            assert type(asyncio.get_running_loop()).__name__ != "VirtualClockLoop"
        """,
        virtual_time=False,
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_guides_example_test_file_passes_on_virtual_time(pytester: pytest.Pytester) -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "pytest-plugin.md"
    [block] = [b for b in _fenced_blocks(page) if 'title="test_likes.py"' in b.info]
    _project(pytester, block.code, virtual_time=True)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
