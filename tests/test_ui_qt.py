"""optisync.ui.qt in Qt itself: pytest-qt's qtbot taps the todo window of
examples/qt_todo.py, on qasync's loop, offscreen, against the library's server.

Each test runs one coroutine on a fresh ``qasync.QEventLoop``: Qt's event loop
is the asyncio loop, as in the app, so a tap's slot runs inside the loop and
a push from another device repaints the window in the same thread.
"""

from __future__ import annotations

import asyncio
import gc
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    import qasync  # type: ignore[import-untyped]
    import shiboken6
    from PySide6.QtCore import QObject, Qt
    from PySide6.QtGui import QImage
    from PySide6.QtWidgets import QApplication, QStyle, QStyleOptionViewItem
except ImportError as error:  # pragma: no cover - depends on the machine
    pytest.skip(
        f"Qt does not load ({error}): pip install 'optisync[qt]' pytest-qt, and on Debian "
        "Qt's system libraries: apt-get install libegl1 libgl1 libxkbcommon0 libfontconfig1 "
        "libdbus-1-3 libglib2.0-0 (.ci/run does)",
        allow_module_level=True,
    )

from pytestqt.qtbot import QtBot

from examples.qt_todo import TodoWindow, run_window
from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync import Store
from optisync.device import Device, open_device
from optisync.persistence import AttrsCodec
from optisync.server import SqliteStorage, SyncServer
from optisync.ui.qt import StoreSignals

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "img" / "qt-todo.png"
SCREENSHOT_SIZE = (360, 220)
CODEC = AttrsCodec(Todos)
TIMEOUT = 20.0  # a bound on a hung test, never a measure
T = TypeVar("T")

# The offscreen platform says so whenever a window shows; it is not about our code.
pytestmark = [
    pytest.mark.qt_log_level_fail("WARNING"),
    pytest.mark.qt_log_ignore("This plugin does not support propagateSizeHints"),
]


class RecordingStore(TodoStore):
    """A TodoStore that keeps the errors it is told about (a listener that raised)."""

    def __init__(self, state: Todos, **kwargs: Any) -> None:
        super().__init__(state, **kwargs)
        self.errors: list[BaseException] = []

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)


@pytest.fixture
def run(qapp: QApplication) -> Iterator[Callable[[Coroutine[Any, Any, T]], T]]:
    """Run a coroutine to its end on a fresh qasync loop; the loop is closed after the test."""
    qapp.setQuitOnLastWindowClosed(False)  # a closed window must not stop the loop under a test
    loops = [qasync.QEventLoop(qapp)]

    def run_one(main: Coroutine[Any, Any, T]) -> T:
        result: T = loops[0].run_until_complete(asyncio.wait_for(main, TIMEOUT))
        return result

    yield run_one
    left = [task for task in asyncio.all_tasks(loops[0]) if not task.done()]
    loops.pop().close()
    # The loop's QObjects (its timer) must die in this thread, not in whichever thread
    # next runs the garbage collector: Qt warns when timers are stopped from another.
    gc.collect()
    assert left == [], f"tasks left behind: {left}"


async def shows(signals: StoreSignals[Todos], done: Callable[[Todos], bool]) -> None:
    """Return once the adapter has emitted (or already shows) a state where ``done`` holds."""
    if done(signals.state):
        return
    reached = asyncio.get_running_loop().create_future()

    def check(state: Todos) -> None:
        if done(state) and not reached.done():
            reached.set_result(None)

    signals.state_changed.connect(check)
    try:
        await reached
    finally:
        signals.state_changed.disconnect(check)


async def destroyed(obj: QObject) -> None:
    """Return once Qt has destroyed ``obj`` (a deleteLater or a close with WA_DeleteOnClose)."""
    gone = asyncio.get_running_loop().create_future()
    obj.destroyed.connect(lambda: gone.done() or gone.set_result(None))
    await gone


def listing(window: TodoWindow) -> list[tuple[str, bool]]:
    """What the window shows: each row's text and whether its box is ticked."""
    rows = (window.items.item(i) for i in range(window.items.count()))
    return [(row.text(), row.checkState() == Qt.CheckState.Checked) for row in rows]


def type_new_todo(qtbot: QtBot, window: TodoWindow, title: str) -> None:
    qtbot.keyClicks(window.title, title)
    qtbot.keyClick(window.title, Qt.Key.Key_Return)


def click_box(qtbot: QtBot, window: TodoWindow, title: str) -> None:
    """A mouse click on the checkbox of the row titled ``title``, where the style draws it."""
    row = next(r for r in window.rows.values() if r.text() == title)
    option = QStyleOptionViewItem()
    window.items.initViewItemOption(option)
    option.rect = window.items.visualItemRect(row)
    option.features |= QStyleOptionViewItem.ViewItemFeature.HasCheckIndicator
    box = window.items.style().subElementRect(
        QStyle.SubElement.SE_ItemViewItemCheckIndicator, option, window.items
    )
    qtbot.mouseClick(window.items.viewport(), Qt.MouseButton.LeftButton, pos=box.center())


