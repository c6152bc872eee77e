"""A todo list (a title and a done flag per item), synced between devices by the server.

This file is all the app's sync code: a declared store and one call that opens
a device (saved to a file, offline-safe, connected to ``python -m optisync.server``).
"""

from contextlib import AbstractAsyncContextManager

import attrs

from optisync import Store
from optisync.device import Device, open_device
from optisync.fields import SyncedMapWithPush
from optisync.persistence import AttrsCodec


@attrs.frozen
class Todos:
    titles: dict[str, str] = attrs.field(factory=dict)
    done: dict[str, bool] = attrs.field(factory=dict)


class TodoStore(Store[Todos]):
    title = SyncedMapWithPush[Todos, str, str](
        lambda todos, item: todos.titles.get(item, ""),
        lambda todos, item, title: attrs.evolve(todos, titles={**todos.titles, item: title}),
    )
    done = SyncedMapWithPush[Todos, str, bool](
        lambda todos, item: todos.done.get(item, False),
        lambda todos, item, done: attrs.evolve(todos, done={**todos.done, item: done}),
    )


def open_todos(url: str, path: str) -> AbstractAsyncContextManager[Device[TodoStore]]:
    return open_device(TodoStore, url, path, AttrsCodec(Todos), Todos())
