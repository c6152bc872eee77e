"""The documented install (``pip install -e .``) is one mypy can see.

A user's file, in a folder outside the checkout, type-checks against the
installed optisync: mypy finds the package (no "Cannot find implementation"),
reports a real type error, and passes correct code. Nothing points mypy at the
checkout (no MYPYPATH, no PYTHONPATH), as in a user's own project.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MYPY_TIMEOUT_SECONDS = 240

_CORRECT = """
    from optisync import Store

    store: Store[int] = Store(0)
    count: int = store.state + 1
"""

# The error only exists if mypy knows what Store.state is: with optisync unseen
# (Any), it would pass silently.
_WRONG = """
    from optisync import Store

    store: Store[int] = Store(0)
    label: str = store.state
"""


def _installed() -> bool:
    try:
        importlib.metadata.distribution("optisync")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _mypy(folder: Path, code: str) -> subprocess.CompletedProcess[str]:
    source = folder / "user_app.py"
    source.write_text(textwrap.dedent(code), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", source.name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=MYPY_TIMEOUT_SECONDS,
        check=False,
    )


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    if not _installed():
        pytest.skip("optisync is not installed in this interpreter (pip install -e .)")
    assert not tmp_path.resolve().is_relative_to(ROOT), "the user's folder must be outside"
    return tmp_path


def test_mypy_finds_a_type_error_in_user_code_outside_the_checkout(user_folder: Path) -> None:
    result = _mypy(user_folder, _WRONG)
    output = result.stdout + result.stderr
    assert "Cannot find implementation" not in output
    assert result.returncode == 1, output
    assert 'expression has type "int", variable has type "str"' in output


def test_mypy_passes_correct_user_code_outside_the_checkout(user_folder: Path) -> None:
    result = _mypy(user_folder, _CORRECT)
    output = result.stdout + result.stderr
    assert "Cannot find implementation" not in output
    assert result.returncode == 0, output
