"""docs/first-app.md shows examples/todo_app/todos.py as it is, and it stays small and typed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "first-app.md"
TODOS = ROOT / "examples" / "todo_app" / "todos.py"


def _code_of_module() -> str:
    """todos.py without its docstring."""
    source = TODOS.read_text()
    docstring = ast.get_docstring(ast.parse(source), clean=False)
    assert docstring is not None
    return source.split('"""', 2)[2].strip()


def test_the_page_shows_the_store_file_as_it_is() -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert blocks[0].strip() == _code_of_module()


def test_the_store_and_its_wiring_take_at_most_25_lines() -> None:
    lines = [line for line in _code_of_module().splitlines() if line.strip()]
    assert len(lines) <= 25, f"{len(lines)} lines of store and wiring"
