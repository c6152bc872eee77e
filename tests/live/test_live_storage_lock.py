"""One storage file, one device: a second device on the same file is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examples.live.client import LiveStore
from examples.live.persistence import DeviceStorage, StorageInUseError

ROOT = Path(__file__).resolve().parent.parent.parent


def test_a_second_storage_on_an_open_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    with DeviceStorage(path), pytest.raises(StorageInUseError, match=r"phone\.sqlite3 is in use"):
        DeviceStorage(path)


def test_a_closed_storage_file_can_be_opened_again(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    with DeviceStorage(path) as first:
        device_id = first.device_id
    with DeviceStorage(path) as again:
        assert again.device_id == device_id


async def test_a_live_store_refuses_a_storage_file_another_store_holds(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    phone = LiveStore("ws://127.0.0.1:9", storage_path=path)
    try:
        with pytest.raises(StorageInUseError):
            LiveStore("ws://127.0.0.1:9", storage_path=path)
    finally:
        await phone.close()
    await LiveStore("ws://127.0.0.1:9", storage_path=path).close()  # released by close()


def test_the_client_command_exits_with_one_line_when_its_storage_is_held(tmp_path: Path) -> None:
    path = tmp_path / "phone.sqlite3"
    with DeviceStorage(path):  # another client, as far as the new process can tell
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "examples.live",
                "--client",
                "ws://127.0.0.1:9",
                "--storage",
                path,
            ],
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
        "give each one its own file (--storage FILE)"
    ]
    assert "device" not in result.stdout  # it never started


def test_the_readme_gives_each_live_client_its_own_storage_file() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    client_rows = [line for line in readme.splitlines() if "examples.live --client" in line]
    storages = [line.split("--storage", 1)[1].split()[0] for line in client_rows]
    assert len(client_rows) >= 2
    assert len(set(storages)) == len(client_rows), client_rows
