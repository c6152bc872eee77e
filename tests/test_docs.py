"""The documentation cannot rot: its code runs, and its API reference is complete.

* Every ```python block of ``docs/*.md`` and ``README.md`` runs as a standalone
  script in a fresh interpreter (one test per block, named ``page.md:line``).
  A block followed by a ```text title="Output" block must print exactly that.
  Blocks fenced as ``text``, ``console``, ``sh`` (anything but ``python``/``py``)
  are not run.
* Every public name has a docstring with an example and appears in the API
  reference page.
* When mkdocs is installed (the ``docs`` extra), the site builds with ``--strict``.
"""

from __future__ import annotations

import ast
import html
import importlib
import inspect
import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from docs_site import build_site

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
API_PAGE = DOCS / "api.md"
BLOCK_TIMEOUT_SECONDS = 30

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n`]*)$")
# Signs of a coroutine or task left behind: Python reports them on stderr only.
_LEAK_MARKERS = ("was never awaited", "Task was destroyed but it is pending", "Exception ignored")


@attrs.frozen
class CodeBlock:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    info: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"


@attrs.frozen
class Example:
    block: CodeBlock
    expected_output: str | None


def _fenced_blocks(path: Path) -> list[CodeBlock]:
    """Every fenced block of a Markdown page, indented ones (admonitions, tabs) included."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        end = index + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{index + 1}: unclosed code fence")
        body = "\n".join(line[len(indent) :] for line in lines[index + 1 : end])
        language = info.split(maxsplit=1)[0].lstrip(".{").lower() if info else ""
        blocks.append(CodeBlock(path, index + 1, language, info, textwrap.dedent(body) + "\n"))
        index = end + 1
    return blocks


def _is_output(block: CodeBlock) -> bool:
    return (
        block.language == "text" and re.search(r"""title=["']Output["']""", block.info) is not None
    )


def _examples(path: Path) -> list[Example]:
    blocks = _fenced_blocks(path)
    found = []
    for position, block in enumerate(blocks):
        if block.language not in ("python", "py"):
            continue
        following = blocks[position + 1] if position + 1 < len(blocks) else None
        expected = following.code if following is not None and _is_output(following) else None
        found.append(Example(block, expected))
    return found


def _pages() -> list[Path]:
    return [*sorted(DOCS.glob("**/*.md")), ROOT / "README.md"]


ALL_EXAMPLES = [example for page in _pages() for example in _examples(page)]


def _run_script(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("PYTHONASYNCIODEBUG", None)
    return subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=tmp_path,  # files an example writes land in the test's tmp dir
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.mark.parametrize("example", ALL_EXAMPLES, ids=[e.block.id for e in ALL_EXAMPLES])
def test_code_block_runs_as_a_script(example: Example, tmp_path: Path) -> None:
    result = _run_script(example.block.code, tmp_path)
    assert result.returncode == 0, f"{example.block.id} failed:\n{result.stderr}"
    for marker in _LEAK_MARKERS:
        assert marker not in result.stderr, f"{example.block.id}:\n{result.stderr}"
    if example.expected_output is not None:
        assert result.stdout == example.expected_output, (
            f"{example.block.id} printed something other than its Output block"
        )


def test_docs_hold_runnable_examples() -> None:
    # Guards the collector itself: if it stopped finding blocks, the test above would pass empty.
    pages = {example.block.path.name for example in ALL_EXAMPLES}
    assert {"getting-started.md", "optimistic-sync-with-push.md", "README.md"} <= pages
    assert sum(example.expected_output is not None for example in ALL_EXAMPLES) >= 5


def test_fenced_blocks_finds_indented_blocks_and_skips_text(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        '# t\n\n```python\nprint(1)\n```\n\n```text title="Output"\n1\n```\n\n'
        '!!! note\n    ```python\n    print("in admonition")\n    ```\n\n'
        "```console\n$ python -m x\n```\n",
        encoding="utf-8",
    )
    examples = _examples(page)
    assert [(e.block.line, e.block.code, e.expected_output) for e in examples] == [
        (3, "print(1)\n", "1\n"),
        (12, 'print("in admonition")\n', None),
    ]


# -- the API reference ---------------------------------------------------------


# Public modules besides the package itself; each documents its names with
# ::: directives, in api.md or at the end of its own guide page.
_OTHER_MODULES = (
    "optisync.testing",
    "optisync.fields",
    "optisync.transport",
    "optisync.device",
    "optisync.persistence",
    "optisync.outbox",
    "optisync.server",
    "optisync.server.protocol",
    "optisync.server.postgres",
    "optisync.server.asgi",
    "optisync.server.jwt",
    "optisync.server.metrics",
    "optisync.client",
    "optisync.wire",
    "optisync.threads",
    "optisync.ui.textual",
    "optisync.ui.nicegui",
    "optisync.ui.qt",
)  # optisync.pytest_plugin's API is fixtures, used by name: docs/pytest-plugin.md lists them


def _public_modules() -> list[str]:
    modules = ["optisync"]
    for name in _OTHER_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        # A folder without __init__.py yet (a namespace package) is work in progress, not API.
        if module.__file__ is not None and hasattr(module, "__all__"):
            modules.append(name)
    return modules


def _reference_directives() -> list[str]:
    """Every ``::: name`` of the site's pages.

    A module's directive documents its members too, unless its options say
    ``members: false``: those members are then listed as ``module.member``.
    """
    directives: list[str] = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"^:::\s*(\S+)\n((?:[ \t]+.*\n)*)", text, re.M):
            name, options = match.group(1), match.group(2)
            directives.append(name)
            module = sys.modules.get(name) if name in _OTHER_MODULES else None
            if module is not None and "members: false" not in options:
                directives.extend(f"{name}.{member}" for member in getattr(module, "__all__", ()))
    return directives


def _public_names() -> list[tuple[str, str]]:
    names: list[tuple[str, str]] = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        names.extend((module_name, name) for name in module.__all__)
    return names


def _public_methods(cls: type) -> list[tuple[str, object]]:
    return [
        (name, member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    ]


def _has_example(doc: str | None) -> bool:
    return doc is not None and (">>>" in doc or re.search(r"^\s*Examples?:", doc, re.M) is not None)


PUBLIC_NAMES = _public_names()


def _attribute_docstring(module: str, name: str) -> str | None:
    """The string literal right after ``name = ...`` in the module that defines it.

    Data (a type alias, a constant) has no ``__doc__`` of its own; this is
    where mkdocstrings reads its documentation from.
    """
    value = getattr(importlib.import_module(module), name)
    for candidate in list(sys.modules.values()):
        source_file = getattr(candidate, "__file__", None)
        if not candidate.__name__.startswith(module) or source_file is None:
            continue
        if vars(candidate).get(name) is not value:
            continue
        body = ast.parse(Path(source_file).read_text(encoding="utf-8")).body
        found = _docstring_after(body, name)
        if found is not None:
            return found
    return None


def _class_attribute_docstring(cls: type, name: str) -> str | None:
    """The string literal right after ``name = ...`` in a class body (a Qt ``Signal``, say).

    Such an attribute has no ``__doc__`` of its own; mkdocstrings reads this one.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return None
    definition = tree.body[0]
    return _docstring_after(definition.body, name) if isinstance(definition, ast.ClassDef) else None


def _docstring_after(body: list[ast.stmt], name: str) -> str | None:
    for statement, following in itertools.pairwise(body):
        targets = (
            statement.targets
            if isinstance(statement, ast.Assign)
            else [statement.target]
            if isinstance(statement, ast.AnnAssign)
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            return inspect.cleandoc(following.value.value)
    return None


def _docstring(module: str, name: str) -> str | None:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
        return inspect.getdoc(obj)
    return _attribute_docstring(module, name)


@pytest.mark.parametrize(
    ("module", "name"), PUBLIC_NAMES, ids=[f"{m}.{n}" for m, n in PUBLIC_NAMES]
)
def test_public_name_has_a_docstring_with_an_example(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    assert _has_example(_docstring(module, name)), f"{module}.{name}: no example in its docstring"
    # A Protocol's members are a contract; the classes that implement them
    # carry the examples.
    if inspect.isclass(obj) and not getattr(obj, "_is_protocol", False):
        for method_name, member in _public_methods(obj):
            doc = inspect.getdoc(member) or _class_attribute_docstring(obj, method_name)
            assert _has_example(doc), f"{module}.{name}.{method_name} has no example"


def test_attribute_docstring_is_read_from_the_string_after_the_assignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "docs_probe.py").write_text(
        'Alias = tuple[int, int]\n"""A pair.\n\nExample:\n    >>> (1, 2)\n"""\nBare = int\n',
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "docs_probe", raising=False)
    importlib.import_module("docs_probe")
    assert _attribute_docstring("docs_probe", "Alias") == "A pair.\n\nExample:\n    >>> (1, 2)"
    assert _attribute_docstring("docs_probe", "Bare") is None


@pytest.mark.parametrize(
    ("module", "name"), PUBLIC_NAMES, ids=[f"{m}.{n}" for m, n in PUBLIC_NAMES]
)
def test_public_name_is_in_the_api_reference(module: str, name: str) -> None:
    assert f"{module}.{name}" in _reference_directives(), f"no page has '::: {module}.{name}'"


def test_optisync_exports_what_the_api_reference_documents() -> None:
    # The other direction: no directive for a name that is gone or private.
    directives = _reference_directives()
    documented = {f"{module}.{name}" for module, name in PUBLIC_NAMES}
    modules = set(_public_modules())
    pages_of_their_own = {"optisync.pytest_plugin"}  # fixtures: see _OTHER_MODULES
    assert [d for d in directives if d not in documented | modules | pages_of_their_own] == []


# -- the site ------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``--strict`` (the build must pass)."""
    return build_site(tmp_path_factory.mktemp("site"))


@pytest.fixture(scope="module")
def api_html(site: Path) -> str:
    """The API page of the site."""
    return (site / "api" / "index.html").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def site_html(site: Path) -> str:
    """Every page of the site (some modules keep their reference on their guide page)."""
    return "".join(page.read_text(encoding="utf-8") for page in site.rglob("index.html"))


def test_site_builds_strictly(api_html: str, site_html: str) -> None:
    for module, name in PUBLIC_NAMES:
        assert f'id="{module}.{name}"' in site_html, f"{module}.{name} not rendered"
    # What docs/griffe_docstrings.py is for: no raw Sphinx roles, doctests shown as
    # code (not as Markdown quotes), enum members documented by #: comments.
    assert re.search(r":(meth|class|func):", api_html) is None
    assert "<blockquote>" not in api_html
    assert 'id="optisync.PushOutcome.SELF_ECHO"' in api_html


SIGNATURE_WIDTH = 80  # mkdocs.yml: line_length


def _signature_lines(api_html: str, anchor: str) -> list[str]:
    start = api_html.index(f'id="{anchor}"')
    block = re.search(r'<div class="doc-signature highlight">(.*?)</code>', api_html[start:], re.S)
    assert block is not None, f"{anchor} has no separate signature"
    text = html.unescape(re.sub(r"<[^>]+>", "", block[1]))
    return text.strip("\n").splitlines()


def test_api_signatures_are_formatted_one_parameter_a_line(api_html: str) -> None:
    # Formatting needs ruff (or black) importable where mkdocs runs: the docs extra.
    lines = _signature_lines(api_html, "optisync.Store.optimistic_sync_with_push")
    assert lines[0] == "optimistic_sync_with_push("
    assert "    key: K," in lines
    assert max(len(line) for line in lines) <= SIGNATURE_WIDTH, lines


def test_api_parameters_are_a_list_whose_defaults_show_whole(api_html: str) -> None:
    # A table squeezed its Default column to "re"/"No" next to the long Callable types.
    assert "<th>Default</th>" not in api_html
    start = api_html.index('id="optisync.Store.optimistic_sync_with_push"')
    section = api_html[start : api_html.index('id="optisync.Store.server_push"')]
    text = html.unescape(re.sub(r"<[^>]+>", "", section))
    assert re.search(r"max_follow_up_requests\s+\(\s*int\s*,\s*default:\s*10000\s*\)", text)


# -- core bugs found while documenting -------------------------------------------
