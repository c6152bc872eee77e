"""The benchmark suite (tests/benchmarks) runs, at tiny sizes; no timing is ever asserted.

Request counts are deterministic, so row 1's are checked exactly.
"""

from __future__ import annotations

import asyncio
import datetime
import platform
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks import coalescing, fan_out, full_cycle, hot_path, scale, simulator, suite
from benchmarks._common import Row

from optisync import Store


@pytest.mark.parametrize("taps", [2, 10, 1_000, 10_000])
def test_taps_during_one_request_send_exactly_two_requests(taps: int) -> None:
    assert asyncio.run(coalescing.optisync_requests(taps)) == 2


def test_a_single_tap_sends_one_request() -> None:
    assert asyncio.run(coalescing.optisync_requests(1)) == 1


@pytest.mark.parametrize("taps", [1, 2, 10, 1_000])
def test_the_naive_client_sends_every_tap(taps: int) -> None:
    assert asyncio.run(coalescing.naive_requests(taps)) == taps


def test_row_1_reports_the_exact_counts_and_meets_its_target() -> None:
    rows = coalescing.measure((1, 2, 10))
    assert [(row.optisync, row.baseline, row.met) for row in rows] == [
        ("1", "1 (naive)", True),
        ("2", "2 (naive)", True),
        ("2", "10 (naive)", True),
    ]


@pytest.mark.parametrize(
    ("number", "run"),
    [
        ("2", lambda: hot_path.measure(ops=20, repeats=1)),
        ("6", lambda: simulator.measure(scenarios=3, repeats=1)),
    ],
)
def test_a_timed_row_runs_at_tiny_sizes_and_gives_a_verdict(
    number: str, run: Callable[[], list[Row]]
) -> None:
    rows = run()
    assert [row.number for row in rows] == [number]
    assert rows[0].optisync


def test_the_full_cycle_rows_give_a_verdict_and_a_comparison_with_a_task() -> None:
    rows = full_cycle.measure(ops=20, repeats=1)
    assert [(row.number, row.met is None) for row in rows] == [("3", False), ("3", True)]
    assert "task" in rows[1].baseline


def test_the_scale_row_settles_every_key_and_reports_each_size() -> None:
    rows = scale.measure((10, 20), repeats=1)
    assert [row.number for row in rows] == ["4"] * 5
    assert "10 keys" in rows[0].measure
    assert "20 keys" in rows[1].measure
    assert [row.met is None for row in rows] == [True, True, False, False, False]


def test_the_fan_out_row_compares_with_reactivex() -> None:
    pytest.importorskip("reactivex")
    (row,) = fan_out.measure(subscribers=5, emits=3, repeats=1)
    assert "BehaviorSubject" in row.baseline
    assert row.met is not None


def test_simulated_scenarios_converge_on_every_device() -> None:
    if not simulator.available():
        pytest.skip("optisync.testing is not there yet")
    _, divergences = simulator.run_scenarios(5)
    assert divergences == 0


def test_the_table_has_the_machine_line_and_one_line_per_row() -> None:
    rows = [Row("1", "requests", "2", "10 (naive)", "5x fewer", "exactly 2", True)]
    when = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC)
    table = suite.render(rows, suite.machine_summary(when))
    lines = table.splitlines()
    assert lines[0].startswith("Machine: ")
    assert "cores" in lines[0]
    assert platform.python_version() in lines[0]
    assert "2026-01-02 03:04 UTC" in lines[0]
    assert lines[-1] == "| 1 | requests | 2 | 10 (naive) | 5x fewer | exactly 2 | yes |"
    assert len(lines) == 5


def test_publishing_replaces_only_the_table_between_the_markers(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(f"# Title\nprose\n{suite.BEGIN}\nold table\n{suite.END}\nmore prose\n")
    suite.publish("new table\n", page)
    suite.publish("newer table\n", page)
    assert page.read_text() == (
        f"# Title\nprose\n{suite.BEGIN}\nnewer table\n{suite.END}\nmore prose\n"
    )


def test_the_published_docs_page_has_the_markers() -> None:
    text = suite.DOCS_PAGE.read_text(encoding="utf-8")
    assert text.count(suite.BEGIN) == 1
    assert text.count(suite.END) == 1


async def test_closing_right_after_a_tap_leaves_no_key_syncing() -> None:
    store = Store(0, device_id=1)

    async def send(value: int, local_revision: int, device_id: int, inform: object) -> None:
        raise AssertionError("never sent: the store closes first")

    store.optimistic_sync_with_push(
        key="k",
        value_to_apply=lambda: 1,
        apply_optimistic_value_to_state=lambda state, value: value,
        get_value_from_state=lambda state: state,
        send_value_to_server=send,
        get_server_revision_from_state=lambda key: -1,
    )
    await store.close()
    assert not store.is_syncing("k")
