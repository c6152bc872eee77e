"""The demo command, its interactive modes, and the examples in the live modules' docstrings."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.live.two_servers import DSN_VARIABLE

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "examples.live.client",
    "examples.live.network",
    "examples.live.timeline",
    "examples.live.demo",
    "examples.live.two_servers",
]
SCENES = ("in flight", "at once", "network drops", "server restarts", "B restarts")


def run(*arguments: str, stdin: str = "", **options: object) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != DSN_VARIABLE}
    return subprocess.run(
        [sys.executable, "-m", "examples.live", *arguments],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
        **options,  # type: ignore[arg-type]
    )


def test_the_demo_command_plays_five_scenes_and_ends_with_both_devices_equal() -> None:
    finished = run()
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stderr == ""
    for scene in SCENES:
        assert scene in finished.stdout
    table = finished.stdout.split("Final state")[1]
    assert table.count("| equal") == 2
    assert "DIFFERENT" not in table
    assert finished.stdout.rstrip().endswith("All devices equal the database.")


def test_without_postgres_the_demo_says_in_one_line_why_scene_six_is_skipped() -> None:
    finished = run()
    skipped = [line for line in finished.stdout.splitlines() if line.startswith("== 6.")]
    assert skipped == [
        "== 6. Two server processes on one PostgreSQL database, a device on each: skipped "
        f"(no PostgreSQL: pass --postgres DSN or set ${DSN_VARIABLE})"
    ]


def test_the_demo_flags_are_documented_in_the_help() -> None:
    finished = run("--help")
    assert finished.returncode == 0
    for flag in ("--server", "--client URL", "--storage", "--postgres DSN"):
        assert flag in finished.stdout


def test_the_server_mode_and_two_interactive_devices_sync(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "examples.live", "--server", "--port", "0"]
    database = str(tmp_path / "live.sqlite3")
    with subprocess.Popen(
        [*command, "--db", database], cwd=ROOT, stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            assert url.startswith("ws://127.0.0.1:")
            phone = run(
                "--client",
                url,
                "--storage",
                str(tmp_path / "phone.sqlite3"),
                stdin="set color dark red\nset size 42\ntoggle color\nquit\n",
            )
            laptop = run(
                "--client", url, "--storage", str(tmp_path / "laptop.sqlite3"), stdin="show\n"
            )
        finally:
            server.terminate()
    assert phone.returncode == laptop.returncode == 0, phone.stderr + laptop.stderr
    assert "<- ack color rev 1" in phone.stdout
    assert "color is not a boolean: set it instead" in phone.stdout.splitlines()
    shown = laptop.stdout.splitlines()
    assert '  color = "dark red" (revision 1)' in shown
    assert "  size = 42 (revision 2)" in shown
    # A clean quit leaves only the storage file: no lock file, no SQLite journal.
    devices_files = sorted(path.name for path in tmp_path.iterdir() if "live" not in path.name)
    assert devices_files == ["laptop.sqlite3", "phone.sqlite3"]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failures == 0
    assert tried > 0
