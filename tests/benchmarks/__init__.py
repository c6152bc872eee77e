"""optisync's benchmark suite: run it with ``.venv/bin/python tests/benchmarks/run.py``.

Each module measures one row of the table in ``docs/benchmarks.md`` and has a
``measure(...)`` function whose sizes can be made tiny (the smoke test does).
Importing any module here has no side effect.
"""
