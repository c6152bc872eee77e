"""Declared synced fields: what they derive from get, set and a sender."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from test_docs import _attribute_docstring, _examples, _has_example, _public_methods

from optisync import PushMetadata, PushOutcome, StateError, Store
from optisync.fields import (
    Ack,
    SyncedMap,
    SyncedMapWithPush,
    SyncedValue,
    SyncedValueWithPush,
    SyncRequest,
    declared_fields,
)

ROOT = Path(__file__).resolve().parent.parent
OTHER = 99


@attrs.frozen
class Likes:
    liked: dict[str, bool] = attrs.field(factory=dict)

    def set_liked(self, item: str, liked: bool) -> Likes:
        return attrs.evolve(self, liked={**self.liked, item: liked})


class GatedServer:
    """Commits each write at once and answers when the test opens the gate."""

    def __init__(self) -> None:
        self.revision = 0
        self.writes: list[tuple[str, bool, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_with: Exception | None = None
        self.answer_with_value: bool | None = None

    async def write(self, item: str, liked: bool, request: SyncRequest) -> int | Ack[bool]:
        await self.gate.wait()
        if self.fail_with is not None:
            raise self.fail_with
        self.revision += 1
        self.writes.append((item, liked, request.local_revision))
        if self.answer_with_value is not None:
            return Ack(self.revision, self.answer_with_value)
        return self.revision


class ItemStore(Store[Likes]):
    liked = SyncedMapWithPush[Likes, str, bool](
        lambda state, item: state.liked.get(item, False),
        lambda state, item, liked: state.set_liked(item, liked),
    )

    def __init__(self, server: GatedServer) -> None:
        super().__init__(Likes(), device_id=1)
        self.server = server

    @liked.sender
    async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int | Ack[bool]:
        return await self.server.write(item, liked, request)

    @liked.reloader
    async def fetch_liked(self, item: str) -> bool:
        return False


def other_device(revision: int) -> PushMetadata:
    return PushMetadata(server_revision=revision, local_revision=1, device_id=OTHER)


async def test_set_shows_the_value_at_once_and_records_the_servers_revision() -> None:
    server = GatedServer()
    async with ItemStore(server) as store:
        done = store.liked.set("post", True)
        assert store.liked["post"] is True
        assert store.liked.is_pending("post")
        await done
        assert not store.liked.is_pending("post")
        assert store.liked.server_revision("post") == 1
        assert store.server_revision(store.liked.key("post")) == 1


async def test_taps_during_a_request_are_coalesced_into_one_follow_up() -> None:
    server = GatedServer()
    server.gate.clear()
    async with ItemStore(server) as store:
        first = store.liked.set("post", True)
        store.liked.set("post", False)
        store.liked.set("post", True)
        server.gate.set()
        await first
        assert server.writes == [("post", True, 1), ("post", True, 3)]
        assert store.liked.server_revision("post") == 2


async def test_a_push_is_applied_and_its_revision_kept_by_the_field() -> None:
    async with ItemStore(GatedServer()) as store:
        assert store.liked.push("post", True, other_device(5)) is PushOutcome.APPLIED
        assert store.state.liked == {"post": True}
        assert store.liked.server_revision("post") == 5
        assert store.liked.push("post", False, other_device(4)) is PushOutcome.STALE
        assert store.state.liked == {"post": True}


async def test_a_self_echo_is_not_applied_but_its_revision_is_learnt() -> None:
    server = GatedServer()
    server.gate.clear()
    async with ItemStore(server) as store:
        first = store.liked.set("post", True)
        store.liked.set("post", False)  # local revision 2
        echo = PushMetadata(server_revision=7, local_revision=1, device_id=store.device_id)
        assert store.liked.push("post", True, echo) is PushOutcome.SELF_ECHO
        assert store.liked["post"] is False
        assert store.liked.server_revision("post") == 7
        server.gate.set()
        await first


async def test_a_field_revision_and_the_stores_agree_after_a_push_during_a_request() -> None:
    server = GatedServer()
    server.gate.clear()
    async with ItemStore(server) as store:
        first = store.liked.set("post", True)
        store.liked.push("post", False, other_device(50))
        server.gate.set()
        await first
        key = store.liked.key("post")
        assert store.liked.server_revision("post") == store.server_revision(key) == 50
        assert store.liked["post"] is False  # the push is newer than the response


async def test_an_ack_with_another_value_is_applied_once_stable() -> None:
    server = GatedServer()
    server.answer_with_value = False  # the server stored something else
    async with ItemStore(server) as store:
        await store.liked.set("post", True)
        assert store.liked["post"] is False


async def test_a_failed_sync_reloads_the_item_through_the_reloader() -> None:
    server = GatedServer()
    server.fail_with = ValueError("refused")
    async with ItemStore(server) as store:
        with pytest.raises(ValueError, match="refused"):
            await store.liked.set("post", True)
        assert store.liked["post"] is False


async def test_a_sender_answering_something_else_than_a_revision_fails_the_request() -> None:
    class Broken(Store[Likes]):
        liked = SyncedMapWithPush[Likes, str, bool](
            lambda state, item: state.liked.get(item, False),
            lambda state, item, liked: state.set_liked(item, liked),
        )

        @liked.sender
        async def send_liked(self, item: str, liked: bool, request: SyncRequest) -> int:
            return "3"  # type: ignore[return-value]

    async with Broken(Likes()) as store:
        with pytest.raises(TypeError, match="must be an int"):
            await store.liked.set("post", True)


async def test_a_field_without_a_sender_refuses_to_sync_and_says_how_to_fix_it() -> None:
    class NoSender(Store[Likes]):
        liked = SyncedMapWithPush[Likes, str, bool](
            lambda state, item: state.liked.get(item, False),
            lambda state, item, liked: state.set_liked(item, liked),
        )

    async with NoSender(Likes()) as store:
        with pytest.raises(StateError, match=r"@liked\.sender"):
            store.liked.set("post", True)
        assert store.state == Likes()


def test_a_field_needs_callable_get_and_set() -> None:
    with pytest.raises(TypeError, match="callable get= and set="):
        SyncedMap[Likes, str, bool]("liked", lambda state, item, liked: state)  # type: ignore[arg-type]


async def test_a_map_without_push_sends_a_follow_up_only_when_the_value_changed() -> None:
    sent: list[bool] = []
    gate = asyncio.Event()

    class Todos(Store[dict[str, bool]]):
        done = SyncedMap[dict[str, bool], str, bool](
            lambda state, todo: state[todo], lambda state, todo, done: {**state, todo: done}
        )

        @done.sender
        async def send_done(self, todo: str, done: bool) -> None:
            sent.append(done)
            await gate.wait()

    async with Todos({"milk": False}) as store:
        first = store.done.set("milk", True)
        store.done.set("milk", False)
        gate.set()
        await first
        assert sent == [True, False]
        assert store.done.key("milk") == ("done", "milk")


async def test_a_single_value_is_keyed_by_the_fields_name() -> None:
    class Settings(Store[str]):
        theme = SyncedValueWithPush[str, str](lambda state: state, lambda state, theme: theme)

        @theme.sender
        async def send_theme(self, theme: str, request: SyncRequest) -> int:
            assert request.key == "theme"
            return 3

    async with Settings("light") as store:
        await store.theme.set("dark")
        assert (store.theme.value, store.theme.server_revision()) == ("dark", 3)
        assert store.server_revision("theme") == 3


async def test_a_single_value_without_push_applies_the_servers_answer() -> None:
    class Name(Store[str]):
        name = SyncedValue[str, str](lambda state: state, lambda state, name: name)

        @name.sender
        async def send_name(self, name: str) -> str:
            return name.strip()

        @name.reloader
        async def fetch_name(self) -> str:
            return "unused"

    async with Name("") as store:
        await store.name.set("  Ada ")
        assert store.state == "Ada"
        assert not store.name.pending


def test_fields_are_inherited_and_listed_by_declared_fields() -> None:
    class Child(ItemStore):
        pass

    assert list(declared_fields(Child)) == ["liked"]
    assert isinstance(Child.liked, SyncedMapWithPush)


def test_each_store_has_its_own_bound_field() -> None:
    first, second = ItemStore(GatedServer()), ItemStore(GatedServer())
    assert first.liked is first.liked
    assert first.liked is not second.liked


# -- typing ---------------------------------------------------------------------------


def _declared_blocks() -> list[str]:
    return [
        example.block.code
        for example in _examples(ROOT / "docs" / "fields.md")
        if "from optisync.fields import" in example.block.code
    ]


def _mypy(tmp_path: Path, *codes: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict over each code as its own module (``user_store_<n>.py``), in one run."""
    sources = []
    for number, code in enumerate(codes):
        source = tmp_path / f"user_store_{number}.py"
        source.write_text(code, encoding="utf-8")
        sources.append(str(source))
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache")]
    return subprocess.run(
        [*command, *sources],
        capture_output=True,
        text=True,
        # The editable install's import hook is invisible to mypy: point it at the repo.
        env={**os.environ, "MYPYPATH": str(ROOT)},
        check=False,
    )


