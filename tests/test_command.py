"""optimistic_command: shown at once, rolled back unless the state moved on, one per key."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest
from fakes import own_tasks

from optisync import (
    CommandInProgressError,
    RequestCancelledError,
    Store,
    StoreClosedError,
)

Todos = tuple[str, ...]


class TodoStore(Store[Todos]):
    """A todo list whose add() is an optimistic command; each send waits for the test."""

    def __init__(self) -> None:
        super().__init__(())
        self.replies: list[asyncio.Future[Any]] = []
        self.sent: list[Todos] = []
        self.errors: list[BaseException] = []
        self.finished: list[BaseException | None] = []
        self.sent_event = asyncio.Event()

    def on_error(self, error: BaseException) -> None:
        self.errors.append(error)

    async def send(self, todos: Todos) -> Any:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.replies.append(reply)
        self.sent.append(todos)
        self.sent_event.set()
        return await reply

    async def sent_request(self) -> asyncio.Future[Any]:
        await self.sent_event.wait()
        self.sent_event.clear()
        return self.replies[-1]

    def add(self, title: str, **overrides: Any) -> Awaitable[None]:
        arguments: dict[str, Any] = {
            "key": "add",
            "value_to_apply": lambda: (*self.state, title),
            "apply_optimistic_value_to_state": lambda s, todos: todos,
            "get_value_from_state": lambda s: s,
            "send_command_to_server": self.send,
            "on_finish": self.finished.append,
        }
        arguments.update(overrides)
        return self.optimistic_command(**arguments)


@pytest.fixture
async def todos() -> Any:
    async with TodoStore() as store:
        yield store


async def test_the_command_shows_at_once_and_applies_the_response(todos: TodoStore) -> None:
    done = todos.add("milk", apply_server_response_to_state=lambda s, r: (*s[:-1], r))
    assert todos.state == ("milk",)
    assert todos.is_syncing("add")
    (await todos.sent_request()).set_result("milk #1")
    await done
    assert todos.sent == [("milk",)]
    assert todos.state == ("milk #1",)
    assert todos.finished == [None]
    assert not todos.is_syncing("add")


async def test_a_failed_command_is_rolled_back_and_its_error_reaches_everyone(
    todos: TodoStore,
) -> None:
    todos.emit(("bread",))
    done = todos.add("milk")
    (await todos.sent_request()).set_exception(ConnectionError("offline"))
    with pytest.raises(ConnectionError, match="offline"):
        await done
    assert todos.state == ("bread",)
    assert isinstance(todos.finished[0], ConnectionError)
    assert not todos.is_syncing("add")


async def test_no_rollback_when_the_state_moved_on_during_the_command(todos: TodoStore) -> None:
    done = todos.add("milk")
    request = await todos.sent_request()
    todos.emit(("milk", "eggs"))  # another action changed the list meanwhile
    request.set_exception(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert todos.state == ("milk", "eggs")


async def test_a_second_command_on_the_key_is_refused_and_changes_nothing(
    todos: TodoStore,
) -> None:
    done = todos.add("milk")
    with pytest.raises(CommandInProgressError, match="'add' is busy"):
        todos.add("eggs")
    assert todos.state == ("milk",)
    assert todos.local_revision("add") == 1
    (await todos.sent_request()).set_result(None)
    await done
    again = todos.add("eggs")  # the key is free again
    (await todos.sent_request()).set_result(None)
    await again
    assert todos.state == ("milk", "eggs")


async def test_a_listener_tapping_the_key_during_the_commands_emit_is_refused(
    todos: TodoStore,
) -> None:
    refused: list[BaseException] = []

    def double_tap(state: Todos) -> None:
        if state == ("milk",):
            try:
                todos.add("milk")
            except CommandInProgressError as error:
                refused.append(error)

    todos.subscribe(double_tap)
    done = todos.add("milk")
    assert len(refused) == 1
    (await todos.sent_request()).set_result(None)
    await done
    assert todos.sent == [("milk",)]


async def test_a_sync_on_a_key_a_command_holds_is_refused(todos: TodoStore) -> None:
    done = todos.add("milk")

    async def send(value: Todos) -> None:
        raise AssertionError("never sent")

    with pytest.raises(CommandInProgressError):
        todos.optimistic_sync(
            key="add",
            value_to_apply=lambda: (),
            apply_optimistic_value_to_state=lambda s, v: v,
            get_value_from_state=lambda s: s,
            send_value_to_server=send,
        )
    assert todos.state == ("milk",)
    (await todos.sent_request()).set_result(None)
    await done


async def test_a_command_on_a_key_a_sync_holds_is_refused(todos: TodoStore) -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def send(value: Todos) -> None:
        await gate

    syncing = todos.optimistic_sync(
        key="add",
        value_to_apply=lambda: ("synced",),
        apply_optimistic_value_to_state=lambda s, v: v,
        get_value_from_state=lambda s: s,
        send_value_to_server=send,
    )
    with pytest.raises(CommandInProgressError):
        todos.add("milk")
    gate.set_result(None)
    await syncing
    assert todos.state == ("synced",)


async def test_a_reload_after_failure_is_applied(todos: TodoStore) -> None:
    async def reload() -> Todos:
        return ("from the server",)

    done = todos.add("milk", reload_from_server=reload)
    (await todos.sent_request()).set_exception(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert todos.state == ("from the server",)


async def test_a_reload_is_not_applied_over_a_change_made_while_it_loaded(
    todos: TodoStore,
) -> None:
    loading = asyncio.Event()
    release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def reload() -> Todos:
        loading.set()
        await release
        return ("stale",)

    done = todos.add("milk", reload_from_server=reload)
    (await todos.sent_request()).set_exception(ConnectionError("offline"))
    await loading.wait()
    todos.emit(("typed meanwhile",))
    release.set_result(None)
    with pytest.raises(ConnectionError):
        await done
    assert todos.state == ("typed meanwhile",)


async def test_a_failing_reload_never_hides_the_commands_error(todos: TodoStore) -> None:
    async def reload() -> Todos:
        raise LookupError("reload failed")

    done = todos.add("milk", reload_from_server=reload)
    (await todos.sent_request()).set_exception(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert [type(error) for error in todos.errors] == [LookupError]
    assert todos.state == ()


async def test_a_custom_rollback_state_decides_the_rollback(todos: TodoStore) -> None:
    seen: list[tuple[Any, ...]] = []

    def mark_failed(state: Todos, before: Todos, applied: Todos, error: Exception) -> Todos:
        seen.append((before, applied, type(error)))
        return (*before, "milk (not saved)")

    done = todos.add("milk", rollback_state=mark_failed)
    (await todos.sent_request()).set_exception(ConnectionError("offline"))
    with pytest.raises(ConnectionError):
        await done
    assert seen == [((), ("milk",), ConnectionError)]
    assert todos.state == ("milk (not saved)",)


async def test_a_send_raising_cancelled_error_by_itself_is_a_failure_and_rolls_back(
    todos: TodoStore,
) -> None:
    async def send(todos_value: Todos) -> None:
        raise asyncio.CancelledError  # from inside a client, nobody cancelled the command

    with pytest.raises(RequestCancelledError):
        await todos.add("milk", send_command_to_server=send)
    assert todos.state == ()
    assert isinstance(todos.finished[0], RequestCancelledError)


async def test_close_during_a_command_cancels_it_without_rollback_or_task_left() -> None:
    store = TodoStore()
    done = store.add("milk")
    await store.sent_request()
    await store.close()
    with pytest.raises(StoreClosedError):
        await done
    assert store.state == ("milk",)
    assert store.finished == []  # on_finish is not called for a cycle close() cancels
    assert not store.is_syncing("add")
    assert own_tasks() == set()


async def test_a_state_on_finish_returns_is_emitted(todos: TodoStore) -> None:
    done = todos.add("milk", on_finish=lambda error: ("reloaded",))
    (await todos.sent_request()).set_result(None)
    await done
    assert todos.state == ("reloaded",)


async def test_bad_arguments_fail_the_call_before_anything_changes(todos: TodoStore) -> None:
    with pytest.raises(TypeError, match="send_command_to_server must be callable"):
        todos.add("milk", send_command_to_server=None)
    with pytest.raises(TypeError, match="key must be hashable"):
        todos.add("milk", key=[])
    assert todos.state == ()
    assert not todos.is_syncing("add")
