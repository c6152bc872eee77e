"""Run every row, render the one table, and publish it in ``docs/benchmarks.md``."""

from __future__ import annotations

import datetime
import itertools
import multiprocessing
import os
import platform
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from . import coalescing, fan_out, full_cycle, hot_path, scale, simulator
from ._common import Row

__all__ = [
    "BEGIN",
    "DOCS_PAGE",
    "END",
    "SECTIONS",
    "machine_summary",
    "publish",
    "render",
    "run_all",
]

BEGIN = "<!-- benchmarks:begin (written by tests/benchmarks/run.py) -->"
END = "<!-- benchmarks:end -->"
DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"

Progress = Callable[[str], None]

#: The heading of each row's table: what it measures, and against what.
SECTIONS = {
    "1": "Coalescing: requests sent for N taps made during one request, vs a naive client",
    "2": "Hot path: a call on a key whose request is in flight, vs a bare emit",
    "3": "Full cycle against an instant server, per awaited call",
    "4": "Scale: N keys in flight at once; time per call, memory per key",
    "5": "Fan-out: one emit to many subscribers, vs reactivex",
    "6": "Simulator: seeded scenarios (3 devices, 8 taps, faults; virtual time)",
}


def _quiet(message: str) -> None:
    pass


def run_all(*, quick: bool = False, progress: Progress = _quiet) -> list[Row]:
    """Every row, in order; ``quick`` uses tiny sizes (seconds, numbers meaningless).

    A full run measures each row in a fresh process, so that no row pays for
    what an earlier one left behind: after 100,000 tasks, for instance,
    asyncio's global set of tasks keeps its large table, and everything that
    lists the tasks (the simulator does, to settle) gets slower.
    """
    steps: Sequence[tuple[str, Callable[[], list[Row]]]]
    if quick:
        steps = (
            ("1 coalescing", partial(coalescing.measure, (1, 2, 10))),
            ("2 hot path", partial(hot_path.measure, ops=200, repeats=3)),
            ("3 full cycle", partial(full_cycle.measure, ops=50, repeats=3)),
            ("4 scale", partial(scale.measure, (10, 100), repeats=1)),
            ("5 fan-out", partial(fan_out.measure, subscribers=10, emits=5, repeats=3)),
            ("6 simulator", partial(simulator.measure, scenarios=5, repeats=1)),
        )
    else:
        steps = (
            ("1 coalescing", coalescing.measure),
            ("2 hot path", hot_path.measure),
            ("3 full cycle", full_cycle.measure),
            ("4 scale", scale.measure),
            ("5 fan-out", fan_out.measure),
            ("6 simulator", simulator.measure),
        )
    rows: list[Row] = []
    for name, step in steps:
        progress(f"running row {name} ...")
        rows.extend(step() if quick else _in_fresh_process(step))
    return rows


def _in_fresh_process(step: Callable[[], list[Row]]) -> list[Row]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(step).result()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary(now: datetime.datetime | None = None) -> str:
    """The Python version first, then CPU model, cores, OS, and the UTC date of the run."""
    when = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    python = f"{platform.python_implementation()} {platform.python_version()}"
    return (
        f"Python: **{python}**. Machine: {_cpu_model()}, {os.cpu_count()} cores, "
        f"{platform.system()} {platform.machine()}. Run: {when}."
    )


def _verdict(met: bool | None) -> str:
    if met is None:
        return ""
    return "yes" if met else "**no**"


_HEADER = ("Case", "optisync", "Baseline", "Ratio", "Target", "Met")


def render(rows: Sequence[Row], machine: str) -> str:
    """Markdown: the machine line, then one narrow table per row number under its heading."""
    lines = [machine]
    for number, group in itertools.groupby(rows, key=lambda row: row.number):
        lines += [
            "",
            f"**{number}. {SECTIONS[number]}**",
            "",
            "| " + " | ".join(_HEADER) + " |",
            "|" + "|".join(" --- " for _ in _HEADER) + "|",
        ]
        for row in group:
            cells = (row.measure, row.optisync, row.baseline, row.ratio, row.target)
            lines.append("| " + " | ".join((*cells, _verdict(row.met))) + " |")
    return "\n".join(lines) + "\n"


def publish(table: str, page: Path = DOCS_PAGE) -> None:
    """Put ``table`` between the markers of ``page``, keeping the prose around them."""
    text = page.read_text(encoding="utf-8")
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{page} lacks the markers {BEGIN!r} and {END!r}")
    page.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str]) -> int:
    """Run the suite, print the table, and (unless told not to) publish it."""
    quick = "--quick" in argv
    write = "--no-write" not in argv and not quick
    unknown = [arg for arg in argv if arg not in ("--quick", "--no-write")]
    if unknown:
        _stderr(f"unknown arguments: {unknown}; usage: run.py [--quick] [--no-write]")
        return 2
    rows = run_all(quick=quick, progress=_stderr)
    table = render(rows, machine_summary())
    print(table, end="")
    if write:
        publish(table)
        _stderr(f"written to {DOCS_PAGE}")
    return 0
