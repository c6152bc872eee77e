"""Issue 18, item 7: memory is given back after a burst of closes, not after each close.

The figure (RSS within 1.5x of idle after 2,000 connections closed) is
asserted on a real server process by the slow
``tests/server/test_adversarial.py::test_memory_returns_near_idle_after_2000_connections_close``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator

import pytest

from optisync.server import _memory
from optisync.server._memory import MemoryReleaser, use_system_malloc


class _Released(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.done = asyncio.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if record.getMessage().startswith("gave memory back"):
            self.done.set()


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Released]:
    monkeypatch.setattr(_memory, "_SETTLE", 0.0)
    handler = _Released()
    logger = logging.getLogger("optisync.server")
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    yield handler
    logger.setLevel(previous)
    logger.removeHandler(handler)


async def test_a_burst_of_closes_gives_memory_back_once(released: _Released) -> None:
    releaser = MemoryReleaser()
    for _ in range(1_000):
        releaser.opened()
    for _ in range(1_000):
        releaser.closed()
    await released.done.wait()
    assert releaser.releases == 1
    assert released.lines[0] == "giving memory back: 0 connections open of a peak of 1000"


async def test_a_few_closes_give_nothing_back(released: _Released) -> None:
    releaser = MemoryReleaser()
    for count in (200, 1_000):  # 200 closes: fewer than 256, too little to be worth a trim
        for _ in range(count):
            releaser.opened()
        for _ in range(count):
            releaser.closed()
    await released.done.wait()
    # Had the 200 closes scheduled a release, it would have run first.
    assert releaser.releases == 1
    assert released.lines[0] == "giving memory back: 0 connections open of a peak of 1000"


def test_a_pythonmalloc_already_set_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONMALLOC", "pymalloc")

    def no_exec(*arguments: object) -> None:
        raise AssertionError("restarted although PYTHONMALLOC was set")

    monkeypatch.setattr(os, "execve", no_exec)
    use_system_malloc(["-m", "optisync.server"])  # returns: nothing to change
