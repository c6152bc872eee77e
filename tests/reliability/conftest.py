"""Reliability suite: OPTISYNC_SCENARIOS scenarios from OPTISYNC_SEED; a summary with the seed."""

from __future__ import annotations

import pytest
from sim_harness import RUN_SEED, STATS, scenario_count


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not STATS.scenarios:
        return
    write = terminalreporter.write_line
    terminalreporter.section("optisync reliability")
    write(
        f"{STATS.scenarios} scenarios in {STATS.seconds:.1f} s "
        f"(OPTISYNC_SCENARIOS={scenario_count()}); "
        f"failing: {STATS.failed}, divergences: {STATS.divergences}"
    )
    replay = f"OPTISYNC_SEED={RUN_SEED} OPTISYNC_SCENARIOS={scenario_count()}"
    write(f"seed: {RUN_SEED} (replay with {replay})")
    write(
        f"taps: {STATS.taps}, requests: {STATS.requests}, "
        f"network failures: {STATS.network_failures}"
    )
    write(f"push outcomes: {dict(sorted(STATS.push_outcomes.items()))}")
    write(f"injected callback faults: {dict(sorted(STATS.injected.items()))}")
    write(f"close() hit: {dict(sorted(STATS.close_phases.items()))}")
