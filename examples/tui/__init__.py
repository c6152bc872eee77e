"""A Textual app to try the seven use cases of optimistic sync with push.

Run it from the repository root with ``python -m examples.tui``; see
``docs/tui.md``. The pieces, each usable on its own:

* :mod:`examples.tui.model`: the app's state and its :class:`~optisync.Store`;
* :mod:`examples.tui.backend`: the small interface the app needs from a server;
* :mod:`examples.tui.simulated`: the in-process simulated server (the default);
* :mod:`examples.tui.persistence`: the state file that survives a restart;
* :mod:`examples.tui.app`: the Textual app itself.
"""