def test_taps_show_at_once_a_push_repaints_and_the_closed_window_leaves_no_subscription(
    qtbot: QtBot, run: Callable[[Coroutine[Any, Any, None]], None], tmp_path: Path
) -> None:
    async def main() -> None:
        async with SyncServer(SqliteStorage(tmp_path / "server.sqlite3")).run(port=0) as url:
            phone_device = open_device(RecordingStore, url, tmp_path / "phone.db", CODEC, Todos())
            async with (
                phone_device as device,
                open_todos(url, str(tmp_path / "laptop.db")) as other,
            ):
                phone, laptop = device.store, other.store
                listeners = dict(phone._Store__listeners)  # type: ignore[attr-defined]
                window = TodoWindow(phone)
                window.show()
                type_new_todo(qtbot, window, "Buy milk")
                assert listing(window) == [("Buy milk", False)]  # optimistic: before any reply
                click_box(qtbot, window, "Buy milk")
                assert listing(window) == [("Buy milk", True)]
                assert window.title.text() == ""

                await device.caught_up()
                await other.caught_up()
                assert laptop.state == phone.state  # the taps reached the other device
                (item,) = laptop.state.titles
                await laptop.title.set("eggs", "Get eggs")  # the laptop's taps, pushed
                await laptop.done.set(item, False)
                await shows(window.signals, lambda todos: "eggs" in todos.titles)
                await shows(window.signals, lambda todos: not todos.done[item])
                assert listing(window) == [("Buy milk", False), ("Get eggs", False)]

                signals = window.signals
                window.deleteLater()  # the window closes; the store stays open
                await destroyed(signals)
                assert not shiboken6.isValid(signals)
                assert phone._Store__listeners == listeners  # type: ignore[attr-defined]
                await laptop.title.set("tea", "Make tea")  # a push to a store with no window
                await device.caught_up()
                assert "tea" in phone.state.titles
                assert phone.errors == []  # no listener ran into a deleted object

    run(main())


def test_an_action_that_fails_is_shown_by_the_failed_signal(
    qtbot: QtBot, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    async def main() -> None:
        async with RecordingStore(Todos()) as store:
            window = TodoWindow(store)
            qtbot.addWidget(window)
            failed = asyncio.get_running_loop().create_future()
            window.signals.failed.connect(lambda error: failed.done() or failed.set_result(error))

            async def save() -> None:
                raise ConnectionError("the server is down")

            window.signals.run(save())
            assert isinstance(await failed, ConnectionError)
            assert window.error.text() == "not saved: the server is down"
            assert store.errors == []  # a slot listened: not the store's on_error

    run(main())


def test_closing_the_adapter_cancels_its_tasks_and_stops_emitting(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def main() -> None:
        store: Store[int] = Store(0)
        parent = QObject()
        signals = StoreSignals(store, parent=parent)
        seen: list[int] = []
        signals.state_changed.connect(seen.append)
        never = asyncio.Event()
        task = signals.run(never.wait())
        store.emit(1)
        shiboken6.delete(parent)  # what Qt does to a destroyed widget's children
        store.emit(2)
        await asyncio.wait([task])
        assert task.cancelled()
        assert seen == [1]
        assert store._Store__listeners == {}  # type: ignore[attr-defined]
        await store.close()

    run(main())


def test_the_window_screenshot_is_a_full_image(qtbot: QtBot) -> None:
    """The docs' picture. OPTISYNC_UPDATE_SCREENSHOTS=1 rewrites docs/img/qt-todo.png."""
    todos = Todos(
        titles={"a": "Buy milk", "b": "Write the docs", "c": "Call the plumber"},
        done={"a": True},
    )
    window = TodoWindow(TodoStore(todos, device_id=1))
    qtbot.addWidget(window)
    window.resize(*SCREENSHOT_SIZE)
    window.show()
    image = window.grab().toImage()
    assert not image.isNull()
    assert (image.width(), image.height()) == SCREENSHOT_SIZE
    assert len({image.pixel(x, y) for x in range(0, 360, 4) for y in range(0, 220, 4)}) > 2
    if os.environ.get("OPTISYNC_UPDATE_SCREENSHOTS") == "1":
        assert image.save(str(SCREENSHOT))
    committed = QImage(str(SCREENSHOT))
    assert (committed.width(), committed.height()) == SCREENSHOT_SIZE


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[str]:
    """``python -m optisync.server`` on 127.0.0.1; yields its URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "optisync.server",
            "--database",
            str(tmp_path / "server.db"),
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()  # printed once it listens
        assert url == f"ws://127.0.0.1:{port}", f"the server did not start: {url!r}"
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()


def test_the_example_window_and_a_second_device_converge_on_the_server_process(
    qtbot: QtBot,
    run: Callable[[Coroutine[Any, Any, None]], None],
    server_process: str,
    tmp_path: Path,
) -> None:
    async def main() -> None:
        opened = asyncio.get_running_loop().create_future()

        def shown(window: TodoWindow, device: Device[TodoStore]) -> None:
            opened.set_result((window, device))

        example = asyncio.ensure_future(
            run_window(server_process, str(tmp_path / "phone.db"), shown)
        )
        window, phone = await opened
        async with open_todos(server_process, str(tmp_path / "laptop.db")) as laptop:
            type_new_todo(qtbot, window, "Buy milk")
            type_new_todo(qtbot, window, "Write docs")
            click_box(qtbot, window, "Write docs")
            await laptop.store.title.set("tea", "Make tea")
            await laptop.store.done.set("tea", True)
            await phone.caught_up()
            await laptop.caught_up()
            assert laptop.store.state == phone.store.state
            await shows(window.signals, lambda todos: "tea" in todos.titles)
            assert listing(window) == [
                ("Buy milk", False),
                ("Make tea", True),
                ("Write docs", True),
            ]
            window.close()  # WA_DeleteOnClose: the example's run_window returns, its device closes
            await example

    run(main())


def test_importing_optisync_and_its_ui_package_loads_no_qt() -> None:
    program = (
        "import sys, optisync, optisync.ui\n"
        "print(sorted(m for m in sys.modules if m.startswith(('PySide6', 'shiboken6', 'qasync'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"
