"""One error root: every exception optisync exports is an OptisyncError.

And each error raised on purpose still derives from the built-in exception a
caller would catch without knowing optisync (``except ValueError`` keeps working).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import pytest

import optisync
from optisync import (
    AlreadyOpenError,
    ArgumentTypeError,
    InvalidArgumentError,
    NotOpenError,
    OptisyncError,
    StateError,
    Store,
)
from optisync.server import SqliteStorage, StorageUnavailableError, require_token

# The modules whose exports are checked here. The client, the wire format and
# optisync.testing join the tree in their own branches: add them once merged.
MODULES = [
    "optisync",
    "optisync.errors",
    "optisync.store",
    "optisync.revisions",
    "optisync.command",
    "optisync.sync",
    "optisync.sync_with_push",
    "optisync.server",
    "optisync.server.server",
    "optisync.server.storage",
    "optisync.server.security",
    "optisync.server.postgres",
    "optisync.server.__main__",
    "optisync.client",
    "optisync.wire",
    "optisync.transport",
    "optisync.fields",
    "optisync.outbox",
    "optisync.persistence",
    "optisync.device",
    "optisync.testing",
    "optisync.threads",
]


def _exported_exceptions(module: ModuleType) -> list[type[BaseException]]:
    return [
        exported
        for name in module.__all__
        if isinstance(exported := getattr(module, name), type)
        and issubclass(exported, BaseException)
    ]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_exported_exception_derives_from_optisync_error(module_name: str) -> None:
    module = importlib.import_module(module_name)
    outside = [
        error.__name__
        for error in _exported_exceptions(module)
        if not issubclass(error, OptisyncError)
    ]
    assert outside == []


def test_the_walk_sees_the_whole_core_and_server_tree() -> None:
    seen = {
        error for name in MODULES for error in _exported_exceptions(importlib.import_module(name))
    }
    core = {getattr(optisync.errors, name) for name in optisync.errors.__all__}
    assert core | {StorageUnavailableError} <= seen


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (OptisyncError, Exception),
        (StateError, RuntimeError),
        (NotOpenError, RuntimeError),
        (AlreadyOpenError, RuntimeError),
        (InvalidArgumentError, ValueError),
        (ArgumentTypeError, TypeError),
        (StorageUnavailableError, ConnectionError),
    ],
)
def test_each_error_keeps_the_builtin_base_a_caller_catches(
    error: type[Exception], builtin: type[Exception]
) -> None:
    assert issubclass(error, OptisyncError)
    assert issubclass(error, builtin)


def test_already_open_is_a_state_error_exported_from_optisync() -> None:
    assert issubclass(AlreadyOpenError, StateError)
    assert "AlreadyOpenError" in optisync.__all__
    assert "AlreadyOpenError" in optisync.errors.__all__


# -- each converted raise site ------------------------------------------------------


async def test_a_sqlite_storage_used_before_open_raises_not_open() -> None:
    storage = SqliteStorage(":memory:")
    with pytest.raises(RuntimeError, match="not open: await open") as caught:
        await storage.read("k")
    assert isinstance(caught.value, NotOpenError)


async def test_a_sqlite_storage_opened_twice_raises_already_open(tmp_path: Path) -> None:
    async with SqliteStorage(tmp_path / "twice.sqlite3") as storage:
        with pytest.raises(RuntimeError, match="already open") as caught:
            await storage.open()
        assert isinstance(caught.value, AlreadyOpenError)


async def test_a_postgres_storage_used_before_open_raises_not_open() -> None:
    from optisync.server.postgres import PostgresStorage

    storage = PostgresStorage("dbname=never_opened")
    with pytest.raises(RuntimeError, match="not open: await open") as caught:
        await storage.read("k")
    assert isinstance(caught.value, NotOpenError)


def test_an_empty_token_raises_invalid_argument() -> None:
    with pytest.raises(ValueError, match="token must not be empty") as caught:
        require_token("")
    assert isinstance(caught.value, InvalidArgumentError)


def test_a_push_with_no_push_metadata_raises_argument_type_error() -> None:
    store = Store(0)
    with pytest.raises(TypeError, match="push_metadata must be a PushMetadata") as caught:
        store.server_push(
            key="k",
            push_metadata=(1, 1, 1),  # type: ignore[arg-type]
            apply_server_push_to_state=lambda state, key, revision: state,
            get_server_revision_from_state=lambda key: -1,
        )
    assert isinstance(caught.value, ArgumentTypeError)
    assert store.state == 0


async def test_a_postgres_storage_that_cannot_connect_raises_storage_unavailable() -> None:
    from optisync.server.postgres import PostgresStorage

    # Nothing listens on port 1; the pool gives up after wait_timeout.
    storage = PostgresStorage("host=127.0.0.1 port=1 dbname=none", wait_timeout=0.2)
    with pytest.raises(ConnectionError, match="PostgreSQL could not be reached") as caught:
        await storage.open()
    assert isinstance(caught.value, StorageUnavailableError)
    assert isinstance(caught.value, OptisyncError)