def test_the_guides_declared_stores_type_check_strictly(tmp_path: Path) -> None:
    # One mypy run for all of them (a run costs about a second to start).
    codes = _declared_blocks()
    assert len(codes) >= 7, "the guide's declared stores were not found"
    assert all("lambda " in code for code in codes)  # the lenses are unannotated lambdas
    result = _mypy(tmp_path, *codes)
    assert result.returncode == 0, result.stdout
    assert f"no issues found in {len(codes)} source files" in result.stdout


_WRONG = """
    from collections.abc import Awaitable
    from optisync import Store
    from optisync.fields import SyncedMapWithPush, SyncRequest

    class Likes(Store[dict[str, bool]]):
        liked = SyncedMapWithPush[dict[str, bool], str, bool](
            lambda state, item: state.get(item, False),
            lambda state, item, liked: {**state, item: liked})

        @liked.sender  # E
        async def send_liked(self, item: int, liked: bool, request: SyncRequest) -> int:
            return 1

        def tap(self) -> Awaitable[None]:
            return self.liked.set("post", "yes")  # E

        def wrong_read(self) -> str:
            return self.liked["post"]  # E

    bad_lens = SyncedMapWithPush[dict[str, bool], str, bool](
        lambda state, item: state.get(item, 0), lambda state, item, liked: state.upper())  # E
"""


