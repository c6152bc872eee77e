"""The test run's Qt switch: pytest-qt and the ``optisync.ui.qt`` doctests, when Qt loads.

pytest-qt is disabled in ``addopts`` (``-p no:pytest-qt``) and loaded here
instead: installed, it imports Qt as pytest starts, and on a machine without
Qt's system libraries (libEGL, libxkbcommon, fontconfig: ``.ci/run`` installs
them) that import fails and would stop the whole run. Here, the Qt tests skip
and say why (tests/test_ui_qt.py); everything else runs.
"""

from __future__ import annotations

import os

# Widgets are drawn in memory: no display needed (set before Qt is imported).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _qt_loads() -> bool:
    try:
        import PySide6.QtWidgets  # noqa: F401
        import pytestqt  # noqa: F401
    except ImportError:
        return False
    return True


pytest_plugins = ["pytestqt.plugin"] if _qt_loads() else []
collect_ignore = [] if pytest_plugins else ["optisync/ui/qt.py"]
