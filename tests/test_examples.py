"""The examples print what the guide promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from examples import like_button, todo

ROOT = Path(__file__).resolve().parent.parent


async def test_like_button_flow_one_sends_two_requests_for_three_taps() -> None:
    lines: list[str] = []
    assert await like_button.flow_coalescing(lines.append) == 2
    assert "    server: request 2 set liked=True (local_revision=3) -> server_revision=2" in lines
    assert "  end: state liked=True  local_revision=3, server liked=True" in lines


async def test_like_button_flow_two_sends_one_request_when_a_push_arrives() -> None:
    lines: list[str] = []
    assert await like_button.flow_push(lines.append) == 1
    assert "  end: state liked=False local_revision=2, server liked=False" in lines


async def test_todo_example_reloads_on_error_and_ignores_a_replayed_push() -> None:
    lines: list[str] = []
    store = await todo.main(lines.append)
    assert lines[5] == "after reload:     Buy milk: done, Write docs: open"
    assert lines[6].endswith("(applied)")
    assert lines[7].endswith("(stale)")
    assert store.state.todos["docs"].complete is False
    assert store.state.todos["milk"].complete is False


def test_the_like_button_runs_as_a_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "examples.like_button"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.count("requests sent:") == 2
    assert "requests sent: 2" in result.stdout
    assert "requests sent: 1" in result.stdout
