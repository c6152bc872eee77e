"""Run every benchmark, print the table, and write it into docs/benchmarks.md.

Usage (from the top of the checkout)::

    .venv/bin/python tests/benchmarks/run.py [--quick] [--no-write]

``--quick`` runs tiny sizes (a check that everything works; its numbers mean
nothing and it writes nothing); ``--no-write`` prints without touching docs.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> int:
    """Make the checkout importable, then hand over to the suite."""
    checkout = str(Path(__file__).resolve().parents[2])
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    suite = importlib.import_module("tests.benchmarks.suite")
    code: int = suite.main(sys.argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