def test_mypy_reports_wrong_types_in_a_declared_store(tmp_path: Path) -> None:
    code = textwrap.dedent(_WRONG)
    result = _mypy(tmp_path, code)
    output = result.stdout
    assert result.returncode == 1, output
    reported = {int(line.split(":")[1]) for line in output.splitlines() if ": error:" in line}
    # the sender's item type, the value set, the value read, the wrong lambdas
    marked = {n for n, line in enumerate(code.splitlines(), 1) if line.endswith("# E")}
    assert len(marked) == 4
    assert reported == marked, output


# -- the documentation of the declared-fields family of modules ---------------------

_MODULES = (
    "optisync.fields",
    "optisync.transport",
    "optisync.persistence",
    "optisync.outbox",
    "optisync.pytest_plugin",
)


def _names() -> list[tuple[str, str]]:
    return [(m, name) for m in _MODULES for name in importlib.import_module(m).__all__]


def _doc(module: str, name: str) -> str | None:
    obj = getattr(importlib.import_module(module), name)
    if isinstance(obj, str):  # a constant: the string literal after it
        return _attribute_docstring(module, name)
    return inspect.getdoc(obj)


def _directives() -> set[str]:
    pages = (ROOT / "docs").glob("*.md")
    return {d for page in pages for d in re.findall(r"^:::\s*(\S+)", page.read_text(), re.M)}


@pytest.mark.parametrize(("module", "name"), _names(), ids=[f"{m}.{n}" for m, n in _names()])
def test_every_public_name_has_an_example_and_a_reference_entry(module: str, name: str) -> None:
    assert _has_example(_doc(module, name)), f"{module}.{name}: no example in its docstring"
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):  # its own methods, and those of its private bases here
        for klass in (k for k in obj.__mro__ if k.__module__ == module):
            for method_name, member in _public_methods(klass):
                assert _has_example(inspect.getdoc(member)), f"{module}.{name}.{method_name}"
    if module == "optisync.pytest_plugin":  # documented by its page, not one entry per fixture
        page = (ROOT / "docs" / "pytest-plugin.md").read_text()
        shown = f"`{module}.{name}`" if isinstance(obj, str) else f"`{obj.__name__}`"
        assert shown in page, f"docs/pytest-plugin.md does not mention {shown}"
    else:
        assert f"{module}.{name}" in _directives(), f"no '::: {module}.{name}' in docs/"
