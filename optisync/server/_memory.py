"""Handing memory back to the system after many connections close.

Measured (2,000 connections, a fan-out of 20 writes of 60 KB, then all of
them closed; idle server 31 MB): RSS stayed at 77 MB (172 MB with
permessage-deflate), although nothing of the server's stays referenced. What
held it was the allocators, not Python objects:

- glibc malloc keeps freed memory in its heaps (websockets' buffers, each
  connection's zlib state): ``malloc_trim(0)`` gives it back (172 -> 65 MB);
- pymalloc keeps every 1 MiB arena that still holds one live object: after
  the storm 33 arenas held the 10.6 MB of 11 at idle, so about 25 MB stays
  until the process ends. ``PYTHONMALLOC=malloc`` puts small objects in
  glibc's heap too, where the trim reaches them (36 MB; 39 MB with deflate).

:class:`MemoryReleaser` runs a full collection and the trim once the number
of connections fell to a quarter of its recent peak (and by at least
``_MIN_DROP``): a burst of closes, not each close. ``python -m
optisync.server`` starts with ``PYTHONMALLOC=malloc`` (see
:func:`use_system_malloc`).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import Final

logger: Final = logging.getLogger("optisync.server")

_MIN_DROP: Final = 256  # fewer closes hold too little to be worth a trim
_SETTLE: Final = 1.0  # seconds after the drop: the rest of the burst closes first


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is no glibc (musl, macOS, Windows)."""
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


class MemoryReleaser:
    """Collects and trims once connections fell from a peak to a quarter of it.

    Example:
        >>> releaser = MemoryReleaser()
        >>> releaser.opened(); releaser.closed()  # one connection: nothing to give back
        >>> releaser.releases
        0
    """

    def __init__(self) -> None:
        self.releases = 0  # how many times memory was given back (for tests and logs)
        self._open = 0
        self._peak = 0
        self._scheduled: asyncio.TimerHandle | None = None
        self._running: asyncio.Future[int] | None = None
        self._trim = _load_malloc_trim()

    def opened(self) -> None:
        self._open += 1
        self._peak = max(self._peak, self._open)

    def closed(self) -> None:
        self._open -= 1
        if self._scheduled is None and self._open * 4 <= self._peak - _MIN_DROP:
            loop = asyncio.get_running_loop()
            self._scheduled = loop.call_later(_SETTLE, self._release)

    def cancel(self) -> None:
        """Forget a release not started yet (the server is closing)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None

    def _release(self) -> None:
        self._scheduled = None
        logger.info(
            "giving memory back: %d connections open of a peak of %d", self._open, self._peak
        )
        self._peak = self._open
        self.releases += 1
        # Reference cycles of closed connections (exceptions, frames) go now,
        # not at the next full collection, which may be long away.
        gc.collect()
        if self._trim is None:
            logger.info("gave memory back (no malloc_trim: not glibc)")
        elif self._running is None:
            # In a thread: the trim walks every heap, ctypes lets the loop run.
            self._running = asyncio.get_running_loop().run_in_executor(None, self._trim, 0)
            self._running.add_done_callback(self._trimmed)

    def _trimmed(self, _: asyncio.Future[int]) -> None:
        self._running = None
        logger.info("gave memory back")


def use_system_malloc(argv: list[str]) -> None:
    """Restart this process with ``PYTHONMALLOC=malloc`` on glibc, unless it is set.

    pymalloc keeps a 1 MiB arena while one object lives in it, so a server
    that served 2,000 connections keeps most of that memory after they
    closed; with glibc's malloc, :class:`MemoryReleaser`'s trim returns it.
    Set ``PYTHONMALLOC`` (e.g. ``pymalloc``) to keep your own choice.
    ``argv`` is the command line after the interpreter (``sys.orig_argv[1:]``).
    """
    if "PYTHONMALLOC" in os.environ or _load_malloc_trim() is None:
        return
    environment = {**os.environ, "PYTHONMALLOC": "malloc"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv], environment)
