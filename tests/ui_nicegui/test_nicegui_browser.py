"""The todo page in headless Chromium: served by uvicorn, synced with another device.

Three processes on loopback, as a user would run them: ``python -m
optisync.server``, the page (``python -m examples.nicegui_todo``, NiceGUI on
uvicorn) and a second device (``python -m examples.todo_app --json``).
Chromium loads the page; a todo the second device adds appears in it, and a
todo typed in Chromium reaches the second device. The browser waits for text
with a ``MutationObserver`` (no polling of the page). The screenshot in
``docs/ui-nicegui.md`` is taken here: ``OPTISYNC_UPDATE_SCREENSHOTS=1``
rewrites ``docs/img/nicegui-todo.png``.

Skipped, with the reason shown, without Chromium (Debian: ``apt-get install
-y chromium``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_docs_browser import Page, _chromium, _load, open_tab

pytest.importorskip("nicegui", reason="nicegui missing (the nicegui extra)")

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "img" / "nicegui-todo.png"
TIMEOUT_SECONDS = 30

pytestmark = pytest.mark.skipif(
    _chromium() is None, reason="no Chromium (apt-get install -y chromium)"
)


def _environment() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    # NiceGUI takes a process with this variable for its own pytest run (and a fixed port).
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _process(*args: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=_environment(),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT_SECONDS)


def _stop(process: subprocess.Popen[str]) -> str:
    """SIGINT, as Ctrl-C; the process must end cleanly. Returns its stderr."""
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=TIMEOUT_SECONDS)
    assert process.returncode == 0, stderr
    return stderr


def _wait_listening(process: subprocess.Popen[str], port: int) -> None:
    # uvicorn binds after NiceGUI's startup and prints nothing then: ask the port.
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    pytest.fail(f"the page did not listen on port {port} within {TIMEOUT_SECONDS} s")


class Device:
    """``python -m examples.todo_app --json``: one command a line, the state in each answer."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process

    def send(self, command: str) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        assert answer["reply"] == "", answer["reply"]
        state: dict[str, Any] = answer["state"]
        return state

    def quit(self) -> None:
        _, stderr = self.process.communicate("quit\n", timeout=TIMEOUT_SECONDS)
        assert self.process.returncode == 0, stderr


@pytest.fixture
def browser() -> Iterator[Page]:
    with open_tab() as page:
        page.call(
            "Emulation.setDeviceMetricsOverride",
            width=480,
            height=300,
            deviceScaleFactor=1,
            mobile=False,
        )
        yield page


def _evaluate(page: Page, expression: str) -> Any:
    result = page.call("Runtime.evaluate", expression=expression, awaitPromise=True)
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")


def _wait_until(page: Page, condition: str) -> None:
    """Until the JavaScript ``condition`` holds: a MutationObserver checks at each change."""
    script = f"""new Promise(resolve => {{
        const holds = () => {condition};
        if (holds()) return resolve(true);
        new MutationObserver((_, observer) => {{
            if (holds()) {{ observer.disconnect(); resolve(true); }}
        }}).observe(document.body, {{childList: true, subtree: true, characterData: true}});
    }})"""
    assert _evaluate(page, script) is True


def _shows(text: str) -> str:
    return f"document.body.innerText.includes({json.dumps(text)})"


def _type_and_add(page: Page, title: str) -> None:
    _evaluate(page, "document.querySelector('input').focus()")
    page.call("Input.insertText", text=title)
    _evaluate(page, "[...document.querySelectorAll('button')].at(-1).click()")  # "Add"


def test_the_page_in_chromium_shows_a_todo_from_another_device_and_sends_one(
    browser: Page, tmp_path: Path
) -> None:
    database = str(tmp_path / "server.sqlite3")
    with _process("-m", "optisync.server", "--database", database, "--port", "0") as server:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        assert url.startswith("ws://127.0.0.1:"), server.communicate()[1]
        port = _free_port()
        web_args = ("--url", url, "--storage", str(tmp_path / "web.sqlite3"), "--port", str(port))
        with _process("-m", "examples.nicegui_todo", *web_args) as web:
            _wait_listening(web, port)
            phone_args = ("--url", url, "--storage", str(tmp_path / "phone.sqlite3"), "--json")
            with _process("-m", "examples.todo_app", *phone_args) as phone_process:
                phone = Device(phone_process)
                _load(browser, f"http://127.0.0.1:{port}/")
                _wait_until(browser, _shows("Nothing to do."))

                phone.send("add milk Buy milk")
                phone.send("sync")
                _wait_until(browser, _shows("Buy milk"))  # pushed to the page's device

                _type_and_add(browser, "Water the plants")
                _wait_until(browser, _shows("Water the plants"))  # at once
                _wait_until(browser, f"!{_shows('saving...')}")  # the server has it
                state = phone.send("sync")
                assert sorted(state["titles"].values()) == ["Buy milk", "Water the plants"]

                phone.send("done milk")
                phone.send("sync")
                _wait_until(browser, "document.querySelector('[aria-checked=\"true\"]') !== null")

                if os.environ.get("OPTISYNC_UPDATE_SCREENSHOTS") == "1":
                    shot = browser.call("Page.captureScreenshot", format="png")
                    SCREENSHOT.write_bytes(base64.b64decode(shot["data"]))
                phone.quit()
            assert "Traceback" not in _stop(web)
        _stop(server)
    # The page's device closed with the app: its file is free, and holds both todos.
    web_again = ("--storage", str(tmp_path / "web.sqlite3"), "--json")
    with _process("-m", "examples.todo_app", "--url", url, *web_again) as process:
        saved = Device(process)
        assert sorted(saved.send("list")["titles"].values()) == ["Buy milk", "Water the plants"]
        saved.quit()
