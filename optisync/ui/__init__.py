"""Adapters that let a :class:`~optisync.Store` drive a UI framework.

Each adapter is a module of its own, in an optional extra, and imports its
framework only when that module is imported: ``import optisync`` imports none.

* :mod:`optisync.ui.textual`: Textual widgets (``optisync[textual]``).
* :mod:`optisync.ui.qt`: Qt through qasync, PySide6 (``optisync[qt]``).
* :mod:`optisync.ui.nicegui`: NiceGUI pages (``optisync[nicegui]``).

For toolkits that call handlers on other threads (Tk, Flet), see
:mod:`optisync.threads`.
"""
