"""The demo command, and the examples in the live modules' docstrings."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "examples.live.protocol",
    "examples.live.database",
    "examples.live.persistence",
    "examples.live.server",
    "examples.live.client",
    "examples.live.demo",
    "examples.live.interactive",
]


def test_the_demo_command_ends_with_both_devices_equal_to_the_database() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "examples.live"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stderr == ""
    table = finished.stdout.split("Final state")[1]
    assert table.count("| equal") == 2
    assert "DIFFERENT" not in table
    for step in ("in flight", "at once", "network drops", "server restarts", "B restarts"):
        assert step in finished.stdout


def test_the_demo_flags_are_documented_in_the_help() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "examples.live", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--server" in finished.stdout
    assert "--client URL" in finished.stdout


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
    assert tried > 0 or name.endswith("interactive")
