"""``import optisync`` loads no UI framework: each adapter's framework comes with its module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FRAMEWORKS = ("textual", "PySide6", "qasync", "nicegui")


def _loaded_after(statement: str) -> list[str]:
    program = (
        "import json, sys\n"
        f"{statement}\n"
        f"print(json.dumps(sorted(name for name in sys.modules "
        f"if name.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    # A fresh interpreter: this one has imported the frameworks for other tests.
    # python -c puts the current directory (this worktree) first on sys.path.
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    loaded: list[str] = json.loads(result.stdout)
    return loaded


@pytest.mark.parametrize(
    "statement", ["import optisync", "import optisync.ui", "import optisync.threads"]
)
def test_importing_optisync_loads_no_ui_framework(statement: str) -> None:
    assert _loaded_after(statement) == []


def test_the_textual_adapter_loads_textual_only_when_imported() -> None:
    pytest.importorskip("textual", reason="the textual extra is not installed")
    loaded = {name.split(".")[0] for name in _loaded_after("import optisync.ui.textual")}
    assert loaded == {"textual"}
