"""One storage file, one device: a second device on the same file is refused; no lock file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examples.live.client import LiveDevice
from optisync.device import StorageInUseError

ROOT = Path(__file__).resolve().parent.parent.parent
NOBODY = "ws://127.0.0.1:9"  # nobody listens there: the devices never connect


async def test_a_second_device_on_an_open_storage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    async with LiveDevice.open(NOBODY, path):
        with pytest.raises(StorageInUseError, match=r"phone\.sqlite3 is in use"):
            async with LiveDevice.open(NOBODY, path):
                pass


async def test_a_closed_storage_file_opens_again_with_its_device_id(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    async with LiveDevice.open(NOBODY, path) as first:
        device_id = first.device_id
    async with LiveDevice.open(NOBODY, path) as again:
        assert again.device_id == device_id
    assert 0 <= device_id < 2**53


def names_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


async def test_the_storage_file_is_locked_without_a_lock_file_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    async with LiveDevice.open(NOBODY, path):
        assert ".lock" not in "".join(names_in(tmp_path))
    assert names_in(tmp_path) == ["phone.sqlite3"]


async def test_the_client_command_exits_with_one_line_when_its_storage_is_held(
    tmp_path: Path,
) -> None:
    path = tmp_path / "phone.sqlite3"
    # Another client, as far as the new process can tell.
    async with LiveDevice.open(NOBODY, path):
        result = subprocess.run(  # noqa: ASYNC221 - the holder needs no loop meanwhile
            [sys.executable, "-m", "examples.live", "--client", NOBODY, "--storage", path],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"python -m examples.live: {path} is in use by another device: "
        "give each device its own file (--storage FILE)"
    ]
    assert "device" not in result.stdout  # it never started


def test_the_readme_gives_each_live_client_its_own_storage_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    client_rows = [line for line in readme.splitlines() if "examples.live --client" in line]
    storages = [line.split("--storage", 1)[1].split()[0] for line in client_rows]
    assert len(client_rows) >= 2
    assert len(set(storages)) == len(client_rows), client_rows
