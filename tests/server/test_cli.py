"""``python -m optisync.server`` run for real: safe defaults, one-line failures, plain help.

Each failure to start is one line on stderr and exit status 2, never a
traceback: the line is what an operator reads in a supervisor's log.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TOKEN_VARIABLE = "OPTISYNC_SERVER_TOKEN"
BOUND = 10.0  # seconds; each run takes well under 2, the bound only stops a hang


def run_cli(*arguments: str, token: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the server's command line to its exit, with ``token`` (or none) in its environment."""
    environment = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
    if token is not None:
        environment[TOKEN_VARIABLE] = token
    command = [sys.executable, "-m", "optisync.server", *arguments]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=BOUND, env=environment, check=False
    )


def assert_fails_with_one_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr naming each of ``words``."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), lines[0]
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket is listening on."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


# -- --help ------------------------------------------------------------------------


def test_help_is_plain_text_with_every_default_an_example_and_the_token() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    for markup in (":class:", ":mod:", ">>>", "``"):
        assert markup not in text
    assert not re.search(r"::$", text, re.MULTILINE)  # a reST literal block (not ::1)
    words = " ".join(text.split())  # as argparse wraps it for any terminal width
    for default in ("(default: 127.0.0.1)", "(default: 8765)", "(default: INFO)"):
        assert default in words
    for option in ("--database", "--postgres", "--host", "--port", "--allow-origin"):
        assert option in text
    assert "--insecure" in text
    assert "(default: off)" in words  # --insecure
    assert "(default: none)" in words  # --allow-origin
    assert "python -m optisync.server --database" in text  # the epilog's example
    assert TOKEN_VARIABLE in text


# -- no token: loopback only -------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.org"])
def test_a_non_loopback_host_without_a_token_is_refused(tmp_path: Path, host: str) -> None:
    result = run_cli("--database", str(tmp_path / "db.sqlite3"), "--host", host, "--port", "0")
    assert_fails_with_one_line(result, host, TOKEN_VARIABLE, "--insecure")
    assert not (tmp_path / "db.sqlite3").exists()  # refused before anything was opened


def _start_and_interrupt(*arguments: str, token: str | None = None) -> str:
    """Start the server, read its URL line, SIGINT it; its URL once it exited with 0."""
    environment = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
    if token is not None:
        environment[TOKEN_VARIABLE] = token
    command = [sys.executable, "-m", "optisync.server", *arguments, "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment
    ) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            process.send_signal(signal.SIGINT)
            _, stderr = process.communicate(timeout=BOUND)
        finally:
            process.kill()
        assert url.startswith("ws://"), stderr
        assert process.returncode == 0, stderr
        return url


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")
def test_insecure_lets_a_non_loopback_host_start_without_a_token(tmp_path: Path) -> None:
    url = _start_and_interrupt(
        "--database", str(tmp_path / "db.sqlite3"), "--host", "0.0.0.0", "--insecure"
    )
    assert url.startswith("ws://0.0.0.0:")


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT is POSIX")
def test_a_token_lets_a_non_loopback_host_start(tmp_path: Path) -> None:
    url = _start_and_interrupt(
        "--database", str(tmp_path / "db.sqlite3"), "--host", "0.0.0.0", token="s3cret"
    )
    assert url.startswith("ws://0.0.0.0:")


# -- what cannot be opened: one line, exit 2 ---------------------------------------


def test_a_database_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory"
    result = run_cli("--database", str(missing / "db.sqlite3"), "--port", "0")
    assert_fails_with_one_line(result, str(missing), "does not exist")


def test_a_database_path_that_is_a_directory_is_one_line(tmp_path: Path) -> None:
    result = run_cli("--database", str(tmp_path), "--port", "0")
    assert_fails_with_one_line(result, str(tmp_path), "directory")


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_database_in_a_directory_without_permission_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = run_cli("--database", str(locked / "db.sqlite3"), "--port", "0")
    finally:
        locked.chmod(0o700)
    assert_fails_with_one_line(result, str(locked), "permission")


def test_a_file_that_is_not_sqlite_is_one_line(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, just some notes\n" * 100)
    result = run_cli("--database", str(notes), "--port", "0")
    assert_fails_with_one_line(result, str(notes), "not a SQLite database")


def test_a_port_in_use_is_one_line(tmp_path: Path, busy_port: int) -> None:
    result = run_cli("--database", str(tmp_path / "db.sqlite3"), "--port", str(busy_port))
    assert_fails_with_one_line(result, str(busy_port), "in use")


def test_a_malformed_postgres_dsn_is_one_line() -> None:
    result = run_cli("--postgres", "this is not a DSN", "--port", "0")
    assert_fails_with_one_line(result, "--postgres", "connection string")


def test_postgres_down_is_one_line(closed_port: int) -> None:
    dsn = f"postgresql://optisync@127.0.0.1:{closed_port}/app"
    result = run_cli("--postgres", dsn, "--port", "0")
    assert_fails_with_one_line(result, "PostgreSQL", str(closed_port), "refused")
