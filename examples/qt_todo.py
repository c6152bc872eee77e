"""``python -m examples.qt_todo --url ws://127.0.0.1:8765 --storage phone.sqlite3``: the todo in Qt.

The todo of docs/first-app.md (``examples.todo_app.todos``: a declared store,
one device on ``python -m optisync.server``) in a window: a list with a
checkbox per item and a field to add one. Start the server first, then a
window per device, each with its own storage file. Needs the ``qt`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Callable

import qasync  # type: ignore[import-untyped]
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from examples.todo_app.todos import Todos, TodoStore, open_todos
from optisync import OptisyncError
from optisync.device import Device
from optisync.ui.qt import StoreSignals

ITEM_ID = Qt.ItemDataRole.UserRole


class TodoWindow(QWidget):
    """The list (a checkbox per item) and the add field, on a store's state."""

    def __init__(self, store: TodoStore, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Todos on device {store.device_id}")
        self.store = store
        self.items = QListWidget()
        self.title = QLineEdit(placeholderText="What needs doing?")
        self.add_button = QPushButton("Add")
        self.error = QLabel()
        self.rows: dict[str, QListWidgetItem] = {}
        add_row = QHBoxLayout()
        add_row.addWidget(self.title)
        add_row.addWidget(self.add_button)
        layout = QVBoxLayout(self)
        layout.addLayout(add_row)
        layout.addWidget(self.items)
        layout.addWidget(self.error)
        # The glue: repaint on each state, report failed actions; gone with the window.
        self.signals = StoreSignals(store, parent=self)
        self.signals.failed.connect(self.show_error)
        self.signals.bind(self.show_todos)
        self.items.itemChanged.connect(self.tick)
        self.title.returnPressed.connect(self.add)
        self.add_button.clicked.connect(self.add)

    def add(self) -> None:
        title = self.title.text().strip()
        if title:
            self.title.clear()
            self.signals.run(self.store.title.set(uuid.uuid4().hex[:8], title))

    def tick(self, row: QListWidgetItem) -> None:
        done = row.checkState() == Qt.CheckState.Checked
        self.signals.run(self.store.done.set(row.data(ITEM_ID), done))

    def show_error(self, error: Exception) -> None:
        self.error.setText(f"not saved: {error}")

    def show_todos(self, todos: Todos) -> None:
        """Update the rows in place (a row being ticked must not be deleted under Qt)."""
        items = sorted(todos.titles, key=lambda item: (todos.titles[item], item))
        self.items.blockSignals(True)  # our own changes are not taps
        try:
            for gone in self.rows.keys() - set(items):
                self.items.takeItem(self.items.row(self.rows.pop(gone)))
            for index, item in enumerate(items):
                row = self._row(item, index)
                row.setText(todos.titles[item])
                checked = todos.done.get(item, False)
                row.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        finally:
            self.items.blockSignals(False)

    def _row(self, item: str, index: int) -> QListWidgetItem:
        row = self.rows.get(item)
        if row is None:
            row = self.rows[item] = QListWidgetItem()
            row.setFlags(row.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            row.setData(ITEM_ID, item)
            self.items.insertItem(index, row)
        elif self.items.row(row) != index:
            self.items.insertItem(index, self.items.takeItem(self.items.row(row)))
        return row


async def run_window(
    url: str, storage: str, shown: Callable[[TodoWindow, Device[TodoStore]], object] | None = None
) -> None:
    """Open the device, show its window, and return once the window is closed.

    ``shown(window, device)`` is called once the window shows (a test drives it from there).
    """
    app = QApplication.instance()
    assert isinstance(app, QApplication)
    app.setQuitOnLastWindowClosed(False)  # this returns instead, and then the device closes
    async with open_todos(url, storage) as device:
        window = TodoWindow(device.store)
        window.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        closed = asyncio.Event()
        window.destroyed.connect(lambda: closed.set())
        window.resize(360, 320)
        window.show()
        if shown is not None:
            shown(window, device)
        await closed.wait()


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and run the window on qasync's loop until it is closed."""
    parser = argparse.ArgumentParser(prog="python -m examples.qt_todo", description=__doc__)
    parser.add_argument("--url", default="ws://127.0.0.1:8765", help="the server's URL")
    parser.add_argument("--storage", default="todos.sqlite3", help="this device's state file")
    args = parser.parse_args(argv)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    assert isinstance(app, QApplication)
    try:
        qasync.run(run_window(args.url, args.storage))
    except OptisyncError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
