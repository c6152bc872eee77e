"""The todo page (``examples/nicegui_todo.py``) in NiceGUI's user simulation, on the real server.

A user types and clicks on the page; another device (``phone``) on the same
``SyncServer`` sees it, and what the phone does shows on the page. The page's
subscription goes with its client, and the device with the app.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytest.importorskip("nicegui", reason="nicegui missing (the nicegui extra)")

from nicegui import App, ui

from examples.todo_app.todos import TodoStore, open_todos
from optisync import NotOpenError, Store
from optisync.device import Device, StorageInUseError
from optisync.ui.nicegui import open_with_app

if TYPE_CHECKING:
    from conftest import Web


def _listeners(store: TodoStore) -> int:
    """The store's listeners: of its states, and of its keys' sync status."""
    states = store._Store__listeners  # type: ignore[attr-defined]
    statuses = store._Store__engine.status_listeners  # type: ignore[attr-defined]
    return len(states) + len(statuses)


async def test_a_todo_typed_and_added_on_the_page_reaches_another_device(
    web: Web, phone: Device[TodoStore]
) -> None:
    await web.user.open("/")
    web.user.find(ui.input).type("Buy milk")
    web.user.find("Add").click()

    await web.user.should_see("Buy milk")  # shown at once, before the server answers
    await (await web.todos.opened()).caught_up()
    await web.user.should_not_see("saving...")
    await phone.caught_up()
    assert list(phone.store.state.titles.values()) == ["Buy milk"]
    assert web.user.find(ui.input).elements.pop().value == ""  # emptied for the next todo


async def test_a_todo_the_server_has_not_taken_yet_shows_saving(
    run_example: Callable[..., AbstractAsyncContextManager[Web]],
) -> None:
    with socket.socket() as closed:  # a port nobody listens on: the server is unreachable
        closed.bind(("127.0.0.1", 0))
        unreachable = f"ws://127.0.0.1:{closed.getsockname()[1]}"
    async with run_example("web.sqlite3", url=unreachable) as web:
        await web.user.open("/")
        web.user.find(ui.input).type("Buy milk")
        web.user.find("Add").click()
        await web.user.should_see("Buy milk")
        await web.user.should_see("saving...")  # kept in the outbox until the server is back


async def test_a_todo_added_on_another_device_shows_on_the_page(
    web: Web, phone: Device[TodoStore]
) -> None:
    await web.user.open("/")
    await web.user.should_see("Nothing to do.")

    phone.store.title.set("milk", "Buy milk")
    await phone.caught_up()
    await (await web.todos.opened()).caught_up()  # the push is in the page's store

    await web.user.should_see("Buy milk")
    await web.user.should_not_see("Nothing to do.")


async def test_ticking_a_todo_on_the_page_ticks_it_on_another_device(
    web: Web, phone: Device[TodoStore]
) -> None:
    await phone.store.title.set("milk", "Buy milk")
    device = await web.todos.opened()
    await device.caught_up()
    await web.user.open("/")

    web.user.find("Buy milk").click()
    await device.caught_up()
    await phone.caught_up()
    assert phone.store.state.done == {"milk": True}


async def test_closing_the_page_removes_its_subscription(web: Web) -> None:
    store = (await web.todos.opened()).store
    before = _listeners(store)
    client = await web.user.open("/")
    assert _listeners(store) == before + 2

    client.delete()  # what NiceGUI does once a closed tab has not come back
    assert _listeners(store) == before
    store.title.set("later", "After the page closed")  # no page left to rebuild, no error


async def test_a_page_closing_leaves_another_page_following_the_store(
    web: Web, phone: Device[TodoStore]
) -> None:
    device = await web.todos.opened()
    before = _listeners(device.store)
    first = await web.user.open("/")
    await web.user.open("/")  # a second tab: the user now looks at this one
    assert _listeners(device.store) == before + 4

    first.delete()
    assert _listeners(device.store) == before + 2
    phone.store.title.set("milk", "Buy milk")
    await phone.caught_up()
    await device.caught_up()
    await web.user.should_see("Buy milk")


async def test_the_value_is_not_there_before_the_app_starts() -> None:
    scoped = open_with_app(lambda: Store(0), nicegui=App())
    with pytest.raises(NotOpenError):
        await scoped.opened()
    with pytest.raises(NotOpenError):
        scoped.value  # noqa: B018 - the read is the test


async def test_the_device_closes_with_the_app(
    run_example: Callable[..., AbstractAsyncContextManager[Web]], server_url: str, tmp_path: Path
) -> None:
    async with run_example("web.sqlite3") as web:
        device = await web.todos.opened()
        await web.user.open("/")
        assert web.todos.is_open
    assert device.store.is_closed
    assert not web.todos.is_open
    # The storage file is free again: the device was closed, not dropped.
    async with open_todos(server_url, str(tmp_path / "web.sqlite3")) as again:
        assert again.store.state == device.store.state


async def test_a_device_that_cannot_open_fails_the_page_and_is_logged(
    run_example: Callable[..., AbstractAsyncContextManager[Web]],
    phone: Device[TodoStore],
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with run_example("phone.sqlite3") as web:  # the phone holds that file
        with pytest.raises(StorageInUseError):
            await web.todos.opened()
    assert any(isinstance(r.exc_info and r.exc_info[1], StorageInUseError) for r in caplog.records)


def test_importing_optisync_imports_no_nicegui() -> None:
    program = "import json, sys, optisync; print(json.dumps('nicegui' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) is False
