"""Building the documentation site, for the tests that look at it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_SECONDS = 120
MISSING = "mkdocs is not installed (the 'docs' extra)"


def mkdocs() -> str | None:
    """The mkdocs next to this interpreter (the venv's), else the one on PATH."""
    candidate = Path(sys.executable).with_name("mkdocs")
    return str(candidate) if candidate.exists() else shutil.which("mkdocs")


def build_site(folder: Path) -> Path:
    """Build the site into ``folder`` with ``--strict``; skip the test without mkdocs."""
    command = mkdocs()
    if command is None:
        pytest.skip(MISSING)
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings[python] missing")
    result = subprocess.run(
        [command, "build", "--strict", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return folder
