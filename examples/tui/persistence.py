"""The files that survive a restart: the app's state, its server revisions, its device id.

Written atomically (a temporary file, then :func:`os.replace`), so a crash
mid-write leaves the previous file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import attrs

from examples.tui.backend import ServerRecord
from examples.tui.model import KEY, LikeState

__all__ = ["SavedApp", "load_app", "load_server", "save_app", "save_server"]

_FORMAT = 1


@attrs.frozen
class SavedApp:
    """What the app restores after a restart.

    Attributes:
        device_id: this device's id, kept so its own pushes are recognised.
        state: the app's state.
        server_revisions: the newest server revision known per key.

    Example:
        >>> saved = SavedApp(device_id=1, state=LikeState(True, 4), server_revisions={"liked": 5})
        >>> saved.restored_state()
        LikeState(liked=True, server_revision=5)
    """

    device_id: int
    state: LikeState
    server_revisions: dict[str, int]

    def restored_state(self) -> LikeState:
        """The state to start from: the saved one, with the newest server revision known."""
        revision = max(self.state.server_revision, self.server_revisions.get(KEY, -1))
        return attrs.evolve(self.state, server_revision=revision)


def save_app(path: Path, saved: SavedApp) -> None:
    """Write ``saved`` to ``path`` atomically.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = Path(folder) / "app.json"
        ...     save_app(path, SavedApp(1, LikeState(True, 2), {"liked": 2}))
        ...     print(load_app(path).state)
        LikeState(liked=True, server_revision=2)
    """
    _write_json(
        path,
        {
            "format": _FORMAT,
            "device_id": saved.device_id,
            "state": {"liked": saved.state.liked, "server_revision": saved.state.server_revision},
            "server_revisions": saved.server_revisions,
        },
    )


def load_app(path: Path) -> SavedApp | None:
    """Read what :func:`save_app` wrote; None if there is no such file."""
    data = _read_json(path)
    if data is None:
        return None
    state = data["state"]
    return SavedApp(
        device_id=int(data["device_id"]),
        state=LikeState(liked=bool(state["liked"]), server_revision=int(state["server_revision"])),
        server_revisions={str(k): int(v) for k, v in data["server_revisions"].items()},
    )


def save_server(path: Path, record: ServerRecord) -> None:
    """Write the simulated server's database to ``path`` atomically."""
    _write_json(path, {"format": _FORMAT, "record": record.to_json()})


def load_server(path: Path) -> ServerRecord | None:
    """Read what :func:`save_server` wrote; None if there is no such file."""
    data = _read_json(path)
    return None if data is None else ServerRecord.from_json(data["record"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a state file of this demo")
    return data
