"""The seven use cases the demo teaches, as shown in its help panel."""

from __future__ import annotations

import attrs

__all__ = ["USE_CASES", "UseCase"]


@attrs.frozen
class UseCase:
    """One use case: a title, the keys that try it, and what to watch.

    Example:
        >>> USE_CASES[0].title
        'Optimistic update'
    """

    title: str
    keys: str
    explanation: str

    def help_text(self, number: int) -> str:
        """The text of the help panel for this use case, numbered from 1."""
        return f"{number}. {self.title}\n\nTry: {self.keys}\n\n{self.explanation}"


USE_CASES: tuple[UseCase, ...] = (
    UseCase(
        "Optimistic update",
        "space (or click the heart)",
        "The heart flips at once, before the server answers. 'Saving N...' shows "
        "while request N is in flight; the local revision counts your taps. When "
        "the response comes back nothing moves: the screen was already right.",
    ),
    UseCase(
        "Coalescing of rapid taps",
        "space several times during one request (or t: three taps at once)",
        "Only the first tap sends a request; the others just flip the heart and "
        "raise the local revision. When request 1 returns, its local revision is "
        "behind, so ONE follow-up sends the value shown now. Three taps: two "
        "requests, whatever the speed.",
    ),
    UseCase(
        "A push from another device",
        "a (set liked) or n (set not liked), with 'push database changes' on",
        "Device 7 writes to the database; the server pushes the change and "
        "server_push() applies it: the heart follows and the app's server "
        "revision jumps to the pushed one.",
    ),
    UseCase(
        "Push switched off",
        "p (pushes off), then a or n, then space",
        "The database changes but nothing reaches the app: the heart and server "
        "revision stay behind. The next tap sends a request whose response "
        "carries the newest revision, and the app catches up.",
    ),
    UseCase(
        "A push while a request is in flight",
        "space, then a or n while 'Saving' shows (raise the latency with +)",
        "The push is newer than your tap, so it wins: the heart shows the "
        "pushed value, no follow-up request is sent, and the older response "
        "of your request is ignored.",
    ),
    UseCase(
        "Reload on error through on_finish",
        "f (the next request fails), then space",
        "The heart flips at once; when the request fails, on_finish(error) "
        "reloads the value from the server and the heart goes back to what the "
        "database holds.",
    ),
    UseCase(
        "Persistence across a restart",
        "r (restart the app), or q and run it again",
        "The store is closed; its state, server revisions and device id are "
        "written to a JSON file and a new store starts from them. The heart "
        "and the server revision come back; pushes older than the saved "
        "revision are ignored as stale.",
    ),
)
