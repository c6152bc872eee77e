"""Fixtures for the NiceGUI adapter: the todo example in NiceGUI's user simulation.

NiceGUI's pytest plugin (``nicegui.testing.user_plugin``) is not loaded: it
registers its fixtures and a ``main_file`` ini option for the whole suite.
Its ``user`` fixture is a thin wrapper around ``nicegui.testing.user_simulation``,
which these fixtures call directly, for this folder only.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import attrs
import pytest

pytest.importorskip("nicegui", reason="nicegui missing (the nicegui extra)")

from nicegui.testing import User, user_simulation

import optisync.ui.nicegui
from examples.todo_app.todos import TodoStore, open_todos
from optisync.device import Device
from optisync.server import SqliteStorage, SyncServer
from optisync.ui.nicegui import AppScoped

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nicegui_todo.py"


@attrs.frozen
class Web:
    """The example app in NiceGUI's simulation: a browser-less user and the app's device."""

    user: User
    todos: AppScoped[Device[TodoStore]]


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    async with SyncServer(SqliteStorage(":memory:")).run(port=0) as url:
        yield url


@pytest.fixture
async def phone(server_url: str, tmp_path: Path) -> AsyncIterator[Device[TodoStore]]:
    """Another device of the same user, on the same server."""
    async with open_todos(server_url, str(tmp_path / "phone.sqlite3")) as device:
        await device.client.wait_online()
        yield device


@pytest.fixture
def run_example(
    server_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., AbstractAsyncContextManager[Web]]:
    """``run(storage, url=server_url)``: ``examples/nicegui_todo.py`` as NiceGUI's "main file"."""
    opened: list[AppScoped[Any]] = []
    real = optisync.ui.nicegui.open_with_app

    def recording(*args: Any, **kwargs: Any) -> AppScoped[Any]:
        scoped = real(*args, **kwargs)
        opened.append(scoped)
        return scoped

    # The example imports open_with_app when it runs: the test gets hold of the app's device.
    monkeypatch.setattr(optisync.ui.nicegui, "open_with_app", recording)

    @contextlib.asynccontextmanager
    async def run(storage: str, url: str = server_url) -> AsyncIterator[Web]:
        argv = [str(EXAMPLE), "--url", url, "--storage", str(tmp_path / storage)]
        monkeypatch.setattr(sys, "argv", argv)
        async with user_simulation(main_file=EXAMPLE) as user:
            yield Web(user, opened[-1])

    return run


@pytest.fixture
async def web(
    run_example: Callable[..., AbstractAsyncContextManager[Web]],
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[Web]:
    """The example on the test's server; as in NiceGUI's ``user`` fixture, nothing may be logged.

    (NiceGUI's fixture fails on an ERROR; this one on a WARNING too.)
    """
    async with run_example("web.sqlite3") as web:
        yield web
    # The test's records, and the shutdown's (this teardown's, so far).
    records = [*caplog.get_records("call"), *caplog.records]
    assert [r for r in records if r.levelno >= logging.WARNING] == []
