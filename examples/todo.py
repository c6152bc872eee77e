"""The seed's todo list: TodoStore with reload-on-error and pushes.

Run it with ``python -m examples.todo``. It shows three things:

1. completing a todo syncs it (one request, the server's revision recorded);
2. a failed request makes ``on_finish`` reload the todo from the server, so
   the screen shows the truth again instead of the optimistic guess;
3. a push from another device is applied; a replay of it is ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

import attrs

from optisync import PushMetadata, PushOutcome, Store


@attrs.frozen
class Todo:
    title: str
    complete: bool = False


@attrs.frozen
class TodoState:
    todos: dict[str, Todo] = attrs.field(factory=dict)
    revisions: dict[Hashable, int] = attrs.field(factory=dict)

    def set_complete(self, todo_id: str, complete: bool) -> TodoState:
        todo = attrs.evolve(self.todos[todo_id], complete=complete)
        return attrs.evolve(self, todos={**self.todos, todo_id: todo})

    def replace(self, todo_id: str, todo: Todo) -> TodoState:
        return attrs.evolve(self, todos={**self.todos, todo_id: todo})

    def with_revision(self, key: Hashable, revision: int) -> TodoState:
        return attrs.evolve(self, revisions={**self.revisions, key: revision})


@attrs.frozen
class TodoPush:
    todo_id: str
    complete: bool
    server_revision: int
    local_revision: int
    device_id: int


class TodoApi:
    """An in-process server: last write wins, one revision counter."""

    def __init__(self, todos: dict[str, Todo]) -> None:
        self.todos = dict(todos)
        self.revision = 0
        self.fail_next = False
        self.requests = 0

    async def set_complete(
        self, todo_id: str, complete: bool, local_revision: int, device_id: int
    ) -> tuple[bool, int]:
        self.requests += 1
        await asyncio.sleep(0)  # a network hop
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("the server is unreachable")
        self.revision += 1
        self.todos[todo_id] = attrs.evolve(self.todos[todo_id], complete=complete)
        return complete, self.revision

    def write_from_other_device(self, todo_id: str, complete: bool) -> TodoPush:
        self.revision += 1
        self.todos[todo_id] = attrs.evolve(self.todos[todo_id], complete=complete)
        return TodoPush(todo_id, complete, self.revision, local_revision=1, device_id=99)

    async def get_todo(self, todo_id: str) -> Todo:
        await asyncio.sleep(0)
        return self.todos[todo_id]


class TodoStore(Store[TodoState]):
    """The seed's TodoCubit."""

    def __init__(self, api: TodoApi, initial: TodoState) -> None:
        super().__init__(initial)
        self.api = api

    def toggle_complete(self, todo_id: str) -> Awaitable[None]:
        async def send(
            complete: bool, local_revision: int, device_id: int, inform: Callable[[int], None]
        ) -> bool:
            value, revision = await self.api.set_complete(
                todo_id, complete, local_revision, device_id
            )
            inform(revision)
            return value

        async def reload_on_error(error: BaseException | None) -> TodoState | None:
            if error is None:
                return None
            # Reload unconditionally: the optimistic value may be wrong now.
            todo = await self.api.get_todo(todo_id)
            return self.state.replace(todo_id, todo)

        return self.optimistic_sync_with_push(
            key=("toggle_complete", todo_id),
            value_to_apply=lambda: not self.state.todos[todo_id].complete,
            apply_optimistic_value_to_state=lambda state, c: state.set_complete(todo_id, c),
            get_value_from_state=lambda state: state.todos[todo_id].complete,
            get_server_revision_from_state=lambda key: self.state.revisions.get(key, -1),
            send_value_to_server=send,
            apply_server_response_to_state=lambda state, c: state.set_complete(todo_id, c),
            on_finish=reload_on_error,
        )

    def handle_todo_push(self, push: TodoPush) -> PushOutcome:
        return self.server_push(
            key=("toggle_complete", push.todo_id),
            push_metadata=PushMetadata(
                server_revision=push.server_revision,
                local_revision=push.local_revision,
                device_id=push.device_id,
            ),
            get_server_revision_from_state=lambda key: self.state.revisions.get(key, -1),
            apply_server_push_to_state=lambda state, key, revision: state.set_complete(
                push.todo_id, push.complete
            ).with_revision(key, revision),
        )


def show(store: TodoStore) -> str:
    return ", ".join(
        f"{todo.title}: {'done' if todo.complete else 'open'}"
        for todo in store.state.todos.values()
    )


async def main(say: Callable[[str], None] = print) -> TodoStore:
    todos = {"milk": Todo("Buy milk"), "docs": Todo("Write docs")}
    api = TodoApi(todos)
    async with TodoStore(api, TodoState(todos=todos)) as store:
        say(f"start:            {show(store)}")

        done = store.toggle_complete("milk")
        say(f"tap milk:         {show(store)}  (shown at once)")
        await done
        say(f"synced:           {show(store)}  (server revision {api.revision})")

        api.fail_next = True
        failed = store.toggle_complete("docs")
        say(f"tap docs:         {show(store)}  (shown at once)")
        try:
            await failed
        except ConnectionError as error:
            say(f"request failed:   {error}; on_finish reloaded the todo")
        say(f"after reload:     {show(store)}")

        push = api.write_from_other_device("milk", False)
        outcome = store.handle_todo_push(push)
        say(f"push from phone:  {show(store)}  ({outcome.value})")
        replay = store.handle_todo_push(push)
        say(f"same push again:  {show(store)}  ({replay.value})")
        say(f"server requests:  {api.requests}")
    return store


if __name__ == "__main__":
    asyncio.run(main())
