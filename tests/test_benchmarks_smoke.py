"""The benchmark suite (tests/benchmarks) runs, at tiny sizes; no timing is ever asserted.

Request counts are deterministic, so row 1's are checked exactly.
"""

from __future__ import annotations

import asyncio
import datetime
import gc
import platform
import sys
from pathlib import Path

import pytest
from benchmarks import coalescing, fan_out, full_cycle, hot_path, scale, simulator, suite
from benchmarks._common import Row, gc_paused

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


def test_the_simulator_row_runs_at_tiny_sizes_and_gives_a_verdict() -> None:
    (row,) = simulator.measure(scenarios=3, repeats=1)
    assert row.number == "6"
    assert "CPU" in row.measure
    assert row.met is not None


def test_the_hot_path_rows_report_an_attrs_state_and_an_int_state() -> None:
    rows = hot_path.measure(ops=20, repeats=1)
    assert [(row.number, row.measure, row.met is None) for row in rows] == [
        ("2", "attrs state", False),
        ("2", "int state", False),
    ]


@pytest.mark.parametrize("change", [hot_path.POST, hot_path.INT], ids=lambda c: c.name)
def test_each_hot_path_side_makes_the_same_change(change: hot_path.Change[object]) -> None:
    after_one = change.apply(change.initial, change.next_value(change.initial))
    assert after_one != change.initial
    assert change.value(after_one) == change.next_value(change.initial)


def test_the_full_cycle_rows_compare_with_inline_a_bare_task_and_an_eager_task() -> None:
    rows = full_cycle.measure(ops=20, repeats=1)
    assert [(row.number, row.met is None) for row in rows] == [
        ("3", False),
        ("3", False),
        ("3", True),
    ]
    assert "task" in rows[1].baseline
    assert ("eager task" in rows[2].baseline) == (sys.version_info >= (3, 12))


def test_the_scale_rows_report_each_size_with_the_collector_on_and_off() -> None:
    rows = scale.measure((10, 20), repeats=1)
    assert [row.number for row in rows] == ["4"] * 8
    assert [row.measure.split(":")[0] for row in rows[:2] + rows[3:5]] == [
        "10 keys",
        "20 keys",
        "10 keys, gc off",
        "20 keys, gc off",
    ]
    assert [row.met is None for row in rows] == [True, True, False, True, True, False, False, False]


def test_gc_paused_turns_the_collector_off_inside_only() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    with gc_paused(paused=False):
        assert gc.isenabled()
    assert gc.isenabled()


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


def test_the_table_header_names_the_python_version_and_the_machine() -> None:
    when = datetime.datetime(2026, 1, 2, 3, 4, tzinfo=datetime.UTC)
    header = suite.render([], suite.machine_summary(when)).splitlines()[0]
    assert header.startswith(f"Python: **{platform.python_implementation()} ")
    assert platform.python_version() in header
    assert "cores" in header
    assert "2026-01-02 03:04 UTC" in header


def test_each_row_number_gets_its_own_table_under_its_heading() -> None:
    rows = [
        Row("1", "2 taps", "2", "2 (naive)", "same", "exactly 2", True),
        Row("1", "10 taps", "2", "10 (naive)", "5x fewer", "exactly 2", True),
        Row("2", "int state", "2 µs", "1 µs (emit)", "2.00x", "<= 1.5x", False),
    ]
    lines = suite.render(rows, "header").splitlines()
    header = "| Case | optisync | Baseline | Ratio | Target | Met |"
    assert lines == [
        "header",
        "",
        f"**1. {suite.SECTIONS['1']}**",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- |",
        "| 2 taps | 2 | 2 (naive) | same | exactly 2 | yes |",
        "| 10 taps | 2 | 10 (naive) | 5x fewer | exactly 2 | yes |",
        "",
        f"**2. {suite.SECTIONS['2']}**",
        "",
        header,
        "| --- | --- | --- | --- | --- | --- |",
        "| int state | 2 µs | 1 µs (emit) | 2.00x | <= 1.5x | **no** |",
    ]


def test_every_row_number_has_a_heading() -> None:
    assert sorted(suite.SECTIONS) == ["1", "2", "3", "4", "5", "6"]


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
